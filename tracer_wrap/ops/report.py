"""A self-contained HTML report on one task: what the router answers, how well, and what it saves.

:func:`render_report` returns one HTML document with inline CSS and inline SVG plots; it loads
nothing from the network (its Content-Security-Policy forbids it) and opens offline in any
browser. Every string that comes from traces or task names is HTML-escaped; a label longer
than 60 characters is clipped in the tables, whole in its tooltip, and every table cell wraps
so that no long text pushes the other columns out of view.

What the figures are measured on:

* the **frontier** and the **learning curve** come from the versions' manifests: coverage and
  agreement on each fit's calibration part, which that fit never trained on;
* **per-label figures, confusable pairs and examples** route *every* stored valid trace of the
  task through the current router, including the traces it was trained on, so they are
  optimistic compared with new traffic;
* **live agreement** uses audit samples only (calls the router could have answered that were sent
  to the LLM anyway): the unbiased measure of agreement on live traffic.
"""

from __future__ import annotations

import html
import math
import random
import time
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..model.embedder import Embedder
from ..refit import trace_vectors
from ..store import Origin, Store, Trace
from ..versions import certified_coverage, load_version
from .status import task_status

__all__ = ["render_report"]

_PALETTE = ["#2563eb", "#16a34a", "#dc2626", "#9333ea", "#ea580c"]
#: Width of one character of an 11px chart note, generously (for placing labels).
_TEXT_PX = 7.0


def render_report(store: Store, task: str, *, embedder: Embedder | None = None,
                  examples: int = 12, seed: int = 0) -> str:
    """The HTML report of ``task`` as a string.

    ``embedder`` must be the one the current router was fitted with (default: the embedder named
    in its manifest, see :func:`tracer_wrap.model.embedder.make_embedder`). A current version
    the engine refuses (a damaged or edited file) is shown as refused, with why, and nothing is
    routed through it. Raises ConfigError when the task has no traces.
    """
    traces = store.traces(task)
    if not traces:
        raise ConfigError(f"task {task!r} has no traces in {str(store.path)!r}")
    valid = [t for t in traces if t.valid]
    version = store.current_version(task)
    manifest = store.manifest(task, version) if version is not None else None
    # The diagnostic of a store whose served file is damaged must still render: such a version
    # answers nothing (the engine refuses it too), so it is named as refused and not routed.
    status = task_status(store, task)
    refused = status["refused"]
    routed = None
    if manifest is not None and version is not None and valid and refused is None:
        routed = _route_all(store, task, version, manifest, valid, embedder)
    target = float(manifest["target"]) if manifest else None
    # Why nothing is routed through the current router, said the same in every section.
    unrouted = (f"Version {version} is refused: {refused}. Nothing is routed through it."
                if refused else "Needs a fitted router.")

    audits = sorted((t for t in traces if t.origin == Origin.AUDIT.value and t.valid
                     and t.router_label is not None), key=lambda t: t.ts)
    usage = status["usage"]
    live = status["live_agreement"]

    cards = [
        ("traces", f"{len(traces):,}",
         f"{len(valid):,} valid · {len(traces) - len(valid):,} invalid"),
        ("router", "none" if version is None else f"v{version}"
         + (" refused" if refused else ""),
         "every call goes to the LLM" if version is None
         else f"every call goes to the LLM: {refused}" if refused else f"target {target:.4g}"),
        ("certified coverage", _pct(certified_coverage(manifest, target)
                                    if manifest and target is not None and not refused
                                    else None),
         "on calibration traces"),
        ("answered locally", f"{usage['local']:,}",
         f"of {usage['calls']:,} calls · {usage['llm']:,} LLM answers"),
        ("live agreement", _pct(live), f"{len(audits)} audit samples"),
        ("saved", _money(usage["saved"]), _savings_note(usage)),
    ]
    sections = [
        _section("Coverage / target frontier",
                 _frontier(manifest, status["frontier"], version, refused),
                 "Share of calibration traces the router may answer at each target agreement, "
                 "with the agreement measured there and what that coverage would save per "
                 "1,000 calls at the task's price. Each certificate holds with probability "
                 f"≥ 1 − δ (δ = {manifest.get('delta', 0.05) if manifest else 0.05}) under "
                 "exchangeability; a refused target answers nothing locally."),
        _section("Version history", _history(store, task, version, refused),
                 "Every kept router version: when it was fitted, on how many traces, and the "
                 "coverage its gate certified at the target it served."),
        _section("Learning curve", _learning_curve(store, task, target),
                 "Certified coverage at the served target of every kept router version."),
        _section("Live agreement over time", _live_agreement(audits, target),
                 "Share of audit samples where the router's label equals the LLM's, in "
                 "consecutive groups of samples. Audit samples are drawn at random from calls "
                 "the router would have answered."),
        _section("Coverage and agreement per label", _per_label(routed, unrouted),
                 _routed_caveat(routed, version)),
        _section("Where the surrogate defers most", _confusable(routed, unrouted),
                 "For inputs the router defers, the two labels its surrogate finds most likely: "
                 "these pairs are the ones the LLM is still needed for. "
                 + _routed_caveat(routed, version)),
        _section("Examples", _examples(routed, examples, seed, unrouted),
                 "Random inputs the current router answers locally and inputs it defers."),
        _section("Cost", _cost(usage), ""),
    ]
    generated = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime())
    card_html = "".join(
        f'<div class="card"><div class="k">{_e(k)}</div><div class="v">{_e(v)}</div>'
        f'<div class="s">{_e(s)}</div></div>' for k, v, s in cards)
    return _PAGE.format(
        title=_e(f"tracer_wrap report: {task}"), task=_e(task), store=_e(str(store.path)),
        generated=_e(generated),
        embedder=_e(str(manifest.get("embedder", "?")) if manifest else "—"),
        cards=card_html, sections="".join(sections),
    )


