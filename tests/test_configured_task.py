"""Options not given to @traced_classifier come from the environment, then tracer_wrap.toml."""

from __future__ import annotations

import pytest

from tracer_wrap import ConfigError, traced_classifier


def test_environment_and_file_fill_what_the_code_does_not_say(tmp_path, monkeypatch, embedder):
    (tmp_path / "tracer_wrap.toml").write_text(
        'min_traces = 321\n[tasks."t"]\ntarget = 0.97\ndelta = 0.1\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRACER_WRAP_DELTA", "0.02")

    @traced_classifier(task="t", store=str(tmp_path / "s"), embedder=embedder, min_traces=50)
    def classify(text):
        return "a"

    task = classify.task
    assert task.target == 0.97  # the task's table in the file
    assert task.delta == 0.02  # the environment beats the file
    assert task.min_traces == 50  # the argument beats both


def test_a_bad_value_in_the_file_names_the_file(tmp_path, monkeypatch):
    (tmp_path / "tracer_wrap.toml").write_text("target = 7\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="tracer_wrap.toml"):
        traced_classifier(task="t", store=str(tmp_path / "s"))(lambda text: "a")
