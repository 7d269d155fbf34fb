"""tracer-wrap bench: its arguments are checked before anything is embedded or fitted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tracer_wrap import ConfigError
from tracer_wrap.lab.bench import bench, bench_command


def traces(tmp_path: Path) -> Path:
    path = tmp_path / "traces.jsonl"
    path.write_text("".join(json.dumps({"input": f"text {i}", "teacher": f"l{i % 2}"}) + "\n"
                            for i in range(20)))
    return path


@pytest.mark.parametrize(("targets", "message"), [
    ("", "at least one target"), (" , ", "at least one target"), ("0.9,1.5", "in (0, 1]"),
    ("0", "in (0, 1]"), ("x", "must be numbers")])
def test_bench_refuses_targets_it_cannot_measure(tmp_path: Path, targets: str,
                                                 message: str) -> None:
    # An empty --targets ran the whole benchmark and printed an empty table, exit 0.
    app = typer.Typer()
    app.command()(bench_command)
    path = traces(tmp_path)
    res = CliRunner().invoke(app, ["--train", str(path), "--test", str(path),
                                   "--targets", targets, "--embedder", "hashing"])
    assert res.exit_code == 2 and message in res.output, res.output


def test_bench_function_refuses_no_target(tmp_path: Path) -> None:
    path = traces(tmp_path)
    with pytest.raises(ConfigError, match="targets"):
        bench(path, path, targets=[], embedder="hashing")
