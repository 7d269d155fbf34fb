"""A small synthetic classification task for the CLI, report and sidecar tests (no model needed).

Each label owns a few keywords; most inputs use one label's words (easy), some mix two labels
(hard: the router should defer those). Texts are unique and deterministic for a seed.
"""

from __future__ import annotations

import random

from tracer_wrap.store import Origin, TraceStore

LABELS = {
    "card_lost": ["lost card", "stolen card", "missing card", "card disappeared"],
    "refund": ["refund", "money back", "return payment", "reimburse"],
    "top_up": ["top up", "add money", "load funds", "top-up failed"],
    "exchange_rate": ["exchange rate", "currency conversion", "fx fee", "foreign rate"],
}
FILLERS = ["please help", "I need to know", "hello", "urgent", "quick question", "today",
           "on my account", "via the app", "as soon as possible", "thanks"]


def make_traces(n: int = 800, *, seed: int = 0, hard_share: float = 0.06) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    names = sorted(LABELS)
    rows = []
    for i in range(n):
        label = names[i % len(names)]
        words = [rng.choice(LABELS[label]), rng.choice(LABELS[label])]
        if rng.random() < hard_share:
            other = rng.choice([x for x in names if x != label])
            words[1] = rng.choice(LABELS[other])
        text = f"{rng.choice(FILLERS)} {words[0]} {rng.choice(FILLERS)} {words[1]} #{i}"
        rows.append((text, label))
    return rows


def fill_store(store: TraceStore, task: str = "intent", n: int = 800, *, seed: int = 0) -> None:
    for text, label in make_traces(n, seed=seed):
        store.append(task, text, label, origin=Origin.LLM)
