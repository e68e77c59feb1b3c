"""Comparison page: the JSON of `pipeline compare` -> one self-contained HTML page.

The warnings (variants that share their answers, gold labels outside output.labels), the
per-variant table with the best value of each column shaded, a confusion heat map per
variant, accuracy against projected cost, the agreement matrix and the rows where the
variants disagree. The page's frame and the rules it keeps (inline CSS and SVG, every value
escaped, the same data giving the same bytes) are report.py's.

docs/images/compare-report.png is this page for a made-up comparison, drawn by
`.venv/bin/python scripts/report_screenshot.py` (headless Chromium: `make chromium`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from .charts import _heatmap, _mix, _scatter_svg
from .htmltext import DASH, _cut, _e, _fixed, _int, _number, _pct, _show, _usd
from .parse import label_key
from .report import Section, _generated, _page, _table

CELL_CHARS = 140  # a cell of the disagreement table is cut to this, like a label (htmltext.py)
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1", "#9c755f")


def compare_report(data: Mapping[str, Any]) -> str:
    """The page for the JSON `pipeline compare` prints (see the module docstring)."""
    variants = [v for v in data.get("variants") or [] if isinstance(v, Mapping)]
    colour = {v.get("name"): PALETTE[i % len(PALETTE)] for i, v in enumerate(variants)}
    sample = data.get("sample") or {}
    how = str(sample.get("how") or DASH)
    if sample.get("seed") is not None:
        how += f", seed {sample['seed']}"
    meta = [
        f"config <b>{_e(data.get('config') or DASH)}</b> · answers <b>"
        f"{_e(data.get('kind') or DASH)}</b> · gold <b>{_e(data.get('gold') or 'none')}</b>",
        f"sample <b>{_int(sample.get('rows'))}</b> of <b>{_int(data.get('table_rows'))}</b> rows"
        f" ({_e(how)}) · {len(variants)} variant{'s' * (len(variants) != 1)}",
        *_generated(data),
    ]
    sections: list[Section | list[Section]] = []
    if warnings := [w for w in data.get("warnings") or [] if isinstance(w, str)]:
        sections.append(
            ("Warnings", "".join(f'<div class="alert">{_e(w)}</div>' for w in warnings))
        )
    sections.append(("Variants", _variants_table(data, variants, colour)))
    if maps := _heatmaps(variants):
        sections.append(("Confusion matrices", maps))
    if fields := _fields_table(variants):
        sections.append(("Accuracy per field", fields))
    pair = []
    if scatter := _scatter(variants, colour):
        pair.append(("Accuracy and projected cost", scatter))
    if len(variants) > 1:
        pair.append(("Agreement", _agreement(data, variants)))
    sections += [pair] if len(pair) > 1 else pair
    sections.append(_disagreements(data, variants))
    return _page("Comparison of variants", meta, sections)


def _ev(variant: Mapping[str, Any], key: str) -> Any:
    return (variant.get("evaluation") or {}).get(key)


def _tokens(variant: Mapping[str, Any]) -> int | None:
    known = [n for k in ("prompt_tokens", "completion_tokens") if _number(n := variant.get(k))]
    return int(sum(known)) if known else None


def _secs(value: Any) -> str:
    return _fixed(value, 2, " s")


Column = tuple[str, str, Callable[[Mapping[str, Any]], Any], bool, Callable[[Any], str]]


_COLUMNS: tuple[Column, ...] = (  # group, heading, the value of a variant, best is high, format
    ("Quality", "Accuracy", lambda v: _ev(v, "accuracy"), True, _pct),
    ("Quality", "Exact match", lambda v: _ev(v, "exact_match"), True, _pct),
    ("Quality", "Macro-F1", lambda v: _ev(v, "macro_f1"), True, lambda x: _fixed(x, 3)),
    ("Errors", "Invalid", lambda v: v.get("invalid_rate"), False, _pct),
    ("Errors", "Failed", lambda v: v.get("failed_rate"), False, _pct),
    ("Cost", "Tokens", _tokens, False, _int),
    ("Cost", "Sample", lambda v: v.get("cost_usd"), False, _usd),
    ("Cost", "All rows", lambda v: v.get("projected_cost_usd"), False, _usd),
    ("Cost", "Batch", lambda v: v.get("projected_batch_cost_usd"), False, _usd),
    ("Latency", "p50", lambda v: v.get("latency_p50_s"), False, _secs),
    ("Latency", "p95", lambda v: v.get("latency_p95_s"), False, _secs),
)


def _variants_table(
    data: Mapping[str, Any], variants: list[Mapping[str, Any]], colour: Mapping[Any, str]
) -> str:
    """One row per variant; the best value of each column shaded, when they differ."""
    hidden = {"Accuracy"} if data.get("kind") == "json" else {"Exact match"}
    columns = [
        c
        for c in _COLUMNS
        if c[1] not in hidden and (c[0] != "Quality" or any(_number(c[2](v)) for v in variants))
    ]
    groups = Counter(c[0] for c in columns)  # in order of first sight, as the columns are
    head = '<tr class="group"><th></th>'
    head += "".join(f'<th colspan="{n}">{_e(g)}</th>' for g, n in groups.items())
    head += "</tr><tr><th>Variant</th>" + "".join(f'<th class="n">{c[1]}</th>' for c in columns)
    best = []
    for _, _, read, high, _ in columns:
        values = [x for x in map(read, variants) if _number(x)]
        best.append((max if high else min)(values) if len(set(values)) > 1 else None)
    rows = []
    for v in variants:
        name, model = v.get("name"), v.get("model")
        row = f'<td><span class="dot" style="background:{colour[name]}"></span><b>{_cut(name)}</b>'
        row += f'<div class="sub">{_cut(model, 48)}</div>' if model else ""
        for override in v.get("overrides") or []:
            if override != f"model.name={model}":
                row += f'<div class="sub"><code>{_cut(override, 60)}</code></div>'
        if v.get("stopped"):
            row += f'<div class="sub">stopped: {_cut(v["stopped"], 80)}</div>'
        for (_, heading, read, _, shown), top in zip(columns, best, strict=True):
            value = read(v)
            shade = " best" if top is not None and value == top else ""
            tip = ""
            if heading == "Tokens":
                tokens = (_int(v.get("prompt_tokens")), _int(v.get("completion_tokens")))
                tip = ' title="prompt {}, completion {}"'.format(*tokens)
            row += f'<td class="n{shade}"{tip}>{shown(value)}</td>'
        rows.append(row)
    note = (
        '<p class="note">Invalid: answers that did not parse; failed: no answer. All rows: the '
        "sample's cost scaled to every row of the input; batch: the same through the Batch "
        "API; in US dollars. Shaded: the best value of its column.</p>"
    )
    return _table(head, rows) + note


def _heatmaps(variants: list[Mapping[str, Any]]) -> str:
    figures = []
    for v in variants:
        confusion = _ev(v, "confusion")
        if isinstance(confusion, Mapping) and confusion.get("gold"):
            caption = f"<b>{_cut(v.get('name'))}</b> · accuracy {_pct(_ev(v, 'accuracy'))}"
            figures.append(
                f"<figure>{_heatmap(confusion)}<figcaption>{caption}</figcaption></figure>"
            )
    if not figures:
        return ""
    note = (
        '<p class="note">Rows: the gold label; columns: the answer. Blue: right, red: wrong; '
        "the shade is the share of the gold label's rows.</p>"
    )
    return f'<div class="figs">{"".join(figures)}</div>{note}'


def _fields_table(variants: list[Mapping[str, Any]]) -> str:
    """For json answers: each field's accuracy, one column per variant."""
    names = list(dict.fromkeys(f for v in variants for f in _ev(v, "fields") or {}))
    if not names:
        return ""
    head = "<tr><th>Field</th>" + "".join(
        f'<th class="n">{_cut(v.get("name"))}</th>' for v in variants
    )
    rows = []
    for name in names:
        row = f"<td>{_cut(name)}</td>"
        for v in variants:
            score = (_ev(v, "fields") or {}).get(name) or {}
            tip = f"{_int(score.get('correct'))} of {_int(score.get('scored'))}"
            row += f'<td class="n" title="{tip}">{_pct(score.get("accuracy"))}</td>'
        rows.append(row)
    return _table(head, rows)


