"""What chunking by length saves when many texts are embedded: a refit's bulk work, `make demo`.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_embed_chunks.py [--n 1000] [--rounds 3]

Embeds shuffled Banking77 queries with MiniLM (no cache, so every text reaches the model) two
ways, alternating, each round on texts neither way saw before:

* **service**: :meth:`tracer_wrap.embedding.EmbeddingService.embed` (a refit's bulk work, chunks
  of ``BULK_CHUNK`` texts, the embedder on one torch thread as in a traced service), with chunks
  taken in arrival order (before) and of similar lengths (now, :func:`length_chunks`);
* **demo**: :meth:`Embedder.embed_chunked` in chunks of 256 on torch's own thread count (what
  `make demo` and the CLI's `fit` / `report` do), arrival order against similar lengths.

Reported: milliseconds per text of each round and their medians. Both ways give the same vectors
(up to float summation order), in the caller's order.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable, Sequence

import tracer_wrap.embedding as embedding
from tracer_wrap.lab.datasets import load_banking77
from tracer_wrap.model import embedder as embedder_module
from tracer_wrap.model.embedder import Embedder, length_chunks


def arrival_chunks(texts: Sequence[str], size: int) -> list[list[int]]:
    """The chunking before: positions in arrival order."""
    return [list(range(i, min(i + size, len(texts)))) for i in range(0, len(texts), size)]


def per_text_ms(run: Callable[[list[str]], object], texts: list[str]) -> float:
    started = time.perf_counter()
    run(texts)
    return (time.perf_counter() - started) / len(texts) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="texts per round and way")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = load_banking77()
    random.Random(0).shuffle(rows)
    texts = [text for text, _ in rows]
    if 4 * args.rounds * args.n > len(texts):
        parser.error(f"4 x rounds x n must be at most the {len(texts):,} queries")
    fresh = iter(range(0, len(texts), args.n))

    service = embedding.EmbeddingService(Embedder.default(cache_bytes=0))
    demo = Embedder.default(cache_bytes=0, threads=None)
    service.embed(["warm up"])
    demo.embed(["warm up"])
    ways: dict[str, Callable[[list[str]], object]] = {
        "service": service.embed, "demo": demo.embed_chunked}
    results: dict[str, dict[str, list[float]]] = {w: {"arrival": [], "length": []} for w in ways}
    try:
        for _ in range(args.rounds):
            for way, run in ways.items():
                for name, chunker in (("arrival", arrival_chunks), ("length", length_chunks)):
                    chunk = texts[next(fresh):][:args.n]
                    # Both callers look the chunker up in their module at call time.
                    embedding.__dict__["length_chunks"] = chunker
                    embedder_module.__dict__["length_chunks"] = chunker
                    results[way][name].append(per_text_ms(run, chunk))
    finally:
        embedding.__dict__["length_chunks"] = length_chunks
        embedder_module.__dict__["length_chunks"] = length_chunks
        service.close(30)
    for way, by_name in results.items():
        for name, values in by_name.items():
            print(f"{way:8s} {name:8s} ms/text {[round(v, 2) for v in values]}"
                  f" median {statistics.median(values):.2f}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
