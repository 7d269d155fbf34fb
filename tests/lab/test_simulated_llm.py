"""Tests of the simulated LLM teacher on the real Banking77 texts."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tracer_wrap.lab.datasets import load_banking77
from tracer_wrap.lab.simulated_llm import SimulatedLLM, load_banking77_neighbours


@pytest.fixture(scope="module")
def neighbours() -> dict[str, list[str]]:
    return load_banking77_neighbours()


@pytest.fixture(scope="module")
def rows() -> list[tuple[str, str]]:
    return load_banking77("train")


def test_packaged_neighbours_cover_all_intents(neighbours: dict[str, list[str]]) -> None:
    cats = {intent for _, intent in load_banking77()}
    assert set(neighbours) == set(cats)
    assert len(neighbours) == 77
    for intent, ns in neighbours.items():
        assert len(ns) == 3 and len(set(ns)) == 3
        assert intent not in ns
        assert set(ns) <= set(neighbours)
    assert "change_pin" in neighbours["get_physical_card"]
    assert "supported_cards_and_currencies" in neighbours["fiat_currency_support"]


@pytest.mark.parametrize("rate", [0.1, 0.15, 0.25])
def test_error_rate_within_tolerance(neighbours: dict[str, list[str]], rows: list[tuple[str, str]],
                                     rate: float) -> None:
    llm = SimulatedLLM(neighbours, error_rate=rate, seed=0)
    texts = {t: g for t, g in rows}  # duplicates would count once per distinct text
    wrong = sum(llm.label_for(t, g) != g for t, g in texts.items())
    n = len(texts)
    sd = (rate * (1 - rate) / n) ** 0.5
    assert abs(wrong / n - rate) < 4 * sd + 1e-9


def test_errors_go_to_neighbours_weighted(neighbours: dict[str, list[str]],
                                          rows: list[tuple[str, str]]) -> None:
    llm = SimulatedLLM(neighbours, error_rate=0.5, seed=3)
    rank: Counter[int] = Counter()
    for text, gold in rows:
        label = llm.label_for(text, gold)
        if label != gold:
            assert label in neighbours[gold]
            rank[neighbours[gold].index(label)] += 1
    assert rank[0] > rank[1] > rank[2] > 0


def test_deterministic_and_seed_dependent(neighbours: dict[str, list[str]],
                                          rows: list[tuple[str, str]]) -> None:
    a = SimulatedLLM(neighbours, seed=1).labels_for(*zip(*rows[:3000]))
    b = SimulatedLLM(neighbours, seed=1).labels_for(*zip(*rows[:3000]))
    c = SimulatedLLM(neighbours, seed=2).labels_for(*zip(*rows[:3000]))
    assert a == b
    assert a != c
    # Same text and gold in another process (PYTHONHASHSEED differs) gives the same label.
    code = (
        "from tracer_wrap.lab.simulated_llm import SimulatedLLM, load_banking77_neighbours as L;"
        "import sys; llm=SimulatedLLM(L(), seed=1); print(llm.label_for(sys.argv[1], sys.argv[2]))"
    )
    root = Path(__file__).resolve().parents[2]
    for text, gold in rows[:20]:
        out = subprocess.run(
            [sys.executable, "-c", code, text, gold], capture_output=True, text=True, cwd=root,
            check=True, env={"PYTHONHASHSEED": "123", "PATH": ""},
        ).stdout.strip()
        assert out == SimulatedLLM(neighbours, seed=1).label_for(text, gold)


def test_zero_rate_and_unknown_gold(neighbours: dict[str, list[str]]) -> None:
    llm = SimulatedLLM(neighbours, error_rate=0.0)
    assert all(llm.label_for(f"text {i}", "card_arrival") == "card_arrival" for i in range(500))
    llm = SimulatedLLM(neighbours, error_rate=1.0)
    assert llm.label_for("anything", "not_an_intent") == "not_an_intent"
    assert llm.label_for("anything", "card_arrival") in neighbours["card_arrival"]
    with pytest.raises(ValueError):
        SimulatedLLM(neighbours, error_rate=1.5)


def test_ambiguity_concentrates_errors(neighbours: dict[str, list[str]],
                                       rows: list[tuple[str, str]]) -> None:
    texts = {t: g for t, g in rows}
    # Arbitrary but fixed ambiguity: long texts are "ambiguous".
    amb = {t: float(len(t) > 80) for t in texts}
    llm = SimulatedLLM(neighbours, error_rate=0.15, seed=0, ambiguity=amb)
    wrong = {t for t, g in texts.items() if llm.label_for(t, g) != g}
    n = len(texts)
    assert abs(len(wrong) / n - 0.15) < 4 * (0.15 * 0.85 / n) ** 0.5
    assert all(amb[t] > 0 for t in wrong)
    assert llm.error_probability("never seen") == 0.15