# -- routing every trace through the current router ------------------------------------------


class _Routed:
    """Each valid trace with the current router's label, decision, score and top-two labels."""

    def __init__(self, traces: list[Trace], labels: list[str], local: np.ndarray,
                 scores: np.ndarray, top2: np.ndarray, names: Sequence[str]) -> None:
        self.traces, self.labels, self.local, self.scores = traces, labels, local, scores
        self.top2, self.names = top2, list(names)


def _route_all(store: Store, task: str, version: int, manifest: dict[str, Any],
               traces: list[Trace], embedder: Embedder | None) -> _Routed:
    router = load_version(store, task, version)
    if embedder is None:
        from ..model.embedder import make_embedder

        embedder = make_embedder(manifest.get("embedder"))
    vectors = trace_vectors(store, task, traces, embedder.name, embedder.embed)
    if vectors.shape[1] != router.dim:
        raise ConfigError(f"embedder {embedder.name!r} gives {vectors.shape[1]} dimensions; "
                          f"version {version} of {task!r} expects {router.dim} "
                          f"(fitted with {manifest.get('embedder')!r})")
    texts = [t.input for t in traces]
    decisions = router.route_many(texts, vectors)
    logits = router.logits(texts, vectors)
    top2 = np.argsort(-logits, axis=1)[:, :2]
    return _Routed(traces, [d.label or "" for d in decisions],
                   np.array([d.local for d in decisions], dtype=bool),
                   np.array([d.score for d in decisions]), top2, router.labels)


def _routed_caveat(routed: _Routed | None, version: int | None) -> str:
    if routed is None:
        return ""
    return (f"Measured by routing all {len(routed.traces):,} stored valid traces through version "
            f"{version}, including those it was trained and calibrated on: optimistic for new "
            "traffic.")


# -- sections ----------------------------------------------------------------------------------


