"""A store's location as people see it: no Redis password in messages, status or reports."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tracer_wrap.ops.cli import app

pytest.importorskip("redis")

from tracer_wrap.store.redis_store import RedisStore, display_url  # noqa: E402


@pytest.mark.parametrize("url, shown", [
    ("redis://:hunter2@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
    ("redis://user:hunter2@host/1", "redis://user:***@host/1"),
    ("rediss://u:hunter2@[::1]:6380/2?ssl_cert_reqs=none",
     "rediss://u:***@[::1]:6380/2?ssl_cert_reqs=none"),
    ("unix://:hunter2@/tmp/r.sock?db=3", "unix://:***@/tmp/r.sock?db=3"),
    ("redis://host/0?password=hunter2&db=1", "redis://host/0?password=***&db=1"),
    ("redis://hunter2@host/0", "redis://***@host/0"),
    ("redis://host:6379/0", "redis://host:6379/0"),
])
def test_display_url_hides_the_password(url: str, shown: str) -> None:
    assert display_url(url) == shown
    assert RedisStore(url).path == shown


@pytest.mark.parametrize("url", ["redis://:hunter2@127.0.0.1:1/0",
                                 "redis://:hunter2@127.0.0.1:notaport/0"])
def test_cli_errors_about_a_redis_store_show_no_password(url: str) -> None:
    result = CliRunner().invoke(app, ["--store", url, "status"], catch_exceptions=False)
    assert result.exit_code == 1
    assert "hunter2" not in result.output and "redis://:***@127.0.0.1" in result.stderr
    assert len(result.stderr.splitlines()) == 1
