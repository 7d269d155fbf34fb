"""The README's snippets run as written: each Python block in a fresh interpreter against the local
LLM server (pointed to by the SDKs' own environment variables), and its configuration example
parses."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from llm_server import serve_llm

from tracer_wrap.options import TaskOptions

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def teacher(text: str) -> str:
    return "positive" if "love" in text.lower() else "card_arrival"


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_snippet_runs_as_written(index: int, tmp_path: Path) -> None:
    code = blocks("python")[index]
    with serve_llm(teacher) as server:
        env = {**os.environ, "OPENAI_BASE_URL": server.base_url_openai,
               "OPENAI_API_KEY": "test", "ANTHROPIC_BASE_URL": server.base_url_anthropic,
               "ANTHROPIC_API_KEY": "test", "TRACER_WRAP_STORE": str(tmp_path / "store"),
               "TRACER_WRAP_EMBEDDER": "hashing", "HF_HUB_OFFLINE": "1"}
        done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert server.total_calls >= 1  # the snippet really talked to the (local) LLM


def test_configuration_example_is_valid(tmp_path: Path) -> None:
    (toml,) = blocks("toml")
    (tmp_path / "tracer_wrap.toml").write_text(toml, encoding="utf-8")
    options = TaskOptions.resolve("support-intent", environ={}, cwd=tmp_path)
    assert options.target == 0.98 and options.store == "/var/lib/tracer_wrap"
    assert options.price is not None and options.price.per_call == 0.0004
    assert options.redact is not None


def test_the_options_section_names_every_option() -> None:
    from tracer_wrap.options import _SPECS

    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Options"):text.index("\n## ", text.index("## Options") + 1)]
    named = set(re.findall(r"`([a-z_]+)`", section))
    assert set(_SPECS) - named == set()


def test_every_environment_form_the_options_section_shows_is_read(tmp_path: Path) -> None:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Options"):text.index("\n## ", text.index("## Options") + 1)]
    shown = dict(re.findall(r"`(TRACER_WRAP_[A-Z_]+)=([^`]+)`", section))
    assert {"TRACER_WRAP_TARGET", "TRACER_WRAP_PRICE", "TRACER_WRAP_EMBEDDER"} <= set(shown)
    for var, value in shown.items():
        options = TaskOptions.resolve("t", environ={var: value}, cwd=tmp_path)
        assert options.sources.get(var.removeprefix("TRACER_WRAP_").lower()) == f"${var}"
