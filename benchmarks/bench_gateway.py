"""The gateway's cost on loopback: overhead on forwarded calls, throughput of local answers.

    .venv/bin/python benchmarks/bench_gateway.py [--pairs 400] [--seconds 10] [--json OUT]

Three processes: the fake LLM (``tests/llm_server.py``, OpenAI wire protocol), ``tracer-wrap
gateway`` in front of it, and this client (keep-alive connections: httpx for the overhead, a
minimal socket client for throughput, so the client takes less of the shared cores).

1. Overhead: the same request sent directly to the fake LLM and through the gateway, in pairs
   whose order is random, one at a time, so both see the same machine; median and p99 of each
   and of the difference. Scenarios: a free-form chat (forwarded untouched, not traced), a
   classification call no router answers (through the engine, forwarded, its answer tapped and
   traced), and a free-form streamed chat (time to the last byte).
2. Throughput of locally answered calls: a router fitted on the synthetic task (hashing embedder,
   no model), routing on, ``--workers 1`` and ``--workers 4`` side by side (driven in turns),
   by ``--concurrency`` client threads for ``--seconds`` each; every answer is checked to be
   local.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from _synthetic import LABELS, make_traces  # noqa: E402

from tracer_wrap.engine import TracedTask  # noqa: E402
from tracer_wrap.integrations._prompt import openai_chat_view  # noqa: E402
from tracer_wrap.model.hashing import hashing_embedder  # noqa: E402
from tracer_wrap.store import TraceStore  # noqa: E402

SYSTEM = {"role": "system", "content": "Classify the banking request. Answer with the label only."}
TOOL = {"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}


def teacher(text: str) -> str:
    lowered = text.lower()
    hits = [(lowered.find(w), label) for label, words in LABELS.items() for w in words
            if w in lowered]
    return min(hits)[1] if hits else "refund"


def serve_upstream() -> None:
    """Child process: the fake LLM until stdin closes; prints its base URL."""
    from llm_server import serve_llm

    with serve_llm(teacher) as server:
        print(server.base_url, flush=True)
        sys.stdin.read()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_gateway(store: str, upstream: str, workers: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "TRACER_WRAP_EMBEDDER": "hashing", "TRACER_WRAP_AUDIT_RATE": "0",
           "TRACER_WRAP_REFIT_EVERY": "never", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "tracer_wrap.ops.cli", "--store", store,
                             "gateway", "--port", str(port), "--workers", str(workers),
                             "--openai-upstream", f"{upstream}/v1"], env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/tracer-wrap/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the gateway did not start")
        time.sleep(0.1)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(60)


def one(client: httpx.Client, url: str, body: dict[str, Any]) -> float:
    started = time.perf_counter()
    if body.get("stream"):
        with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
            for _ in r.iter_raw():
                pass
            status = r.status_code
    else:
        status = client.post(f"{url}/v1/chat/completions", json=body).status_code
    elapsed = time.perf_counter() - started
    if status != 200:
        raise RuntimeError(f"status {status}")
    return elapsed


def quantiles(values: list[float]) -> dict[str, float]:
    q = statistics.quantiles(values, n=100)
    return {"median_ms": round(1000 * statistics.median(values), 3),
            "p99_ms": round(1000 * q[98], 3)}


def overhead(direct: str, gateway: str, pairs: int) -> list[dict[str, Any]]:
    texts = [t for t, _ in make_traces(pairs + 20, seed=1)]
    scenarios = {
        "free-form chat (forwarded, not traced)": lambda t: {
            "model": "gpt-test", "messages": [SYSTEM, {"role": "user", "content": t}],
            "tools": [TOOL]},
        "classification, no router (traced)": lambda t: {
            "model": "gpt-test", "messages": [SYSTEM, {"role": "user", "content": t}]},
        "free-form chat, streamed (to the last byte)": lambda t: {
            "model": "gpt-test", "messages": [SYSTEM, {"role": "user", "content": t}],
            "tools": [TOOL], "stream": True},
    }
    rng = random.Random(0)
    rows = []
    with httpx.Client(timeout=30) as a, httpx.Client(timeout=30) as b:
        for name, make in scenarios.items():
            for text in texts[:20]:  # warm-up: connections, imports, the task's store
                one(a, direct, make(text))
                one(b, gateway, make(text))
            times: dict[str, list[float]] = {"direct": [], "gateway": []}
            for text in texts[20:]:
                order = [("direct", a, direct), ("gateway", b, gateway)]
                rng.shuffle(order)
                for key, client, url in order:
                    times[key].append(one(client, url, make(text)))
            diffs = [g - d for g, d in zip(times["gateway"], times["direct"])]
            rows.append({"scenario": name, "pairs": pairs,
                         "direct": quantiles(times["direct"]),
                         "gateway": quantiles(times["gateway"]),
                         "added": quantiles(diffs)})
    return rows


class RawClient:
    """A minimal HTTP/1.1 keep-alive client over one socket (pre-encoded requests, no parsing
    beyond what framing needs): far cheaper than httpx, so the client, which shares the cores,
    takes less of the measurement."""

    def __init__(self, url: str) -> None:
        import socket

        host, port = url.removeprefix("http://").split(":")
        self.host = f"{host}:{port}".encode()
        self.sock = socket.create_connection((host, int(port)))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def post(self, path: str, body: bytes) -> bytes:
        """Send one POST and read its answer; return the answer's lower-cased headers."""
        self.sock.sendall(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: " + self.host
                          + b"\r\nContent-Type: application/json\r\nContent-Length: "
                          + str(len(body)).encode() + b"\r\n\r\n" + body)
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self.sock.recv(65536)
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        head = head.lower()
        if not head.startswith(b"http/1.1 200"):
            raise RuntimeError(head.split(b"\r\n")[0].decode())
        length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
        while len(self.buffer) < length:
            self.buffer += self.sock.recv(65536)
        self.buffer = self.buffer[length:]
        return head