def _scatter(variants: list[Mapping[str, Any]], colour: Mapping[Any, str]) -> str:
    points = [
        (
            _show(v.get("name")),
            float(v["projected_cost_usd"]),
            float(_ev(v, "accuracy")),
            colour[v.get("name")],
        )
        for v in variants
        if _number(v.get("projected_cost_usd")) and _number(_ev(v, "accuracy"))
    ]
    if not points:
        return ""
    note = (
        '<p class="note">A point per variant: its accuracy on the sample and what the whole '
        "table would cost online.</p>"
    )
    return _scatter_svg(points) + note


def _agreement(data: Mapping[str, Any], variants: list[Mapping[str, Any]]) -> str:
    """Variants x variants: the share of rows both answered alike, and Cohen's kappa."""
    pairs: dict[tuple[Any, Any], Mapping[str, Any]] = {}
    for pair in data.get("agreement") or []:
        pairs[(pair.get("a"), pair.get("b"))] = pairs[(pair.get("b"), pair.get("a"))] = pair
    names = [v.get("name") for v in variants]
    head = "<tr><th></th>" + "".join(f'<th class="n">{_cut(n)}</th>' for n in names)
    rows = []
    for a in names:
        row = f"<th>{_cut(a)}</th>"
        for b in names:
            pair = pairs.get((a, b))
            if a == b or pair is None:
                row += f'<td class="n sub">{DASH}</td>'
                continue
            share, kappa = pair.get("agreement"), pair.get("kappa")
            shade = _mix("#ffffff", "#8fb3dc", 2 * share - 1) if _number(share) else "#fff"
            row += f'<td class="n" style="background:{shade}">{_pct(share)}'
            row += f'<div class="sub">κ {_fixed(kappa)}</div>' if _number(kappa) else ""
            row += "</td>"
        rows.append(row)
    known = any(_number(p.get("kappa")) for p in pairs.values())
    kappa = "; κ: Cohen's kappa, agreement beyond chance" if known else ""
    note = f"Of the rows both variants answered, the share with equal answers{kappa}."
    return _table(head, rows) + f'<p class="note">{note}</p>'


