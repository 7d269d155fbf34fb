"""Banking77, shipped with the package for the offline demo, tests and benchmarks.

Banking77 (Casanueva et al. 2020, "Efficient Intent Detection with Dual Sentence Encoders"),
from PolyAI-LDN/task-specific-datasets, licensed CC BY 4.0: 13,083 online-banking queries
labelled with one of 77 intents.
"""

from __future__ import annotations

import csv
import gzip
import io
from importlib import resources
from typing import Literal

__all__ = ["banking77_ambiguity", "load_banking77"]


def load_banking77(split: Literal["train", "test", "all"] = "all") -> list[tuple[str, str]]:
    """``(text, intent)`` pairs of the ``train`` (10,003), ``test`` (3,080) or both splits."""
    return [(row["text"], row["category"]) for row in _rows()
            if split == "all" or row["split"] == split]


def banking77_ambiguity() -> dict[str, float]:
    """Per query, 1 - P(its intent) under a cross-validated classifier (0 = clear-cut).

    Made by ``benchmarks/make_ambiguity.py``; the simulated LLM teacher uses it to make its
    mistakes on ambiguous queries, as a real LLM does.
    """
    return {row["text"]: float(row["ambiguity"]) for row in _rows()}


def _rows() -> list[dict[str, str]]:
    raw = resources.files("tracer_wrap.lab").joinpath("data", "banking77.csv.gz").read_bytes()
    with io.TextIOWrapper(gzip.GzipFile(fileobj=io.BytesIO(raw)), encoding="utf-8") as f:
        return list(csv.DictReader(f))
