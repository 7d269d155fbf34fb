"""tracer_wrap's own cost on the request path, before and after a change, measured side by side.

    python benchmarks/bench_overhead.py [--before REV] [--rounds 6] [--calls 300] [--json OUT]

Two scenarios through ``wrap_openai`` and the real openai SDK over loopback HTTP to the local test
LLM server (``tests/llm_server.py``), with the tiny hashing embedder (the same code in both
versions, so the difference is tracer_wrap's own path):

* **deferred**: the served router certifies nothing, so every call goes to the LLM: the cost is
  the view of the request, embedding, routing, the trace write and the accounting. Measured as the
  paired difference between a wrapped call and a plain-client call made right after it;
* **local**: the router answers locally: the cost is the whole wrapped call (no HTTP at all).

``--before REV`` (default: the commit before the one-engine redesign) is checked out into a
temporary worktree; rounds alternate between that tree and this one, each round in a fresh
process, so load on the machine hits both alike. Reported: the median over rounds of each round's
median, per version and scenario, and the after/before ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "c835329"  # main before the one-engine redesign
SYSTEM = {"role": "system", "content": "Classify the customer's intent. Answer with the label."}


def worker(calls: int, out: Path) -> None:
    """Measure both scenarios with the tracer_wrap found on sys.path; write the samples."""
    import numpy as np
    import openai

    sys.path.insert(0, str(ROOT / "tests"))
    from _synthetic import LABELS, fill_store, make_traces
    from llm_server import serve_llm

    import tracer_wrap
    from tracer_wrap.store import TraceStore

    try:
        from tracer_wrap.model.hashing import hashing_embedder
    except ImportError:  # the layout before the redesign
        from tracer_wrap._hashing_embedder import hashing_embedder  # type: ignore[no-redef]

    def teacher(text: str) -> str:
        lowered = text.lower()
        hits = [(lowered.find(w), label) for label, ws in LABELS.items() for w in ws
                if w in lowered]
        return min(hits)[1] if hits else "refund"

    samples: dict[str, list[float]] = {"deferred": [], "local": [], "plain": []}
    with serve_llm(teacher) as server, tempfile.TemporaryDirectory() as tmp:
        plain = openai.OpenAI(base_url=server.base_url_openai, api_key="t", max_retries=0)
        embedder = hashing_embedder()
        for scenario, target in (("deferred", 0.999), ("local", 0.9)):
            store = TraceStore(Path(tmp) / scenario)
            fill_store(store, "intent", 800)
            client = tracer_wrap.wrap_openai(
                openai.OpenAI(base_url=server.base_url_openai, api_key="t", max_retries=0),
                task="intent", labels=sorted(LABELS), store=store, embedder=embedder,
                refit_every=None, audit_rate=0.0, target=target, min_traces=50)
            client.tracer_wrap_tasks.task("intent").refit()
            texts = [t for t, _ in make_traces(calls + 50, seed=11, hard_share=0.0)]
            for i, text in enumerate(texts):
                messages = [SYSTEM, {"role": "user", "content": text}]
                started = time.perf_counter()
                reply = client.chat.completions.create(model="m", messages=messages)
                wrapped = time.perf_counter() - started
                local = getattr(reply, "system_fingerprint", None) == "tracer_wrap-local"
                if scenario == "deferred":
                    assert not local, "the deferred scenario answered locally"
                    started = time.perf_counter()
                    plain.chat.completions.create(model="m", messages=messages)
                    plain_s = time.perf_counter() - started
                    if i >= 50:  # warm-up: connections, imports, SQLite pages
                        samples["deferred"].append(wrapped - plain_s)
                        samples["plain"].append(plain_s)
                elif local and i >= 50:
                    samples["local"].append(wrapped)
    out.write_text(json.dumps({k: [float(x) for x in np.asarray(v)] for k, v in
                               samples.items()}), encoding="utf-8")


def run_round(tree: Path, calls: int) -> dict[str, list[float]]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker",
                    "--calls", str(calls), "--out", str(out)], cwd=tree, env=env, check=True)
    data: dict[str, list[float]] = json.loads(out.read_text(encoding="utf-8"))
    out.unlink()
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=BEFORE)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.calls, args.out)
        return
    with tempfile.TemporaryDirectory(prefix="tracer_wrap-before-") as tmp:
        before = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(before),
                        args.before], check=True, capture_output=True)
        try:
            rounds: dict[str, list[dict[str, list[float]]]] = {"before": [], "after": []}
            for r in range(args.rounds):
                order = [("before", before), ("after", ROOT)]
                for name, tree in order if r % 2 == 0 else order[::-1]:
                    rounds[name].append(run_round(tree, args.calls))
                    print(f"round {r + 1}/{args.rounds} {name} done", file=sys.stderr)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(before)], check=False, capture_output=True)
    report: dict[str, dict[str, float]] = {}
    for name, runs in rounds.items():
        report[name] = {
            f"{scenario}_ms": 1e3 * statistics.median(statistics.median(run[scenario])
                                                     for run in runs)
            for scenario in ("deferred", "local", "plain")}
        report[name]["deferred_p99_ms"] = 1e3 * statistics.median(
            sorted(run["deferred"])[int(0.99 * len(run["deferred"]))] for run in runs)
    for scenario in ("deferred", "local"):
        ratio = report["after"][f"{scenario}_ms"] / report["before"][f"{scenario}_ms"]
        report.setdefault("ratio_after_over_before", {})[scenario] = ratio
    load = os.getloadavg()
    report["machine"] = {"load_average": list(load), "cpus": os.cpu_count() or 0,
                         "rounds": args.rounds, "calls_per_round": args.calls,
                         "before": args.before}  # type: ignore[dict-item]
    print(json.dumps(report, indent=1))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