def unanswered_text(counts: Mapping[str, Any]) -> str:
    """'18 rows unanswered by bad, 2 by mini' (pending or failed); empty when none."""
    parts = [(name, n) for name, n in counts.items() if isinstance(n, int) and n]
    return ", ".join(
        f"{n} row{'s' * (n != 1)} unanswered by {name}" if i == 0 else f"{n} by {name}"
        for i, (name, n) in enumerate(parts)
    )


def _key(kind: Any, value: Any) -> Any:
    """What two answers are compared by: labels and texts without case and spacing."""
    if value is None:
        return None
    if isinstance(value, str):
        return label_key(value) if kind == "label" else " ".join(value.split()).casefold()
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _disagreements(data: Mapping[str, Any], variants: list[Mapping[str, Any]]) -> Section:
    """The rows where the variants differ; answers marked right or wrong, or odd one out."""
    found = data.get("disagreements") or {}
    shown = [r for r in found.get("rows") or [] if isinstance(r, Mapping)]
    total = _int(found.get("total", len(shown)))
    heading = f"Rows where the variants disagree: {len(shown)} of {total} shown"
    counts = found.get("unanswered")
    unanswered = unanswered_text(counts) if isinstance(counts, Mapping) else ""
    apart = (
        f'<p class="note">Not counted as disagreements: {_e(unanswered)} (pending or failed: '
        "no answer to compare).</p>"
        if unanswered
        else ""
    )
    if not shown:
        return heading, f'<p class="note">No row to show.</p>{apart}'
    kind, gold = data.get("kind"), data.get("gold")
    columns = list(found.get("columns") or [])
    names = [v.get("name") for v in variants]
    head = '<tr><th class="n">Row</th>' + "".join(f"<th>{_cut(c)}</th>" for c in columns)
    head += ("<th>Gold</th>" if gold else "") + "".join(f"<th>{_cut(n)}</th>" for n in names)
    rows = []
    for r in shown:
        inputs, answers = r.get("input") or {}, r.get("answers") or {}
        row = f'<td class="n">{_int(r.get("row"))}</td>'
        row += "".join(f'<td class="cell">{_cut(inputs.get(c), CELL_CHARS)}</td>' for c in columns)
        keys = {n: _key(kind, answers.get(n)) for n in names}
        common = Counter(keys.values()).most_common(1)[0][0] if keys else None
        truth = _key(kind, r.get("gold")) if gold else None
        if gold:
            row += f'<td class="cell"><b>{_cut(r.get("gold"), CELL_CHARS)}</b></td>'
        for n in names:
            if truth is not None:
                mark = " right" if keys[n] == truth else " wrong"
            else:
                mark = " minority" if keys[n] != common else ""
            row += f'<td class="cell{mark}">{_cut(answers.get(n), CELL_CHARS)}</td>'
        rows.append(row)
    legend = (
        "Green: the gold answer; red: another."
        if gold
        else "Yellow: an answer other than the row's most common one."
    )
    return heading, _table(head, rows) + f'<p class="note">{legend} {DASH}: no answer.</p>{apart}'
