"""Write Banking77 as trace files for ``tracer-wrap bench``: gold labels and a simulated LLM.

Writes ``benchmarks/out/banking77_{train,test}_{gold,llm}.jsonl``; the ``llm`` files carry the
labels of the simulated LLM teacher (15% confusable mistakes, concentrated on ambiguous queries),
and ``banking77_stream_{gold,llm}.jsonl`` is train then test, shuffled, for ``tracer-wrap
simulate``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from tracer_wrap.lab.datasets import banking77_ambiguity, load_banking77
from tracer_wrap.lab.simulated_llm import SimulatedLLM, load_banking77_neighbours

OUT = Path(__file__).resolve().parent / "out"


def main() -> None:
    OUT.mkdir(exist_ok=True)
    llm = SimulatedLLM(load_banking77_neighbours(), error_rate=0.15,
                       ambiguity=banking77_ambiguity())
    for teacher in ("gold", "llm"):
        streams = []
        for split in ("train", "test"):
            rows = [(text, gold if teacher == "gold" else llm.label_for(text, gold))
                    for text, gold in load_banking77(split)]
            _write(OUT / f"banking77_{split}_{teacher}.jsonl", rows)
            streams.extend(rows)
        random.Random(0).shuffle(streams)
        _write(OUT / f"banking77_stream_{teacher}.jsonl", streams)


def _write(path: Path, rows: list[tuple[str, str]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for text, label in rows:
            f.write(json.dumps({"input": text, "teacher": label}) + "\n")


if __name__ == "__main__":
    main()
