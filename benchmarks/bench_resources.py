"""Resource bounds: serving memory with 10 routers, store growth per 1M traces, fitting at 1M.

Synthetic data (no model download): 77 labels, 384-d L2-normalised vectors around one centre
per label, trace texts of ~90 characters like Banking77's. Each part runs in its own
subprocess so its RSS is its own. Run: python benchmarks/bench_resources.py [N_STORE] [N_FIT]
(defaults 100000 and 1000000; about 2-3 minutes on 2 cores).
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

LABELS, DIM, ROUTERS = 77, 384, 10


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic(n: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((LABELS, DIM)).astype(np.float32)
    y = rng.integers(0, LABELS, n)
    X = centres[y]
    for start in range(0, n, 100_000):  # in chunks, so the peak RSS is the fit's, not ours
        chunk = X[start:start + 100_000]
        chunk += 1.2 * rng.standard_normal(chunk.shape, dtype=np.float32)
        chunk /= np.linalg.norm(chunk, axis=1, keepdims=True)
    return X, [f"label_{k}" for k in y]


def part_publish(store_dir: str) -> dict:
    """Fit one router on 77 labels x 384-d and publish it as the current version of 10 tasks."""
    from tracer_wrap.model.fit import fit_router
    from tracer_wrap.store import TraceStore
    from tracer_wrap.versions import publish

    X, y = synthetic(20_000)
    router = fit_router(X, y, serve_target=0.9)
    store = TraceStore(store_dir)
    for i in range(ROUTERS):
        publish(store, f"task{i}", router)
    size = sum(f.stat().st_size for f in Path(store_dir).rglob("*") if f.is_file())
    return {"router_files_mb": size / 2**20 / ROUTERS}


def part_serve(store_dir: str) -> dict:
    """RSS of a process serving 10 tasks, before and after their routers are loaded."""
    from tracer_wrap import Embedder, TracedTask

    vector = np.ones(DIM, dtype=np.float32) / np.sqrt(DIM)
    embedder = Embedder.from_callable(lambda texts: np.tile(vector, (len(texts), 1)), name="const")
    tasks = [TracedTask(f"task{i}", store=store_dir, embedder=embedder, refit_every=None)
             for i in range(ROUTERS)]
    tasks[0].store.current_version("task0")
    before = rss_mb()
    assert all(task.router is not None for task in tasks)
    for task in tasks:
        task.call("warm up the path", lambda: "label_0")
    after = rss_mb()
    return {"rss_without_routers_mb": before, "rss_with_10_routers_mb": after,
            "per_router_mb": (after - before) / ROUTERS}


def part_store(store_dir: str, n: int) -> dict:
    """Append n distinct traces (one repeat in ten), measure time and bytes on disk; read back."""
    from tracer_wrap.store import TraceStore

    rng = np.random.default_rng(1)  # which earlier inputs repeat
    words = ["card", "refund", "top", "up", "exchange", "rate", "please", "my", "the", "account",
             "why", "was", "charged", "twice", "transfer", "pending", "help", "app", "pin"]
    store = TraceStore(store_dir)
    started = time.perf_counter()
    distinct = 0
    for i in range(n + n // 10):
        j = i if i < n else int(rng.integers(0, n))
        text = " ".join(np.random.default_rng(j).choice(words, 14)) + f" #{j}"
        store.append("t", text, f"label_{j % LABELS}")
        distinct += i < n
    append_s = time.perf_counter() - started
    started = time.perf_counter()
    traces = store.traces("t", valid_only=True)
    read_s = time.perf_counter() - started
    size = sum(f.stat().st_size for f in Path(store_dir).rglob("*") if f.is_file())
    return {"traces": len(traces), "appends": n + n // 10,
            "append_ms": 1000 * append_s / (n + n // 10),
            "read_all_s": read_s, "bytes_per_trace": size / n, "store_mb": size / 2**20,
            "peak_rss_mb": peak_mb()}


def part_fit(n: int) -> dict:
    """fit_router on n traces (training capped at 50k, the rest calibrates), time and peak RSS."""
    from tracer_wrap.model.fit import fit_router

    X, y = synthetic(n, seed=2)
    data_mb = X.nbytes / 2**20
    rss_before = rss_mb()
    started = time.perf_counter()
    router = fit_router(X, y, serve_target=0.9, max_train=50_000)
    cert = router.certificate_for(0.9)
    return {"n": n, "fit_s": time.perf_counter() - started, "vectors_mb": data_mb,
            "rss_before_fit_mb": rss_before, "peak_rss_mb": peak_mb(),
            "coverage_at_0.9": cert.coverage, "n_calibration": router.info.get("n_calibration")}


def run(part: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--part", part, *args], capture_output=True,
                         text=True, timeout=900)
    if out.returncode:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    n_store = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    n_fit = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
    root = Path(tempfile.mkdtemp(prefix="tw-bench-"))
    try:
        published = run("publish", str(root / "routers"))
        serve = run("serve", str(root / "routers"))
        print(f"serving: {serve['rss_without_routers_mb']:.0f} MB RSS without routers,"
              f" {serve['rss_with_10_routers_mb']:.0f} MB with 10 routers (77 labels x 384-d):"
              f" {serve['per_router_mb']:.2f} MB per router in memory,"
              f" {published['router_files_mb']:.2f} MB of files per version on disk")
        store = run("store", str(root / "traces"), str(n_store))
        per_million = store["bytes_per_trace"] * 1_000_000 / 2**30
        print(f"store: {store['traces']:,} traces ({store['appends']:,} appends) in"
              f" {store['store_mb']:.0f} MB = {store['bytes_per_trace']:.0f} B/trace ->"
              f" {per_million:.2f} GB per 1M traces; append {store['append_ms']:.3f} ms;"
              f" reading all back {store['read_all_s']:.1f} s"
              f" (-> ~{store['read_all_s'] * 1e6 / n_store:.0f} s at 1M);"
              f" peak RSS {store['peak_rss_mb']:.0f} MB")
        fit = run("fit", str(n_fit))
        print(f"fit at {fit['n']:,} traces (train capped at 50k): {fit['fit_s']:.1f} s,"
              f" vectors {fit['vectors_mb']:.0f} MB,"
              f" RSS {fit['rss_before_fit_mb']:.0f} MB before the fit,"
              f" peak {fit['peak_rss_mb']:.0f} MB,"
              f" coverage at 0.9 {fit['coverage_at_0.9']:.3f},"
              f" {fit['n_calibration']:,} calibration")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--part":
        name, rest = sys.argv[2], sys.argv[3:]
        fn = {"publish": part_publish, "serve": part_serve, "store": part_store,
              "fit": part_fit}[name]
        converted = [int(a) if a.isdigit() else a for a in rest]
        print(json.dumps(fn(*converted)))
    else:
        main()
