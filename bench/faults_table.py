"""Issue 21's fault cases against one checkout's `cohortflow`: the table of docs/faults.md.

    .venv/bin/python bench/faults_table.py CHECKOUT WORKDIR [CASE ...]

CHECKOUT is a checkout with its own .venv (this one, or an older commit in a scratch
worktree: `git worktree add --detach /tmp/before 9b9830f && make -C /tmp/before install`).
Prints one JSON line per case: {"case": ..., "result": ...} (exit code, seconds, the last
line of stderr, whether a traceback was printed, and the case's own findings). Data and
settings are made by the interpreter running this script. The read-only and full-disk
cases mount a read-only bind mount and a small tmpfs: they need root.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

CHECKOUT = Path(sys.argv[1]).resolve()
WORK = Path(sys.argv[2]).resolve()
ONLY = set(sys.argv[3:])
BIN = CHECKOUT / ".venv" / "bin" / "cohortflow"
FAST = """horizons: [5]
min_rows: 200
attempt_limit: 1
n_splits: 3
quick_estimators: 25
permutation_repeats: 1
n_probes: 2
models:
  n_estimators: 30
  num_leaves: 7
  max_depth: 3
  min_child_samples: 20
"""


def emit(case: str, result: object) -> None:
    print(json.dumps({"case": case, "result": result}), flush=True)


def make_data(folder: Path, seed: int, n: int = 300, symbols=("AAA", "BBB", "CCC")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ts = pd.bdate_range("2015-01-02", periods=n)
    for s in symbols:
        close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
        open_ = close * np.exp(rng.normal(0, 0.003, n))
        high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, 0.004, n)))
        low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, 0.004, n)))
        rng.normal(0, 0.02, n)  # a draw the measured tables' data made: keeps the stream
        frame = pd.DataFrame(
            {
                "timestamp": ts,
                "open": open_,
                "high": high,
                "low": low,
                "close": close,
                "volume": rng.integers(1000, 5000, n).astype(float),
                "sig_a": rng.normal(0, 1, n),  # noise
            }
        )
        frame.to_parquet(folder / f"{s}.parquet", index=False)
    return folder


def settings(path: Path, extra: str = "") -> Path:
    path.write_text(FAST + extra)
    return path


def cli(*args: str, home: Path, timeout: float = 400, cwd: Path | None = None) -> dict:
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    t0 = time.monotonic()
    try:
        p = subprocess.run(
            [str(BIN), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            cwd=cwd or WORK,
        )
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out, err = "timeout", exc.stdout or "", exc.stderr or ""
        out = out.decode() if isinstance(out, bytes) else out
        err = err.decode() if isinstance(err, bytes) else err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    return {
        "rc": rc,
        "s": round(time.monotonic() - t0, 1),
        "last": lines[-1][:300] if lines else "",
        "traceback": "Traceback" in err,
        "out": out,
        "err": err,
    }


def run_fresh(data: Path, root: Path, settings: Path, *, home: Path, timeout: float) -> dict:
    """``cohortflow run`` of ``data`` into an emptied ``root``."""
    shutil.rmtree(root, ignore_errors=True)
    return cli(
        "run", "--data", str(data), "--out", str(root), "--settings", str(settings),
        home=home, timeout=timeout,
    )  # fmt: skip


def brief(r: dict) -> dict:
    return {k: r[k] for k in ("rc", "s", "last", "traceback")}


def tree_hash(folder: Path, parts: tuple[str, ...] = ()) -> str:
    h = hashlib.sha256()
    if not folder.exists():
        return "absent"
    for p in sorted(folder.rglob("*")):
        if p.is_file() and (not parts or any(x in p.parts for x in parts)):
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:12]


def markers(root: Path) -> int:
    return sum(1 for _ in root.rglob("_COMPLETE"))


def copy_root(src: Path, dst: Path) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, symlinks=True)
    return dst


def listed_vs_disk(root: Path, home: Path) -> dict:
    r = cli("cohorts", "list", "--root", str(root), "--json", home=home)
    if r["rc"] != 0:
        return {"list_rc": r["rc"], "last": r["last"]}
    rows = json.loads(r["out"])
    wrong = 0
    for row in rows:
        folder = root / row["path"]
        sealed = (folder.parent / "_COMPLETE").exists()
        writing = (folder.parent / "_IN_PROGRESS").exists()
        if row.get("complete") and (not folder.is_dir() or (writing and not sealed)):
            wrong += 1
    unlisted = 0
    paths = {row["path"] for row in rows}
    for marker in (root / "targets").rglob("_COMPLETE"):
        for cohort in marker.parent.glob("cohort=*"):
            unlisted += cohort.relative_to(root).as_posix() not in paths
    return {
        "listed": len(rows),
        "listed complete, not so on disk": wrong,
        "sealed, not listed": unlisted,
    }


def main() -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    d1 = make_data(WORK / "d1", seed=1)
    d2 = make_data(WORK / "d2", seed=2)
    sa = settings(WORK / "a.yaml")
    sb = settings(WORK / "b.yaml", "seed: 8\n")
    base = WORK / "base"
    if not (base / "_registry").exists():
        r = cli(
            "run", "--data", str(d1), "--out", str(base), "--settings", str(sa), home=WORK / "h0"
        )
        emit("base run", brief(r))

    def want(name: str) -> bool:
        return not ONLY or name in ONLY

    if want("corrupt index"):
        root = copy_root(base, WORK / "c1")
        before = markers(root)
        (root / "_index" / "cohorts.sqlite").write_bytes(os.urandom(4096))
        r = cli(
            "run", "--data", str(d1), "--out", str(root), "--settings", str(sa), home=WORK / "h1"
        )
        re_ = cli("reindex", "--root", str(root), home=WORK / "h1")
        emit(
            "corrupt index",
            {
                "run": brief(r),
                "markers_before": before,
                "markers_after": markers(root),
                "reindex": brief(re_) | {"out": re_["out"].strip()[:120]},
                **listed_vs_disk(root, WORK / "h1"),
            },
        )

    if want("kill -9 during rerun"):
        ref = copy_root(base, WORK / "kref")
        r = cli(
            "run", "--data", str(d1), "--out", str(ref), "--settings", str(sb), home=WORK / "hk"
        )
        rerun_s = r["s"]
        results = [{"uninterrupted rerun": brief(r), "markers": len(list(ref.rglob("_COMPLETE")))}]
        for frac in (0.2, 0.4, 0.6, 0.8):
            root = copy_root(base, WORK / f"k{frac}")
            env = {**os.environ, "DAGSTER_HOME": str(WORK / "hk")}
            (WORK / "hk").mkdir(exist_ok=True)
            p = subprocess.Popen(
                [str(BIN), "run", "--data", str(d1), "--out", str(root), "--settings", str(sb)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            time.sleep(rerun_s * frac)
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            results.append({"at_s": round(rerun_s * frac), **listed_vs_disk(root, WORK / "hk")})
        emit("kill -9 during rerun", results)

    if want("rerun with other files"):
        root = copy_root(base, WORK / "o1")
        r = cli(
            "run", "--data", str(d2), "--out", str(root), "--settings", str(sa), home=WORK / "h2"
        )
        ri = cli("reindex", "--root", str(root), home=WORK / "h2")
        lst = cli("cohorts", "list", "--root", str(root), "--json", home=WORK / "h2")
        rows = json.loads(lst["out"]) if lst["rc"] == 0 else []
        reg = json.loads(next((root / "_registry").glob("batch_*.json")).read_text())
        batch = reg["batch"]
        if "attempts" in reg:
            latest = max(a["attempt"] for a in reg["attempts"])
        else:  # before attempt records: the highest attempt folder
            latest = max(int(p.name.split("_")[1]) for p in root.rglob("attempt_*") if p.is_dir())
        sd = cli(
            "stacking-data",
            "--root",
            str(root),
            "--batch",
            batch,
            "--attempt",
            str(latest),
            "--target",
            "fwd_ret_5",
            home=WORK / "h2",
        )
        meta = {}
        with contextlib.suppress(ValueError):
            meta = json.loads(sd["out"][: sd["out"].index("\n}") + 2])
        cm = meta.get("cohort_metadata") or {}
        emit(
            "rerun with other files",
            {
                "run": brief(r),
                "reindex": ri["rc"],
                "attempts_listed": sorted({row["attempt"] for row in rows}),
                "stacking rows": meta.get("rows"),
                "its cohort metadata rows": cm.get("rows") or cm.get("n_rows"),
                "cohort_id": meta.get("cohort_id"),
                **listed_vs_disk(root, WORK / "h2"),
            },
        )

    def bad_data(case: str, edit) -> None:
        if not want(case):
            return
        data = make_data(WORK / f"bad-{case.replace(' ', '_')}", seed=1)
        edit(data)
        root = WORK / f"out-{case.replace(' ', '_')}"
        r = run_fresh(data, root, sa, home=WORK / "h3", timeout=300)
        emit(case, brief(r) | {"root written": root.exists() and any(root.iterdir())})

    def dates(year: int):
        def edit(data: Path) -> None:
            import datetime as dt

            import pyarrow as pa
            import pyarrow.parquet as pq

            f = pd.read_parquet(data / "AAA.parquet")
            start = dt.datetime(year, 1, 2)
            ts = [start + dt.timedelta(days=i) for i in range(len(f))]
            t = pa.Table.from_pandas(f.drop(columns="timestamp"), preserve_index=False)
            t = t.add_column(0, "timestamp", pa.array(ts, pa.timestamp("us")))
            pq.write_table(t, data / "AAA.parquet")

        return edit

    bad_data("dates before 1677", dates(1500))
    bad_data("dates after 2262", dates(2300))

    def one_tz_aware(data: Path) -> None:
        f = pd.read_parquet(data / "BBB.parquet")
        f["timestamp"] = f["timestamp"].dt.tz_localize("America/New_York")
        f.to_parquet(data / "BBB.parquet", index=False)

    bad_data("one tz-aware file among naive", one_tz_aware)

    def bit_flip(data: Path) -> None:
        f = pd.read_parquet(data / "CCC.parquet")
        f.loc[150, "high"] = f.loc[150, "close"] * 49
        f.to_parquet(data / "CCC.parquet", index=False)

    bad_data("bit-flipped high (49x close)", bit_flip)

    def clash(data: Path) -> None:
        f = pd.read_parquet(data / "AAA.parquet")
        f["fwd_ret_5"] = 0.0
        f.to_parquet(data / "AAA.parquet", index=False)

    if want("user column fwd_ret_5"):
        data = make_data(WORK / "clash", seed=1)
        clash(data)
        root = copy_root(base, WORK / "clash-out")
        reg, wk = tree_hash(root / "_registry"), tree_hash(root / "_work")
        r = cli(
            "run", "--data", str(data), "--out", str(root), "--settings", str(sa), home=WORK / "h4"
        )
        emit(
            "user column fwd_ret_5",
            brief(r)
            | {
                "_registry changed": tree_hash(root / "_registry") != reg,
                "_work changed": tree_hash(root / "_work") != wk,
            },
        )

    for name, extra in [
        ('horizons: "12"', 'horizons: "12"\n'),
        ('demo_leak: "false"', 'demo_leak: "false"\n'),
        ("horizons: [5.5]", "horizons: [5.5]\n"),
        ("horizons: {a: 1}", "horizons: {a: 1}\n"),
        ("horizons: [true]", "horizons: [true]\n"),
        ("horizons: [5000]", "horizons: [5000]\n"),
        ("n_estimators: -5", "models:\n  n_estimators: -5\n"),
        ('learning_rate: "fast"', "models:\n  learning_rate: fast\n"),
        ('seed: "abc"', "seed: abc\n"),
        ("n_splits: 2.5", "n_splits: 2.5\n"),
        ("n_splits: 1000", "n_splits: 1000\n"),
        ("n_splits: 40 (data: at most 17)", "n_splits: 40\n"),
    ]:
        case = f"settings {name}"
        if not want(case):
            continue
        text = FAST.replace("horizons: [5]\n", "") if extra.startswith("horizons") else FAST
        if extra.startswith("models:"):
            key = extra.split("\n")[1].split(":")[0].strip()
            text = "\n".join(x for x in text.split("\n") if x.strip().split(":")[0] != key)
            text = text.replace("models:\n", extra, 1)
        elif extra.startswith("n_splits"):
            text = text.replace("n_splits: 3\n", extra)
        else:
            text = text + extra
        path = WORK / f"s-{abs(hash(name))}.yaml"
        path.write_text(text)
        root = WORK / f"out-s-{abs(hash(name))}"
        r = run_fresh(d1, root, path, home=WORK / "h5", timeout=150)
        targets = (
            sorted(p.name for p in (root / "targets").iterdir())
            if (root / "targets").exists()
            else []
        )
        emit(
            case,
            brief(r) | {"root written": root.exists() and any(root.iterdir()), "targets": targets},
        )

    if want("read-only root"):
        src, ro = WORK / "ro-src", WORK / "ro"
        src.mkdir(exist_ok=True)
        ro.mkdir(exist_ok=True)
        subprocess.run(["mount", "--bind", str(src), str(ro)], check=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True)
        try:
            r = cli(
                "run",
                "--data",
                str(d1),
                "--out",
                str(ro / "out"),
                "--settings",
                str(sa),
                home=WORK / "h6",
            )
            r2 = cli(
                "run", "--data", str(d1), "--out", str(ro), "--settings", str(sa), home=WORK / "h6"
            )
        finally:
            subprocess.run(["umount", str(ro)], check=True)
        emit("read-only root", {"missing root under ro": brief(r), "ro root": brief(r2)})

    if want("full disk"):
        mnt = WORK / "full"
        mnt.mkdir(exist_ok=True)
        size = sum(p.stat().st_size for p in base.rglob("*") if p.is_file())
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size + 400_000}", "tmpfs", str(mnt)], check=True
        )
        try:
            root = copy_root(base, mnt / "out")
            r = cli(
                "run",
                "--data",
                str(d1),
                "--out",
                str(root),
                "--settings",
                str(sb),
                home=WORK / "h7",
            )
            after = (
                tree_hash(root / "targets", ("attempt_0",)),
                tree_hash(root / "_work", ("attempt_0",)),
            )
            base_parts = (
                tree_hash(base / "targets", ("attempt_0",)),
                tree_hash(base / "_work", ("attempt_0",)),
            )
            df = subprocess.run(
                ["df", "-k", str(mnt)], capture_output=True, text=True
            ).stdout.split("\n")[1]
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
        emit(
            "full disk",
            brief(r)
            | {
                "no space in last line": "No space left on device" in r["last"],
                "attempt 0 unchanged": after == base_parts,
                "df": df,
            },
        )

    if want("killed write debris"):
        root = copy_root(base, WORK / "debris")
        reg = json.loads(next((root / "_registry").glob("batch_*.json")).read_text())
        work0 = next(root.glob("_work/**/bars.parquet")).parent  # per attempt, or per batch before
        tmp1 = work0 / ".tmp-bars.parquet.0123456789ab"
        tmp1.write_bytes(os.urandom(1 << 20))
        tmp2 = root / "_registry" / f".tmp-batch_{reg['batch']}.json.0123456789ab"
        tmp2.write_bytes(b"{")
        r = cli(
            "run", "--data", str(d1), "--out", str(root), "--settings", str(sb), home=WORK / "h8"
        )
        emit(
            "killed write debris",
            brief(r) | {"work tmp left": tmp1.exists(), "registry tmp left": tmp2.exists()},
        )

    if want("cohorts list on a missing root"):
        root = WORK / "missing-root"
        shutil.rmtree(root, ignore_errors=True)
        r = cli("cohorts", "list", "--root", str(root), home=WORK / "h9")
        emit("cohorts list on a missing root", brief(r) | {"created": root.exists()})

    if want("stacking-data without its fold plan"):
        root = copy_root(base, WORK / "nofold")
        plans = [p for p in root.rglob("fold_plan*.json") if "stage=TRAINING" in str(p)]
        plans[0].unlink()
        reg = json.loads(next((root / "_registry").glob("batch_*.json")).read_text())
        r = cli(
            "stacking-data",
            "--root",
            str(root),
            "--batch",
            reg["batch"],
            "--attempt",
            "0",
            "--target",
            "fwd_ret_5",
            home=WORK / "h9",
        )
        emit(
            "stacking-data without its fold plan",
            brief(r)
            | {
                "says complete": '"complete": true' in r["out"],
                "removed": str(plans[0].relative_to(root)),
            },
        )

    if want("metrics.json tampered"):
        root = copy_root(base, WORK / "tamper")
        metrics = next(root.rglob("metrics.json"))
        metrics.write_text(metrics.read_text().replace("0", "1", 1))
        r = cli("verify", "--root", str(root), home=WORK / "h9")
        emit(
            "metrics.json tampered",
            brief(r)
            | {
                "stdout": (r["out"].strip().splitlines() or [""])[-1][:200],
                "stderr": r["err"].strip()[-200:],
            },
        )

    if want("concurrent runs, other files, same symbols"):
        root = WORK / "conc"
        shutil.rmtree(root, ignore_errors=True)
        procs = []
        for i, d in enumerate((d1, d2)):
            home = WORK / f"hc{i}"
            home.mkdir(exist_ok=True)
            procs.append(
                subprocess.Popen(
                    [str(BIN), "run", "--data", str(d), "--out", str(root), "--settings", str(sa)],
                    env={**os.environ, "DAGSTER_HOME": str(home)},
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        outs = []
        for p in procs:
            _, err = p.communicate(timeout=900)
            lines = [x for x in err.strip().splitlines() if x.strip()]
            outs.append({"rc": p.returncode, "last": lines[-1][:400] if lines else ""})
        emit(
            "concurrent runs, other files, same symbols",
            outs + [listed_vs_disk(root, WORK / "hc0")],
        )


if __name__ == "__main__":
    main()
