"""Shared pieces of the wrapper tests: a teacher over the synthetic task, and a quick router.

The synthetic task (tests/_synthetic.py) has four clearly separable labels; the hashing embedder
needs no model, so a router is fitted on a few hundred traces in well under a second.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
#: The checkout under test (a subprocess must import this copy of tracer_wrap, not another).
REPO = ROOT.parent

from _synthetic import LABELS, fill_store, make_traces  # noqa: E402
from llm_server import LLMServer, serve_llm  # noqa: E402

from tracer_wrap.store import TraceStore  # noqa: E402

__all__ = ["INSTRUCTIONS", "LABELS", "LLMServer", "REPO", "SYSTEM", "TASK_OPTIONS", "ask",
           "easy_texts", "fitted", "serve_llm", "teacher"]

#: Options that let a task fit a router from a few hundred traces and never refit on its own.
TASK_OPTIONS = {"min_traces": 20, "refit_every": None, "audit_rate": 0.0}


#: The system prompt of the chat calls the tests make, and its message.
INSTRUCTIONS = "Classify the banking request. Answer with the label only."
SYSTEM = {"role": "system", "content": INSTRUCTIONS}


def ask(text: str) -> list[dict[str, str]]:
    """The chat messages classifying ``text``."""
    return [SYSTEM, {"role": "user", "content": text}]


def teacher(text: str) -> str:
    """The label whose keywords appear first in ``text`` (what the synthetic task was built on)."""
    lowered = text.lower()
    hits = [(lowered.find(word), label) for label, words in LABELS.items() for word in words
            if word in lowered]
    return min(hits)[1] if hits else "refund"


def easy_texts(n: int = 40, seed: int = 7) -> list[str]:
    """Fresh single-label inputs (not in the store) that a fitted router answers confidently."""
    names = sorted(LABELS)
    return [f"hello {LABELS[names[i % 4]][i % 4]}"
            f" please {LABELS[names[i % 4]][(i + 1) % 4]} #{seed}-{i}"
            for i in range(n)]


def fitted(store: TraceStore, tasks, name: str, n: int = 800) -> None:
    """Fill ``store`` with synthetic traces of task ``name`` and fit its router via ``tasks``."""
    fill_store(store, name, n=n)
    tasks.task(name).refit()


__all__ += ["make_traces"]