def throughput(store: str, upstream: str, seconds: float, concurrency: int,
               workers: tuple[int, ...] = (1, 4), rounds: int = 5) -> list[dict[str, Any]]:
    """Local answers per second of a gateway with each number of ``workers``: all of them run at
    once and are driven in turns (``rounds`` of ``seconds / rounds`` each), so a change in the
    machine's other load affects them alike."""
    groups = list(LABELS.values())  # single-label inputs the router answers (easy ones)
    texts = [f"hello {groups[i % 4][i % 4]} please {groups[i % 4][(i + 1) % 4]} #{i}"
             for i in range(400)]
    bodies = [json.dumps({"model": "gpt-test", "messages": [
        SYSTEM, {"role": "user", "content": text}]}).encode() for text in texts]
    gateways = [start_gateway(store, upstream, n) for n in workers]
    results = {n: {"latencies": [], "elapsed": 0.0, "not_local": 0} for n in workers}
    lock = threading.Lock()

    def run(url: str, duration: float, tally: dict[str, Any] | None) -> None:
        def drive(until: float) -> None:
            mine: list[float] = []
            not_local = 0
            with RawClient(url) as client:
                i = random.randrange(len(texts))
                while time.perf_counter() < until:
                    started = time.perf_counter()
                    headers = client.post("/v1/chat/completions", bodies[i % len(bodies)])
                    mine.append(time.perf_counter() - started)
                    not_local += b"x-tracer-wrap: local" not in headers
                    i += 1
            if tally is not None:
                with lock:
                    tally["latencies"].extend(mine)
                    tally["not_local"] += not_local

        until = time.perf_counter() + duration
        threads = [threading.Thread(target=drive, args=(until,)) for _ in range(concurrency)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if tally is not None:
            tally["elapsed"] += time.perf_counter() - started

    try:
        for _, url in gateways:
            run(url, 3.0, None)  # warm-up: every worker loads the router
        for _ in range(rounds):
            for (_, url), n in zip(gateways, workers):
                run(url, seconds / rounds, results[n])
    finally:
        for proc, _ in gateways:
            stop(proc)
    return [{"workers": n, "concurrency": concurrency, "requests": len(r["latencies"]),
             "per_second": round(len(r["latencies"]) / r["elapsed"]),
             "not_local": r["not_local"], **quantiles(r["latencies"])}
            for n, r in results.items()]


def fitted_store() -> str:
    path = tempfile.mkdtemp(prefix="tw-gateway-bench-")
    store = TraceStore(path)
    view = openai_chat_view({"model": "gpt-test",
                             "messages": [SYSTEM, {"role": "user", "content": "x"}]})
    assert view is not None
    for text, label in make_traces(4000):
        store.append(view.task_key, text, label)
    TracedTask(view.task_key, store=store, embedder=hashing_embedder(), min_traces=100,
               refit_every=None, target=0.9).refit()
    store.set_setting(view.task_key, "routing", True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--pairs", type=int, default=400)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--serve-upstream", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream()
        return

    upstream_proc = subprocess.Popen([sys.executable, __file__, "--serve-upstream"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert upstream_proc.stdout is not None and upstream_proc.stdin is not None
    upstream = upstream_proc.stdout.readline().decode().strip()
    results: dict[str, Any] = {"command": " ".join(["benchmarks/bench_gateway.py",
                                                    *sys.argv[1:]]),
                               "cpus": os.cpu_count(), "python": sys.version.split()[0],
                               "load_average_before": os.getloadavg()}
    try:
        empty = tempfile.mkdtemp(prefix="tw-gateway-bench-")
        proc, gateway = start_gateway(empty, upstream, 1)
        try:
            results["overhead"] = overhead(upstream, gateway, args.pairs)
        finally:
            stop(proc)
        print(f"gateway overhead on loopback, one call at a time, {args.pairs} pairs in random"
              f" order, {os.cpu_count()} CPUs shared by the fake LLM, the gateway and the client")
        print(f"{'scenario':46} {'direct p50/p99 ms':>18} {'gateway p50/p99':>16}"
              f" {'added p50/p99':>14}")
        for row in results["overhead"]:
            d, g, a = row["direct"], row["gateway"], row["added"]
            print(f"{row['scenario']:46} {d['median_ms']:8.2f} /{d['p99_ms']:7.2f}"
                  f" {g['median_ms']:7.2f} /{g['p99_ms']:7.2f}"
                  f" {a['median_ms']:6.2f} /{a['p99_ms']:6.2f}")

        store = fitted_store()
        results["local_throughput"] = throughput(store, upstream, args.seconds, args.concurrency)
        print(f"\nlocally answered calls, {args.concurrency} client threads, {args.seconds:g} s,"
              " hashing embedder")
        print(f"{'workers':>7} {'requests':>8} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7}"
              f" {'not local':>9}")
        for row in results["local_throughput"]:
            print(f"{row['workers']:7d} {row['requests']:8d} {row['per_second']:7d}"
                  f" {row['median_ms']:7.2f} {row['p99_ms']:7.2f} {row['not_local']:9d}")
    finally:
        upstream_proc.stdin.close()
        upstream_proc.wait(30)
    results["load_average_after"] = os.getloadavg()
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
