"""tracer_wrap's own cost on the request path, before and after a change, measured side by side.

    python benchmarks/bench_overhead.py [--before REV] [--rounds 8] [--calls 1000] [--json OUT]

Two paths, each in two scenarios, with the tiny hashing embedder and its cache warmed (the same
code in both versions), so what is timed is tracer_wrap's own path:

* **decorator**: a ``@traced_classifier`` function that returns at once. *deferred*: the served
  router certifies nothing, so every call runs the function: routing, the trace write and the
  accounting. *local*: the router answers, the function is not called;
* **openai**: ``wrap_openai`` around the real openai SDK whose HTTP transport answers in process
  (``httpx.MockTransport``: no sockets, so the network's noise is out of the figure).
  *deferred*: the paired difference between a wrapped call and a plain-client call made right after
  it; *local*: the whole wrapped call (the plain call it replaces is reported beside it).

``--before REV`` (default: main before the one-engine redesign) is checked out into a temporary
worktree; rounds alternate between that tree and this one, each round in a fresh process, so load
on the machine hits both alike. Reported: the median over rounds of each round's median, in
microseconds, and the after/before ratio per figure.
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
FIGURES = ("decorator_deferred", "decorator_local", "openai_deferred", "openai_local",
           "openai_plain")


def worker(calls: int, out: Path) -> None:
    """Measure every figure with the tracer_wrap found on sys.path; write the samples."""
    import httpx
    import openai

    sys.path.insert(0, str(ROOT / "tests"))
    from _synthetic import LABELS, fill_store, make_traces

    import tracer_wrap
    from tracer_wrap.store import TraceStore

    try:
        from tracer_wrap.model.hashing import hashing_embedder
    except ImportError:  # the layout before the redesign
        from tracer_wrap._hashing_embedder import hashing_embedder  # type: ignore[no-redef]

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None, "message": {
                "role": "assistant", "content": "refund", "refusal": None}}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 1, "total_tokens": 21}})

    def sdk() -> openai.OpenAI:
        return openai.OpenAI(base_url="http://llm.invalid/v1", api_key="t", max_retries=0,
                             http_client=httpx.Client(transport=httpx.MockTransport(answer)))

    texts = [t for t, _ in make_traces(calls + 100, seed=11, hard_share=0.0)]
    embedder = hashing_embedder()
    embedder.embed(texts)
    samples: dict[str, list[float]] = {name: [] for name in FIGURES}
    plain = sdk()
    with tempfile.TemporaryDirectory() as tmp:
        for scenario, target in (("deferred", 0.999), ("local", 0.9)):
            options = dict(labels=sorted(LABELS), embedder=embedder, refit_every=None,
                           audit_rate=0.0, target=target, min_traces=50)
            store = TraceStore(Path(tmp) / f"decorator-{scenario}")
            fill_store(store, "intent", 800)

            @tracer_wrap.traced_classifier(task="intent", store=store, **options)
            def classify(text: str) -> str:
                return "refund"

            classify.refit()
            store = TraceStore(Path(tmp) / f"openai-{scenario}")
            fill_store(store, "intent", 800)
            client = tracer_wrap.wrap_openai(sdk(), task="intent", store=store, **options)
            client.tracer_wrap_tasks.task("intent").refit()
            for i, text in enumerate(texts):
                started = time.perf_counter()
                classify(text)
                decorated = time.perf_counter() - started
                messages = [SYSTEM, {"role": "user", "content": text}]
                started = time.perf_counter()
                reply = client.chat.completions.create(model="m", messages=messages)
                wrapped = time.perf_counter() - started
                local = getattr(reply, "system_fingerprint", None) == "tracer_wrap-local"
                started = time.perf_counter()
                plain.chat.completions.create(model="m", messages=messages)
                plain_s = time.perf_counter() - started
                if i < 100:  # warm-up: imports, SQLite pages, the SDK's first-call caches
                    continue
                samples[f"decorator_{scenario}"].append(decorated)
                samples["openai_plain"].append(plain_s)
                if scenario == "deferred":
                    assert not local, "the deferred scenario answered locally"
                    samples["openai_deferred"].append(wrapped - plain_s)
                elif local:
                    samples["openai_local"].append(wrapped)
    out.write_text(json.dumps(samples), encoding="utf-8")


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
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--calls", type=int, default=1000)
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
        report[name] = {f"{figure}_us": 1e6 * statistics.median(
            statistics.median(run[figure]) for run in runs) for figure in FIGURES}
    report["ratio_after_over_before"] = {
        figure: report["after"][f"{figure}_us"] / report["before"][f"{figure}_us"]
        for figure in FIGURES}
    load = os.getloadavg()
    report["machine"] = {"load_average": list(load), "cpus": os.cpu_count() or 0,
                         "rounds": args.rounds, "calls_per_round": args.calls,
                         "before": args.before}  # type: ignore[dict-item]
    print(json.dumps(report, indent=1))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