def _frontier(manifest: dict[str, Any] | None, money: list[dict[str, Any]],
              version: int | None = None, refused: str | None = None) -> str:
    if not manifest or not manifest.get("certificates"):
        return _empty("No router has been fitted yet.")
    if refused:
        # Its certificates come from a manifest whose router is refused: none of them holds for
        # what is served (nothing), so none is drawn.
        return _empty(f"Version {version} is refused: {refused}. It answers nothing locally;"
                      " its certificates are not shown.")
    certs = sorted(manifest["certificates"], key=lambda c: c["target"])
    coverage = [(c["target"], c["coverage"] if c["threshold"] is not None else 0.0) for c in certs]
    agreement = [(c["target"], c["agreement"]) for c in certs
                 if c["threshold"] is not None and c["agreement"] is not None]
    chart = _line_chart(
        [("certified coverage", coverage), ("agreement on accepted (calibration)", agreement)],
        x_label="target agreement", y_label="share of calibration traces", vline=manifest["target"],
        vline_label="served", x_fmt=_TARGET_FMT, diagonal=True)
    saved = {row["target"]: row["saved_per_1000_calls"] for row in money}
    rows = "".join(
        f"<tr><td>{_target(c['target'])}</td><td>{_threshold(c['threshold'])}</td>"
        f"<td>{_pct(c['coverage'])}</td><td>{_pct(c['agreement'])}</td><td>{c['n_accepted']}</td>"
        f"<td class='num'>{_e(_money(saved.get(c['target'])))}</td>"
        f"<td class='note'>{_e(c.get('reason') or '')}</td></tr>" for c in certs)
    return (chart + "<table><thead><tr><th>target</th><th>threshold</th><th>coverage</th>"
            "<th>agreement</th><th>accepted</th><th>saved / 1,000 calls</th><th>note</th>"
            "</tr></thead><tbody>" + rows + "</tbody></table>")


