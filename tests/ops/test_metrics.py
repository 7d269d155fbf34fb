"""The task counters as Prometheus text: the exposition format, and the sidecar's ``GET /metrics``
over real HTTP (the same figures as ``read_summary``, behind the same bearer token)."""

from __future__ import annotations

import re

import httpx
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from _http import serving  # noqa: E402
from _synthetic import fill_store  # noqa: E402

from tracer_wrap.accounting import read_summary  # noqa: E402
from tracer_wrap.engine import TracedTask  # noqa: E402
from tracer_wrap.model.hashing import hashing_embedder  # noqa: E402
from tracer_wrap.ops.metrics import CONTENT_TYPE, COUNTERS, render  # noqa: E402
from tracer_wrap.ops.server import create_app  # noqa: E402
from tracer_wrap.store import TraceStore  # noqa: E402

SAMPLE = re.compile(r'^(tracer_wrap_[a-z_]+)\{task="((?:[^"\\]|\\.)*)"\} (\S+)$')


def parse(text: str) -> dict[tuple[str, str], float]:
    """Samples of Prometheus text by (metric, task); checks every line is HELP, TYPE or a sample
    of the metric its TYPE line announced."""
    samples: dict[tuple[str, str], float] = {}
    announced = ""
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, announced, kind = line.split(" ")
            assert kind == ("counter" if announced.endswith("_total") else "gauge")
            continue
        match = SAMPLE.match(line)
        assert match is not None and match.group(1) == announced, line
        samples[match.group(1), match.group(2)] = float(match.group(3))
    return samples


def test_render_exposes_every_counter_of_every_task(store: TraceStore) -> None:
    for task in ("intent", 'odd "name"\\'):
        store.append(task, "hello", "greeting")  # a task of the store: it has traces
    store.add_counters("intent", {"calls": 10, "local": 7, "llm": 3, "input_tokens": 120,
                                  "usage_calls": 3})
    store.add_counters('odd "name"\\', {"calls": 1, "llm": 1})
    store.set_setting("intent", "price", {"per_call": 0.5})
    text = render(store)
    assert text.endswith("\n")
    samples = parse(text)
    for field, _ in COUNTERS:
        assert f"# HELP tracer_wrap_{field}_total " in text
        assert samples[f"tracer_wrap_{field}_total", "intent"] == \
            read_summary(store, "intent")[field]
    assert samples["tracer_wrap_local_total", "intent"] == 7
    assert samples["tracer_wrap_calls_total", 'odd \\"name\\"\\\\'] == 1
    assert samples["tracer_wrap_local_share", "intent"] == 0.7
    assert samples["tracer_wrap_saved", "intent"] == 3.5  # 7 local answers at 0.5 a call
    assert ("tracer_wrap_saved", 'odd \\"name\\"\\\\') not in samples  # no price, no money


def test_the_sidecar_serves_metrics_behind_its_token(tmp_path) -> None:
    store = TraceStore(tmp_path / "store")
    fill_store(store, "intent", 800)
    TracedTask("intent", store=store, embedder=hashing_embedder(), min_traces=50,
               refit_every=None).refit()
    app = create_app(store, token="s3cret", embedder="hashing")
    with serving(app) as url:
        assert httpx.get(f"{url}/metrics").status_code == 401
        headers = {"Authorization": "Bearer s3cret"}
        for _ in range(3):
            routed = httpx.post(f"{url}/v1/tasks/intent/route", headers=headers,
                                json={"text": "hello lost card please stolen card #m"})
            assert routed.status_code == 200
        response = httpx.get(f"{url}/metrics", headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE
    samples = parse(response.text)
    summary = read_summary(store, "intent")
    assert samples["tracer_wrap_calls_total", "intent"] == summary["calls"] == 3
    assert samples["tracer_wrap_local_total", "intent"] == summary["local"]
