"""Overhead of wrap_openai on calls that go to the LLM, side by side with the plain client.

Both clients talk to the same local LLM server over loopback HTTP, interleaved call by call, so
load on the machine hits both alike. The embedder is precomputed-cheap (a constant vector, no
model) and a router is served that never answers locally (the task has no certified threshold),
so the measured difference is tracer_wrap's own path: view + template key, task lookup, routing,
trace logging to SQLite, usage counters. Run: python benchmarks/bench_wrapper_overhead.py [N]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from llm_server import serve_llm  # noqa: E402

from tracer_wrap.integrations import wrap_openai  # noqa: E402
from tracer_wrap.model.embedder import Embedder  # noqa: E402
from tracer_wrap.store import TraceStore  # noqa: E402

SYSTEM = {"role": "system", "content": "Classify the sentiment. Answer positive or negative."}


def main(n: int = 600) -> None:
    cheap = Embedder.from_callable(lambda texts: np.ones((len(texts), 8), dtype=np.float32),
                                   name="const")
    with serve_llm(lambda text: "positive" if "good" in text else "negative") as server, \
            tempfile.TemporaryDirectory() as tmp:
        plain = openai.OpenAI(base_url=server.base_url_openai, api_key="t", max_retries=0)
        wrapped = wrap_openai(openai.OpenAI(base_url=server.base_url_openai, api_key="t",
                                            max_retries=0),
                              store=TraceStore(tmp), embedder=cheap,
                              labels=["positive", "negative"], refit_every=None)
        times: dict[str, list[float]] = {"plain": [], "wrapped": []}
        for i in range(n + 50):
            for name, client in (("plain", plain), ("wrapped", wrapped)) if i % 2 else (
                    ("wrapped", wrapped), ("plain", plain)):
                messages = [SYSTEM, {"role": "user", "content": f"a good day number {i}"}]
                start = time.perf_counter()
                client.chat.completions.create(model="m", messages=messages)
                if i >= 50:  # warm-up: connections, imports, SQLite pages
                    times[name].append(time.perf_counter() - start)
        assert server.total_calls == 2 * (n + 50)
        q = {k: np.percentile(v, [50, 99]) * 1e3 for k, v in times.items()}
        diffs = np.array(times["wrapped"]) - np.array(times["plain"])
        print(f"calls per client: {n}")
        for name in ("plain", "wrapped"):
            print(f"{name:8s} median {q[name][0]:.3f} ms   p99 {q[name][1]:.3f} ms")
        print(f"overhead median {q['wrapped'][0] - q['plain'][0]:.3f} ms   "
              f"p99 {q['wrapped'][1] - q['plain'][1]:.3f} ms   "
              f"(paired median {statistics.median(diffs) * 1e3:.3f} ms)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 600)
