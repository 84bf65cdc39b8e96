"""Benchmark: the OOF stage (``cohortflow.oof.generate_oof``) on a GPU versus 2 CPU threads.

    python bench/gpu_oof.py [--rows 500000] [--features 60] [--cpu-repeats 1] [--out FILE]

Same panel (``bench_oof.synthetic_panel``), same purged fold plan, same model settings
on every side; only ``Settings.device`` changes. Sides:

* ``cpu``: ``device="cpu"``, ``n_threads=2`` (what a 2-core machine does);
* ``cuda``: ``device="cuda"`` for both base models, as ``cohortflow/models.py`` builds them
  (LightGBM ``device_type="cuda"`` needs a LightGBM built with CUDA: the PyPI wheel is
  not, so this side is tried and its error reported);
* ``mixed``: XGBoost on the GPU, LightGBM on the CPU (2 threads): what the ``device: cuda``
  setting can give with the PyPI wheels;
* ``opencl``: XGBoost on the GPU, LightGBM ``device_type="gpu"`` (OpenCL, which the PyPI
  wheel has; not what ``cohortflow/models.py`` asks for);
* ``xgb-input``: XGBoost alone over the same folds, its input handed over from host memory
  (numpy) versus already on the GPU (CuPy, what ``cohortflow.oof`` does for ``cuda``).

Each ``generate_oof`` call is timed as a whole, and its base-model fits and predictions
per model (the module's ``fit_base_model``/``predict_base_model`` wrapped with a timer), so
one run gives the total ratio and XGBoost's own ratio. Imports no Dagster: it runs on a
bare GPU machine with numpy, pandas, scikit-learn, LightGBM and XGBoost. Results are
appended to ``--out`` after every step, so a run cut short still reports what it did.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
from bench_oof import HORIZON, TARGET, synthetic_panel  # noqa: E402
from common import machine_info  # noqa: E402

import cohortflow.oof as oof_mod  # noqa: E402
from cohortflow.models import lightgbm_regressor, make_base_model  # noqa: E402
from cohortflow.oof import default_fold_plan, generate_oof, labelled_rows  # noqa: E402
from cohortflow.settings import ModelSettings, Settings  # noqa: E402

N_SYMBOLS = 200


class Report:
    """Lines printed and appended to a file as they come."""

    def __init__(self, path: str | None) -> None:
        self.path = path

    def __call__(self, line: str) -> None:
        print(line, flush=True)
        if self.path:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")


@contextlib.contextmanager
def per_model_seconds() -> Iterator[dict[str, float]]:
    """Seconds spent in each base model's fit + predict inside ``generate_oof``."""
    spent: dict[str, float] = defaultdict(float)
    fit, predict = oof_mod.fit_base_model, oof_mod.predict_base_model

    def timed_fit(name: str, *args: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fit(name, *args, **kw)
        finally:
            spent[name] += time.perf_counter() - t0

    def timed_predict(name: str, *args: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return predict(name, *args, **kw)
        finally:
            spent[name] += time.perf_counter() - t0

    oof_mod.fit_base_model, oof_mod.predict_base_model = timed_fit, timed_predict
    try:
        yield spent
    finally:
        oof_mod.fit_base_model, oof_mod.predict_base_model = fit, predict


@contextlib.contextmanager
def lightgbm_on_cpu(cpu: Settings, device_type: str = "cpu") -> Iterator[None]:
    """Build LightGBM with the CPU settings (and ``device_type``) whatever ``Settings.device``
    says (mixed and opencl sides)."""
    make = oof_mod.make_base_model

    def mixed(name: str, settings: Settings, n_estimators: int | None = None) -> Any:
        if name == "lightgbm":
            return lightgbm_regressor(cpu, n_estimators).set_params(device_type=device_type)
        return make(name, settings, n_estimators)

    oof_mod.make_base_model = mixed
    try:
        yield
    finally:
        oof_mod.make_base_model = make


def machine_lines() -> list[str]:
    import lightgbm
    import xgboost

    cpu = machine_info()["cpu"]
    gpu = "none"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        gpu = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout.strip()
    cuda = xgboost.build_info().get("USE_CUDA")
    return [
        f"machine: {os.cpu_count()} cores, {cpu}; GPU: {gpu}",
        f"python {platform.python_version()}, numpy {np.__version__}, xgboost {xgboost.__version__} "
        f"(USE_CUDA={cuda}), lightgbm {lightgbm.__version__}",
    ]


def run_side(
    name: str,
    fn: Callable[[], Any],
    repeats: int,
    report: Report,
) -> tuple[list[float], dict[str, float], Any]:
    """Time ``repeats`` runs of ``fn`` (a generate_oof call); per-model seconds of the last."""
    totals, per_model, result = [], {}, None
    for r in range(repeats):
        with per_model_seconds() as spent:
            t0 = time.perf_counter()
            result = fn()
            totals.append(time.perf_counter() - t0)
        per_model = dict(spent)
        parts = " ".join(f"{m}={s:.2f}s" for m, s in sorted(per_model.items()))
        report(f"  {name} repeat {r}: {totals[-1]:.2f} s ({parts})")
    return totals, per_model, result


@contextlib.contextmanager
def host_input() -> Iterator[None]:
    """Hand XGBoost its input from host memory even on the GPU (the code before CuPy input)."""
    on_device = oof_mod._on_model_device
    oof_mod._on_model_device = lambda name, est, x: x
    try:
        yield
    finally:
        oof_mod._on_model_device = on_device


def xgboost_folds(train: Any, features: list[str], plan: Any, settings: Settings) -> float:
    """Seconds to fit + predict XGBoost over every fold of ``plan`` (no LightGBM)."""
    x = oof_mod.feature_matrix(train, features)
    y = train[TARGET].to_numpy(dtype=np.float64)
    t0 = time.perf_counter()
    for fold in plan.folds:
        tr, te = np.asarray(fold.train_idx), np.asarray(fold.test_idx)
        est = oof_mod.fit_base_model("xgboost", settings, x[tr], y[tr])
        oof_mod.predict_base_model("xgboost", est, x[te])
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500_000, help="panel rows (200 symbols)")
    parser.add_argument("--features", type=int, default=60)
    parser.add_argument("--estimators", type=int, default=200)
    parser.add_argument("--cpu-repeats", type=int, default=1)
    parser.add_argument("--gpu-repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="append the report to this file too")
    parser.add_argument(
        "--sides", default="cuda,mixed,cpu", help="comma list of cuda,xgb-input,opencl,mixed,cpu"
    )
    args = parser.parse_args(argv)
    report = Report(args.out)
    for line in machine_lines():
        report(line)

    t0 = time.perf_counter()
    n_dates = max(4 * HORIZON, args.rows // N_SYMBOLS)
    panel = synthetic_panel(n_dates, N_SYMBOLS, args.features)
    features = [c for c in panel.columns if c.startswith("x")]
    train = labelled_rows(panel, TARGET, HORIZON)
    base = Settings(
        horizons=(HORIZON,),
        n_splits=5,
        n_threads=2,
        models=ModelSettings(n_estimators=args.estimators),
    )
    cpu, cuda = base.replace(device="cpu"), base.replace(device="cuda")
    plan = default_fold_plan(train, HORIZON, base)
    report(
        f"panel: {len(train)} labelled rows ({n_dates} dates x {N_SYMBOLS} symbols), "
        f"{len(features)} features, {len(plan.folds)} purged folds, {args.estimators} trees, "
        f"n_threads=2; built in {time.perf_counter() - t0:.1f} s"
    )

    def oof(settings: Settings) -> Callable[[], Any]:
        return lambda: generate_oof(train, TARGET, HORIZON, features, settings, plan=plan)

    # warm-up: CUDA context, thread pools (untimed)
    small = train.iloc[: min(len(train), 20_000)]
    x_small = small[features].to_numpy(np.float32)
    y_small = small[TARGET].to_numpy()
    make_base_model("xgboost", cuda).set_params(n_estimators=5).fit(x_small, y_small)
    make_base_model("lightgbm", cpu).set_params(n_estimators=5).fit(x_small, y_small)

    results: dict[str, tuple[list[float], dict[str, float]]] = {}
    # all-GPU as models.py builds it: LightGBM device_type="cuda"
    try:
        make_base_model("lightgbm", cuda).set_params(n_estimators=5).fit(x_small, y_small)
        lgb_cuda = "ok"
    except Exception as exc:  # LightGBM raises its own error type for a missing CUDA build
        lgb_cuda = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:160]}"
    report(f"LightGBM device_type='cuda': {lgb_cuda}")
    with contextlib.suppress(Exception):
        make_base_model("lightgbm", cpu).set_params(n_estimators=5, device_type="gpu").fit(
            x_small, y_small
        )
        report("LightGBM device_type='gpu' (OpenCL): ok on the probe (not used below)")

    sides = args.sides.split(",")
    if "xgb-input" in sides:
        for label, ctx in (("numpy", host_input), ("cupy", contextlib.nullcontext)):
            with ctx():
                seconds = [xgboost_folds(train, features, plan, cuda) for _ in range(2)]
            report(f"  XGBoost on the GPU, input from {label}: {min(seconds):.2f} s over the folds")
    if lgb_cuda == "ok" and "cuda" in sides:
        t, pm, _ = run_side("cuda", oof(cuda), args.gpu_repeats, report)
        results["cuda"] = (t, pm)
    if "opencl" in sides:
        try:
            with lightgbm_on_cpu(cpu, "gpu"):
                t, pm, _ = run_side("opencl", oof(cuda), args.gpu_repeats, report)
            results["opencl"] = (t, pm)
        except Exception as exc:  # no OpenCL runtime: say so and go on
            report(f"  opencl side failed: {type(exc).__name__}: {str(exc)[:160]}")
    with lightgbm_on_cpu(cpu):
        t, pm, mixed_res = run_side("mixed", oof(cuda), args.gpu_repeats, report)
    results["mixed"] = (t, pm)
    t, pm, cpu_res = run_side("cpu", oof(cpu), args.cpu_repeats, report)
    results["cpu"] = (t, pm)

    a = cpu_res.frame["pred_xgboost"].to_numpy()
    b = mixed_res.frame["pred_xgboost"].to_numpy()
    report(
        f"XGBoost OOF predictions GPU vs CPU: corr {np.corrcoef(a, b)[0, 1]:.4f}, "
        f"max |diff| {np.max(np.abs(a - b)):.3g} (GPU histograms sum in another order)"
    )
    cpu_total = statistics.median(results["cpu"][0])
    report(f"{'side':<8}{'median s':>10}{'lightgbm s':>12}{'xgboost s':>11}{'speed-up':>10}")
    for side, (times, pm) in results.items():
        med = statistics.median(times)
        report(
            f"{side:<8}{med:>10.2f}{pm.get('lightgbm', 0):>12.2f}{pm.get('xgboost', 0):>11.2f}"
            f"{cpu_total / med:>9.1f}x"
        )
    xgb_ratio = results["cpu"][1]["xgboost"] / results["mixed"][1]["xgboost"]
    lgb_note = "cuda" if "cuda" in results else "cpu"
    opencl = cpu_total / statistics.median(results["opencl"][0]) if "opencl" in results else None
    all_gpu = cpu_total / statistics.median(results["cuda"][0]) if "cuda" in results else None
    report(
        f"oof_gpu_speedup_mixed={cpu_total / statistics.median(results['mixed'][0]):.2f} "
        f"oof_gpu_speedup_xgboost={xgb_ratio:.1f} "
        f"oof_gpu_speedup_all={'n/a' if all_gpu is None else f'{all_gpu:.2f}'} "
        f"oof_gpu_speedup_lgb_opencl={'n/a' if opencl is None else f'{opencl:.2f}'} "
        f"lightgbm_on={lgb_note} rows={len(train)} features={len(features)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
