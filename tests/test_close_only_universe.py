"""A universe of files with only ``timestamp`` and ``close`` runs to completion with the
``cohortflow run`` command: the features that need open, high, low or volume are skipped,
everything else is produced."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

PROJECT = Path(__file__).resolve().parent.parent
FAST = PROJECT / "config" / "fast.yaml"
COHORTFLOW = Path(sys.executable).parent / "cohortflow"  # the console script
TARGETS = ("fwd_ret_5", "fwd_ret_10")
STAGES = ("TARGET_RANKING", "FEATURE_SELECTION", "TRAINING")
# the standard features computable from close alone (cohortflow.features, needs == close)
CLOSE_ONLY = {
    "ret_1",
    "ret_5",
    "ret_10",
    "ret_20",
    "ret_60",
    "vol_10",
    "vol_20",
    "vol_60",
    "mom_20_60",
    "ma_ratio_10",
    "ma_ratio_50",
    "rsi_14",
    "dist_high_20",
    "dist_low_20",
}
# ... and those that need open, high, low or volume
NEEDS_OHLV = {
    "hl_range",
    "parkinson_vol_20",
    "close_loc",
    "gap_open",
    "intraday_ret",
    "logvol_z_20",
    "volume_ratio_5_20",
    "dollar_vol_chg_5",
}
# the Dagster event log in memory: its SQLite file costs half the wall time of a small run
IN_MEMORY_HOME = (
    "telemetry:\n  enabled: false\n"
    "event_log_storage:\n  module: dagster._core.storage.event_log\n"
    "  class: InMemoryEventLogStorage\n"
)


def write_close_only_universe(folder: Path) -> list[str]:
    """3 synthetic symbols × 300 bars as CSV files with exactly timestamp and close."""
    from cohortflow.synthetic import generate_frames, write_universe

    frames, _ = generate_frames(
        n_symbols=3, n_bars=300, n_noise=0, seed=11, with_ohlcv=False, with_leaks=False
    )
    write_universe(folder, {s: f[["timestamp", "close"]] for s, f in frames.items()}, fmt="csv")
    return sorted(frames)


@pytest.mark.slow
def test_close_only_csv_universe_runs_with_the_command(tmp_path: Path) -> None:
    data, out, home = tmp_path / "data", tmp_path / "out", tmp_path / "dagster_home"
    symbols = write_close_only_universe(data)
    for path in data.iterdir():  # the files really hold only the two required columns
        assert path.suffix == ".csv"
        assert path.read_text().splitlines()[0] == "timestamp,close"
    home.mkdir()
    (home / "dagster.yaml").write_text(IN_MEMORY_HOME)
    env = {**os.environ, "DAGSTER_HOME": str(home), "OMP_WAIT_POLICY": "PASSIVE"}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [str(COHORTFLOW), "run", "--data", str(data), "--out", str(out), "--settings", str(FAST)],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    print(f"\ncohortflow run, close-only universe: {time.perf_counter() - t0:.1f} s")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cohortflow: done" in proc.stdout

    registry = sorted((out / "_registry").iterdir())
    assert len(registry) == 1
    batch = registry[0].stem[len("batch_") :]
    assert json.loads(registry[0].read_text())["symbols"] == symbols

    # the panel: close-only features, no user columns, targets for both horizons
    info = json.loads((out / "_work" / f"batch_{batch}" / "attempt_0" / "panel.json").read_text())
    assert set(info["computed"]) == CLOSE_ONLY
    assert info["user"] == []
    panel = pd.read_parquet(out / "_work" / f"batch_{batch}" / "attempt_0" / "panel.parquet")
    assert not NEEDS_OHLV & set(panel.columns)
    assert CLOSE_ONLY | set(TARGETS) <= set(panel.columns)
    assert set(panel["symbol"]) == set(symbols)

    # outputs: every stage of every target complete for attempt 0, the report, the evaluation
    for target in TARGETS:
        base = out / "targets" / target / "reproducibility"
        for stage in STAGES:
            folder = base / f"stage={stage}" / "CROSS_SECTIONAL" / f"batch_{batch}" / "attempt_0"
            assert (folder / "_COMPLETE").is_file(), folder
            assert len([p for p in folder.iterdir() if p.name.startswith("cohort=")]) == 1
        fs = base / "stage=FEATURE_SELECTION" / "CROSS_SECTIONAL" / f"batch_{batch}" / "attempt_0"
        importances = pd.read_csv(fs / "feature_importances" / "lightgbm_importances.csv")
        ranked = {f for f in importances["feature"] if not f.startswith("probe_")}
        assert ranked == CLOSE_ONLY
        training = base / "stage=TRAINING" / "CROSS_SECTIONAL" / f"batch_{batch}" / "attempt_0"
        evaluation = json.loads((training / "evaluation" / "evaluation.json").read_text())
        assert evaluation["reproduces_saved_predictions"] is True
        assert (training / "oof" / "oof_predictions.parquet").is_file()
    ranking = pd.read_csv(out / "reports" / f"batch_{batch}" / "attempt_0" / "target_ranking.csv")
    assert sorted(ranking["target"]) == sorted(TARGETS)