def _history(store: Store, task: str, current: int | None, refused: str | None = None) -> str:
    versions = store.versions(task)
    if not versions:
        return _empty("No router versions yet.")
    rows = []
    for m in reversed(versions):
        target = float(m.get("target", 0.95))
        coverage = certified_coverage(m, target)
        fitted = time.strftime("%Y-%m-%d %H:%M", time.localtime(m["saved_at"])) \
            if m.get("saved_at") else "—"
        rows.append(
            f"<tr><td>v{m['version']}{_served_mark(m['version'], current, refused)}</td>"
            f"<td>{_e(fitted)}</td><td class='num'>{m.get('n_traces', '—')}</td>"
            f"<td class='num'>{m.get('n_calibration', '—')}</td><td>{_target(target)}</td>"
            f"<td>{_pct(coverage) if coverage else 'nothing certified'}</td>"
            f"<td>{_e(str(m.get('embedder', '—')))}</td></tr>")
    return ("<table><thead><tr><th>version</th><th>fitted</th><th>traces</th>"
            "<th>calibration</th><th>target</th><th>certified coverage</th><th>embedder</th>"
            "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _learning_curve(store: Store, task: str, target: float | None) -> str:
    versions = store.versions(task)
    if not versions or target is None:
        return _empty("No router versions yet.")
    points = [(m["version"], certified_coverage(m, target)) for m in versions]
    chart = _line_chart([(f"coverage at target {target:.2f}", points)], x_label="router version",
                        y_label="certified coverage", x_fmt="v{:.0f}", integer_x=True,
                        annotations={m["version"]: f"{m.get('n_traces', '?')} traces"
                                     for m in versions})
    return chart


def _live_agreement(audits: list[Trace], target: float | None) -> str:
    if not audits:
        return _empty("No audit samples yet: they accumulate while the router serves traffic "
                      "(audit_rate of the calls it would answer).")
    groups = min(12, max(1, len(audits) // 20))
    bounds = np.linspace(0, len(audits), groups + 1).astype(int)
    points: list[tuple[float, float]] = []
    ticks: dict[float, str] = {}
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        chunk = audits[a:b]
        points.append((i + 1, sum(t.router_label == t.teacher for t in chunk) / len(chunk)))
        ticks[i + 1] = time.strftime("%m-%d %H:%M", time.localtime(chunk[-1].ts))
    chart = _line_chart([("live agreement", points)], x_label="audit samples, oldest to newest "
                        f"({len(audits)} in {groups} groups)", y_label="agreement",
                        hline=target, hline_label="target", integer_x=True, x_tick_labels=ticks,
                        y_min=min(0.5, min(p[1] for p in points)))
    return chart


def _per_label(routed: _Routed | None, unrouted: str = "Needs a fitted router.") -> str:
    if routed is None:
        return _empty(unrouted)
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, t in enumerate(routed.traces):
        by_label[t.teacher].append(i)
    rows = []
    for label, idx in by_label.items():
        ix = np.array(idx)
        handled = routed.local[ix]
        agree = np.array([routed.labels[i] == routed.traces[i].teacher for i in idx])
        cov = float(handled.mean())
        agr = float(agree[handled].mean()) if handled.any() else None
        rows.append((cov, label, len(idx), agr, float(agree.mean())))
    rows.sort(key=lambda r: (r[0], r[1]))
    body = "".join(
        f"<tr><td>{_label(label)}</td><td class='num'>{n}</td><td>{_bar(cov)}</td>"
        f"<td>{_bar(agr, warn_below=0.9)}</td><td class='num'>{_pct(overall)}</td></tr>"
        for cov, label, n, agr, overall in rows)
    return ("<div class='scroll'><table><thead><tr><th>teacher label</th><th>traces</th>"
            "<th>coverage (answered locally)</th><th>agreement on answered</th>"
            "<th>surrogate agreement, all</th></tr></thead><tbody>" + body
            + "</tbody></table></div>")


def _confusable(routed: _Routed | None, unrouted: str = "Needs a fitted router.",
                top: int = 15) -> str:
    if routed is None:
        return _empty(unrouted)
    deferred = np.flatnonzero(~routed.local)
    if not len(deferred):
        return _empty("The router answers every stored trace locally.")
    pairs: Counter[tuple[str, str]] = Counter()
    for i in deferred:
        a, b = sorted(routed.names[j] for j in routed.top2[i])
        pairs[(a, b)] += 1
    rows = "".join(
        f"<tr><td>{_label(a)}</td><td>{_label(b)}</td><td class='num'>{n}</td>"
        f"<td>{_bar(n / len(deferred))}</td></tr>" for (a, b), n in pairs.most_common(top))
    return ("<table><thead><tr><th>label</th><th>confused with</th><th>deferred inputs</th>"
            f"<th>share of the {len(deferred):,} deferred</th></tr></thead><tbody>{rows}"
            "</tbody></table>")


def _examples(routed: _Routed | None, n: int, seed: int,
              unrouted: str = "Needs a fitted router.") -> str:
    if routed is None:
        return _empty(unrouted)
    rng = random.Random(seed)
    out = []
    for title, mask in (("Answered locally", routed.local), ("Deferred to the LLM", ~routed.local)):
        idx = list(np.flatnonzero(mask))
        pick = sorted(rng.sample(idx, min(n, len(idx))))
        rows = "".join(
            f"<tr><td class='text'>{_e(_clip(routed.traces[i].input))}</td>"
            f"<td>{_label(routed.labels[i])}</td><td class='num'>{routed.scores[i]:.3f}</td>"
            f"<td>{_label(routed.traces[i].teacher)}"
            f"{'' if routed.labels[i] == routed.traces[i].teacher else ' <span class=bad>≠</span>'}"
            "</td></tr>" for i in pick)
        # A fixed layout: long labels wrap inside their columns instead of squeezing the input.
        table = ("<table class='examples'><colgroup><col class='input'><col class='label'>"
                 "<col class='score'><col class='label'></colgroup>"
                 "<thead><tr><th>input</th><th>surrogate</th>"
                 "<th>score</th><th>LLM (teacher)</th></tr></thead><tbody>" + rows
                 + "</tbody></table>") if pick else _empty("none")
        out.append(f"<h3>{_e(title)} ({len(idx):,})</h3>{table}")
    return "".join(out)


def _savings_note(usage: dict[str, Any]) -> str:
    if usage["price"] is None:
        return "no price set: tracer-wrap price TASK --per-call ..."
    return f"{usage['llm_calls_avoided']:,} LLM calls avoided"


def _cost(usage: dict[str, Any]) -> str:
    local, llm, calls = usage["local"], usage["llm"], usage["calls"]
    lines = [f"Calls: {calls:,}; answered locally {local:,} "
             f"({_pct(usage['local_share'])} of those answered), LLM answers {llm:,} "
             f"({usage['audits']:,} audit samples, {usage['invalid']:,} invalid)."]
    if usage["usage_calls"]:
        lines.append(f"Tokens reported by the provider on {usage['usage_calls']:,} LLM calls: "
                     f"{usage['input_tokens']:,} input, {usage['output_tokens']:,} output.")
    if usage["price"] is None:
        lines.append("Set the task's price (<code>tracer-wrap price TASK --per-call ...</code>, "
                     "or the <code>price</code> option) to see the money saved.")
    else:
        lines.append(f"Cost of one LLM call: {_e(_money(usage['cost_per_llm_call']))}. "
                     f"LLM spend: {_e(_money(usage['llm_cost']))}. Saved so far: "
                     f"<strong>{_e(_money(usage['saved']))}</strong> (LLM cost without "
                     f"tracer_wrap {_e(_money(usage['cost_without_tracer_wrap']))}).")
    return "<p>" + "</p><p>".join(lines) + "</p>"


# -- SVG plots ---------------------------------------------------------------------------------


def _line_chart(series: list[tuple[str, list[tuple[float, float]]]], *, x_label: str,
                y_label: str, y_min: float = 0.0, y_max: float = 1.0, x_fmt: str = "{:g}",
                integer_x: bool = False, vline: float | None = None, vline_label: str = "",
                hline: float | None = None, hline_label: str = "", diagonal: bool = False,
                x_tick_labels: dict[float, str] | None = None,
                annotations: dict[float, str] | None = None) -> str:
    """An inline SVG line chart; y is a share shown in percent."""
    width, height, left, right, top, bottom = 640, 300, 56, 16, 16, 56
    xs = [x for _, pts in series for x, _ in pts]
    if not xs:
        return _empty("no data")
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    pad = (x1 - x0) * 0.04
    x0, x1 = x0 - pad, x1 + pad
    y_min = max(0.0, math.floor(y_min * 10) / 10)
    pw, ph = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return top + (1 - (y - y_min) / (y_max - y_min)) * ph

    parts = [f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" '
             f'xmlns="http://www.w3.org/2000/svg" aria-label="{_e(y_label)} by {_e(x_label)}">']
    for k in range(6):
        y = y_min + (y_max - y_min) * k / 5
        parts.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{py(y):.1f}" '
                     f'y2="{py(y):.1f}"/><text class="tick" x="{left - 6}" y="{py(y) + 4:.1f}" '
                     f'text-anchor="end">{100 * y:.0f}%</text>')
    tick_xs = sorted(set(xs))
    most = 6 if x_tick_labels else 12  # date labels are wide
    if len(tick_xs) > most:
        step = math.ceil(len(tick_xs) / most)
        tick_xs = tick_xs[::step]
    for x in tick_xs:
        label = (x_tick_labels or {}).get(x, x_fmt.format(x))
        parts.append(f'<text class="tick" x="{px(x):.1f}" y="{height - bottom + 16}" '
                     f'text-anchor="middle">{_e(label)}</text>')
    parts.append(f'<text class="axis" x="{left + pw / 2:.1f}" y="{height - 8}" '
                 f'text-anchor="middle">{_e(x_label)}</text>')
    parts.append(f'<text class="axis" transform="translate(14 {top + ph / 2:.1f}) rotate(-90)" '
                 f'text-anchor="middle">{_e(y_label)}</text>')
    parts.append(f'<rect class="frame" x="{left}" y="{top}" width="{pw}" height="{ph}"/>')
    if diagonal:
        a, b = max(x0, y_min), min(x1, y_max)
        if b > a:
            parts.append(f'<line class="ref" x1="{px(a):.1f}" y1="{py(a):.1f}" x2="{px(b):.1f}" '
                         f'y2="{py(b):.1f}"><title>agreement = target</title></line>')
    if vline is not None and x0 <= vline <= x1:
        # Right of the line, unless the label would run past the plot's right edge (a served
        # target at the top of the frontier): then left of it, ending at the line.
        right_side = px(vline) + 4 + _TEXT_PX * len(vline_label) <= left + pw
        anchor = (f'x="{px(vline) + 4:.1f}" text-anchor="start"' if right_side
                  else f'x="{px(vline) - 4:.1f}" text-anchor="end"')
        parts.append(f'<line class="ref" x1="{px(vline):.1f}" x2="{px(vline):.1f}" y1="{top}" '
                     f'y2="{top + ph}"/><text class="note vline" {anchor} '
                     f'y="{top + 12}">{_e(vline_label)}</text>')
    if hline is not None and y_min <= hline <= y_max:
        parts.append(f'<line class="ref" x1="{left}" x2="{left + pw}" y1="{py(hline):.1f}" '
                     f'y2="{py(hline):.1f}"/><text class="note" x="{left + 4}" '
                     f'y="{py(hline) - 4:.1f}">{_e(hline_label)} {100 * hline:.0f}%</text>')
    for n, (name, pts) in enumerate(series):
        color = _PALETTE[n % len(_PALETTE)]
        pts = sorted(pts)
        if len(pts) > 1:
            path = " ".join(f"{px(x):.1f},{py(min(max(y, y_min), y_max)):.1f}" for x, y in pts)
            parts.append(f'<polyline class="series" points="{path}" stroke="{color}"/>')
        for x, y in pts:
            note = (annotations or {}).get(x)
            tip = f"{name}: {x_fmt.format(x)} → {100 * y:.1f}%" + (f" ({note})" if note else "")
            parts.append(f'<circle cx="{px(x):.1f}" cy="{py(min(max(y, y_min), y_max)):.1f}" '
                         f'r="4" fill="{color}"><title>{_e(tip)}</title></circle>')
    parts.append("</svg>")
    legend = "".join(f'<span class="key"><i style="background:{_PALETTE[n % len(_PALETTE)]}">'
                     f"</i>{_e(name)}</span>" for n, (name, _) in enumerate(series))
    return f'<figure>{"".join(parts)}<figcaption>{legend}</figcaption></figure>'


# -- small helpers -----------------------------------------------------------------------------


#: How a target agreement is written, in the frontier's chart and tables alike (0.90, not 0.9).
_TARGET_FMT = "{:.2f}"


def _target(value: float) -> str:
    return _TARGET_FMT.format(value)


def _served_mark(version: int, current: int | None, refused: str | None) -> str:
    if version != current:
        return ""
    return f" (refused: {_e(refused)})" if refused else " (served)"


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _money(value: float | None) -> str:
    return "—" if value is None else f"{value:,.2f}"


def _threshold(value: float | None) -> str:
    return "refused" if value is None else f"{value:.4f}"


def _clip(text: str, n: int = 240) -> str:
    if len(text) <= n:
        return text
    cut = n - 1
    # Not between a character and the marks or joiners that belong to it.
    while cut > 1 and (unicodedata.combining(text[cut]) or text[cut] in _JOINERS):
        cut -= 1
    return text[:cut] + "…"


#: Characters that continue the character before them (zero-width joiner, variation selectors).
_JOINERS = frozenset("\u200d\ufe0e\ufe0f")

#: Labels longer than this many characters are clipped in tables; the cell's tooltip has them all.
_LABEL_CHARS = 60


def _label(text: str) -> str:
    """A label for a table cell: escaped, and clipped with the whole label as its tooltip."""
    if len(text) <= _LABEL_CHARS:
        return _e(text)
    return f"<span class='label' title=\"{_e(text)}\">{_e(_clip(text, _LABEL_CHARS))}</span>"


def _bar(value: float | None, *, warn_below: float | None = None) -> str:
    if value is None:
        return "<span class='muted'>—</span>"
    cls = "bar warn" if warn_below is not None and value < warn_below else "bar"
    return (f"<div class='{cls}'><i style='width:{100 * value:.1f}%'></i>"
            f"<span>{100 * value:.1f}%</span></div>")


def _empty(message: str) -> str:
    return f"<p class='muted'>{_e(message)}</p>"


def _section(title: str, body: str, note: str) -> str:
    note_html = f"<p class='muted'>{_e(note)}</p>" if note else ""
    return f"<section><h2>{_e(title)}</h2>{note_html}{body}</section>"


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy"
      content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<title>{title}</title>
<style>
:root {{ --fg:#1f2937; --muted:#6b7280; --line:#e5e7eb; --accent:#2563eb; --bg:#f8fafc; }}
* {{ box-sizing: border-box; }}
body {{
  margin:0; font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; color:var(--fg);
  background:var(--bg);
}}
header {{ background:#0f172a; color:#f8fafc; padding:20px 32px; }}
header h1 {{ margin:0 0 4px; font-size:22px; font-weight:600; overflow-wrap:anywhere; }}
header p {{ margin:0; color:#cbd5e1; font-size:13px; overflow-wrap:anywhere; }}
main {{ max-width:1100px; margin:0 auto; padding:24px 32px 48px; }}
.cards {{
  display:grid; grid-template-columns:repeat(auto-fit,minmax(170px,1fr)); gap:12px;
  margin-bottom:8px;
}}
.card {{ background:#fff; border:1px solid var(--line); border-radius:10px; padding:12px 16px; }}
.card .k {{ color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.04em; }}
.card .v {{ font-size:24px; font-weight:600; overflow-wrap:anywhere; }}
.card .s {{ color:var(--muted); font-size:12px; overflow-wrap:anywhere; }}
section {{
  background:#fff; border:1px solid var(--line); border-radius:10px; padding:16px 20px;
  margin-top:16px;
}}
h2 {{ margin:0 0 4px; font-size:17px; }}
h3 {{ font-size:14px; margin:16px 0 6px; }}
.muted, .note {{ color:var(--muted); font-size:12.5px; }}
table {{ border-collapse:collapse; width:100%; margin-top:8px; }}
/* Every cell wraps, anywhere if it must (a label or input without spaces), and none is wider
   than 36em, so no long text pushes the other columns out of view; headings break between
   words only. */
th, td {{
  text-align:left; padding:5px 8px; border-bottom:1px solid var(--line); vertical-align:top;
  max-width:36em; overflow-wrap:anywhere; word-break:break-word;
}}
th {{
  font-size:12px; color:var(--muted); font-weight:600; word-break:normal;
  overflow-wrap:break-word;
}}
td.num {{ text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }}
table.examples {{ table-layout:fixed; }}
table.examples col.input {{ width:46%; }}
table.examples col.label {{ width:22%; }}
table.examples col.score {{ width:10%; }}
.scroll {{ max-height:560px; overflow:auto; }}
.bar {{ position:relative; background:#eef2ff; border-radius:4px; height:18px; min-width:120px; }}
.bar i {{ position:absolute; left:0; top:0; bottom:0; background:#93c5fd; border-radius:4px; }}
.bar.warn i {{ background:#fca5a5; }}
.bar span {{
  position:relative; padding-left:6px; font-size:12px; font-variant-numeric:tabular-nums;
}}
.bad {{ color:#dc2626; font-weight:700; }}
figure {{ margin:8px 0; }}
svg.chart {{ width:100%; max-width:720px; height:auto; display:block; }}
svg .grid {{ stroke:#eef0f3; }}
svg .frame {{ fill:none; stroke:#cbd5e1; }}
svg .tick {{ font-size:11px; fill:#6b7280; }}
svg .axis {{ font-size:12px; fill:#374151; }}
svg .note {{ font-size:11px; fill:#6b7280; }}
svg .ref {{ stroke:#9ca3af; stroke-dasharray:4 4; }}
svg .series {{ fill:none; stroke-width:2.2; }}
figcaption {{ font-size:12.5px; color:var(--muted); }}
.key {{ margin-right:18px; }}
.key i {{
  display:inline-block; width:12px; height:12px; border-radius:3px; margin-right:6px;
  vertical-align:-1px;
}}
code {{ background:#f1f5f9; padding:1px 4px; border-radius:4px; }}
</style>
</head>
<body>
<header><h1>tracer_wrap · {task}</h1>
<p>store {store} · embedder {embedder} · generated {generated}</p></header>
<main>
<div class="cards">{cards}</div>
{sections}
</main>
</body>
</html>
"""
