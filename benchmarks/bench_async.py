"""Concurrent async calls, wrapped and plain side by side: does tracer_wrap serialise an async app?

    .venv/bin/python benchmarks/bench_async.py [--calls 40] [--latency 0.2] [--rounds 5]
                                               [--embedder minilm|hashing] [--busy 0 2]
                                               [--embed-timeout S]

A local fake LLM server (tests/llm_server.py, real HTTP, ``--latency`` seconds per answer) is
called ``--calls`` times at once with ``asyncio.gather`` through a plain ``AsyncOpenAI`` client
and through ``wrap_openai`` around the same client, in alternating rounds, with new inputs every
round (no embedding cache hit). Three tasks: *no router* (every call goes to the LLM), *served
router* (a router fitted on 800 traces answers part of the calls locally), and the same served
router with ``embed_budget=None`` (a call may wait for its embedding up to ``embed_timeout``
whatever the LLM's latency, as before the budget existed). ``--busy N`` also runs
every scenario with N processes burning CPU, started by this script. Reported: the median wall
time over rounds of plain and wrapped, their ratio (goal: wrapped <= 1.5x plain), and the number
of calls that raised (goal: equal, 0).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from http.server import ThreadingHTTPServer  # noqa: E402

import openai  # noqa: E402
from _synthetic import LABELS, make_traces  # noqa: E402
from llm_server import serve_llm  # noqa: E402

from tracer_wrap import Embedder, TracedTask  # noqa: E402
from tracer_wrap.integrations import wrap_openai  # noqa: E402
from tracer_wrap.model.hashing import hashing_embedder  # noqa: E402

NAMES = sorted(LABELS)
# The fake LLM must accept a burst of new connections at once (a real provider does): the
# default listen backlog of 5 refuses some and would count as the client's errors.
ThreadingHTTPServer.request_queue_size = 256


def teacher(text: str) -> str:
    lowered = text.lower()
    hits = [(lowered.find(w), label) for label, words in LABELS.items()
            for w in words if w in lowered]
    return min(hits)[1] if hits else "refund"


async def burst(client: openai.AsyncOpenAI, texts: list[str]) -> tuple[float, int]:
    """Wall time of all calls at once, and how many raised."""

    async def one(text: str) -> None:
        await client.chat.completions.create(model="m",
                                             messages=[{"role": "user", "content": text}])

    start = time.perf_counter()
    results = await asyncio.gather(*(one(t) for t in texts), return_exceptions=True)
    return time.perf_counter() - start, sum(isinstance(r, BaseException) for r in results)


def scenario(base_url: str, task: str, options: dict, args: argparse.Namespace,
             seed: int) -> dict[str, float]:
    async def run() -> dict[str, float]:
        raw = openai.AsyncOpenAI(base_url=base_url, api_key="t", max_retries=0, timeout=10.0)
        wrapped = wrap_openai(raw, task=task, **options)
        plain_s, wrapped_s, errors = [], [], [0, 0]
        await burst(raw, [f"warm-up {i}" for i in range(args.calls)])  # open the connections
        for r in range(args.rounds):
            texts = [f"{t} (round {seed}-{r})" for t, _ in make_traces(args.calls, seed=seed + r)]
            seconds, failed = await burst(raw, texts)
            plain_s.append(seconds)
            errors[0] += failed
            seconds, failed = await burst(wrapped, [t + " w" for t in texts])
            wrapped_s.append(seconds)
            errors[1] += failed
        await raw.close()
        # Write the wrapped calls' traces now: the store is a temporary directory removed when
        # the benchmark ends, before the interpreter's exit would flush them into it.
        for traced in wrapped.tracer_wrap_tasks.tasks().values():
            traced.close()
        plain, traced = statistics.median(plain_s), statistics.median(wrapped_s)
        return {"plain": plain, "wrapped": traced, "ratio": traced / plain,
                "plain_errors": errors[0], "wrapped_errors": errors[1]}

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--embedder", choices=["minilm", "hashing"], default="minilm")
    parser.add_argument("--busy", type=int, nargs="*", default=[0, 2])
    parser.add_argument("--embed-timeout", type=float, default=None,
                        help="the tasks' embed_timeout (default: the option's default)")
    args = parser.parse_args()
    embedder = Embedder.default() if args.embedder == "minilm" else hashing_embedder()
    with tempfile.TemporaryDirectory() as tmp, serve_llm(teacher, args.latency) as server:
        common = {"embedder": embedder, "labels": NAMES, "refit_every": None, "audit_rate": 0.0,
                  "breaker": False, "min_traces": 50}
        if args.embed_timeout is not None:
            common["embed_timeout"] = args.embed_timeout
        stores = {"no router": str(Path(tmp) / "a"), "served router": str(Path(tmp) / "b"),
                  "served router, embed_budget=None": str(Path(tmp) / "b")}
        served = TracedTask("t", store=stores["served router"], **common)
        for text, label in make_traces(800, seed=99):
            served.call(text, lambda label=label: label)
        served.refit()
        print(f"embedder {embedder.name}, {args.calls} concurrent calls, LLM latency"
              f" {args.latency * 1000:.0f} ms, {args.rounds} rounds; median wall time")
        print("| machine | task | plain (s) | wrapped (s) | wrapped / plain | calls that raised"
              " (plain / wrapped) |")
        print("| --- | --- | --- | --- | --- | --- |")
        for busy in args.busy:
            burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                       for _ in range(busy)]
            try:
                for i, (label, store) in enumerate(stores.items()):
                    extra = {"embed_budget": None} if "embed_budget=None" in label else {}
                    r = scenario(server.base_url_openai, "t", {**common, **extra, "store": store},
                                 args, 1000 * busy + 10 * i)
                    where = f"{busy} CPU burners" if busy else "as it is"
                    print(f"| {where} | {label} | {r['plain']:.3f} | {r['wrapped']:.3f} |"
                          f" {r['ratio']:.2f} | {r['plain_errors']} / {r['wrapped_errors']} |",
                          flush=True)
            finally:
                for p in burners:
                    p.kill()
                    p.wait()
        local = TracedTask("t", store=stores["served router"], **common).store.counter("t", "local")
        print(f"served router: {local} calls answered locally in all rounds")


if __name__ == "__main__":
    main()
