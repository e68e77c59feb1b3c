"""Report stage: the JSON of a run (`pipeline run --report`) -> one self-contained HTML page.

Inline CSS, and SVG drawn by charts.py: no script, font or image is fetched, so the file opens
offline, mails and prints. Every value taken from the data (answers, input cells, labels,
variant names, error types) is escaped. Pure and deterministic: the same data gives the same
bytes; the time shown is `data["generated"]` when the caller sets one.

The page's frame (`_page`, tables, cards, the CSS) is shared with comparereport.py, the page
of `pipeline compare`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .charts import _bars, _counted, _heatmap, _status_bar
from .htmltext import DASH, _cut, _e, _fixed, _int, _number, _pct, _usd
from .scoretable import gold_warning

Section = tuple[str, str]  # heading, HTML


# --- the page and its parts ----------------------------------------------------------------

_CSS = """
:root{--line:#e3e7ed;--best:#dff2e4;--bg:#f4f6f9}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:#1f2933;font:14px/1.45 system-ui,-apple-system,
"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1200px;margin:0 auto;padding:24px 28px 40px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:0 0 10px}
.meta{color:#5f6b7a;margin:0}.meta b{color:#1f2933;font-weight:600}
section{background:#fff;border:1px solid var(--line);border-radius:8px;padding:16px 20px;
margin-top:18px;break-inside:avoid}
.pair{display:grid;grid-template-columns:auto 1fr;gap:0 18px}.pair>section{min-width:0}
.note{color:#5f6b7a;font-size:12.5px;margin:8px 0 0}
.scroll{overflow-x:auto}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}
th,td{padding:5px 10px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
thead th{border-bottom:2px solid #c9d1db;font-weight:600;white-space:nowrap}
thead tr.group th{border-bottom:1px solid var(--line);color:#5f6b7a;font-weight:500;
font-size:12px;text-align:center}
tbody tr:nth-child(even){background:#fafbfc}
td.n,th.n{text-align:right;white-space:nowrap}
td.best{background:var(--best);font-weight:600}
.sub{color:#5f6b7a;font-size:12px}
.dot{display:inline-block;width:9px;height:9px;border-radius:50%;margin-right:6px}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{border:1px solid var(--line);border-radius:6px;padding:8px 14px;min-width:120px}
.card b{display:block;font-size:19px;font-variant-numeric:tabular-nums}
.card span{color:#5f6b7a;font-size:12px}
.figs{display:flex;flex-wrap:wrap;gap:18px 24px;align-items:flex-start}
figure{margin:0}figcaption{font-size:12.5px;color:#5f6b7a;margin-top:4px}
svg{max-width:100%;height:auto;font-family:inherit}
td.cell{max-width:340px;overflow-wrap:break-word}
td.right{background:#e3f4e8}td.wrong{background:#fde8e6}td.minority{background:#fff3d1}
.alert{border-left:4px solid #d9822b;background:#fff8ef;padding:8px 12px;margin-top:12px}
.bar{display:inline-block;height:8px;background:#9db4d3;border-radius:2px}
@media print{body{background:#fff;font-size:11px}main{padding:0}section{border:0;padding:8px 0}
th,td{padding:3px 5px}.sub{font-size:10px}
.pair{display:block}.scroll{overflow:visible}
*{-webkit-print-color-adjust:exact;print-color-adjust:exact}}
"""


def _page(title: str, meta: Sequence[str], sections: Iterable[Section | list[Section]]) -> str:
    """The document: a header of `meta` lines (HTML), then the sections; a list of sections
    shares a row."""

    def one(part: Section) -> str:
        return f"<section><h2>{_e(part[0])}</h2>{part[1]}</section>\n"

    body = "".join(
        f'<div class="pair">{"".join(map(one, s))}</div>' if isinstance(s, list) else one(s)
        for s in sections
    )
    lines = "".join(f'<p class="meta">{m}</p>' for m in meta)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style></head>\n<body><main>"
        f"<header><h1>{_e(title)}</h1>{lines}</header>\n{body}</main></body></html>\n"
    )


def _generated(data: Mapping[str, Any]) -> list[str]:
    return [f"generated <b>{_e(data['generated'])}</b>"] if data.get("generated") else []


def _table(head: str, rows: Iterable[str]) -> str:
    body = "".join(f"<tr>{row}</tr>" for row in rows)
    return f'<div class="scroll"><table><thead>{head}</thead><tbody>{body}</tbody></table></div>'


def _cards(items: Iterable[tuple[str, str]]) -> str:
    inner = "".join(f'<div class="card"><b>{v}</b><span>{_e(k)}</span></div>' for k, v in items)
    return f'<div class="cards">{inner}</div>'


# --- a run ---------------------------------------------------------------------------------


def run_report(data: Mapping[str, Any]) -> str:
    """The page for `pipeline run --report`: data = {config, summary, labels, errors}."""
    summary = data.get("summary") or {}
    code = summary.get("exit_code")
    meta = [
        f"config <b>{_e(data.get('config') or DASH)}</b> · mode <b>"
        f"{_e(summary.get('mode') or DASH)}</b> · exit code <b>{_e(DASH if code is None else code)}"
        "</b> · "
        f"{_fixed(summary.get('seconds'), 1, ' s')}",
        *_generated(data),
    ]
    rows = _status_bar(summary)
    for key in ("stopped", "error"):
        if summary.get(key):
            rows += f'<div class="alert"><b>{key}:</b> {_cut(summary[key], 400)}</div>'
    sections: list[Section | list[Section]] = [("Rows", rows)]
    if isinstance(summary.get("evaluation"), Mapping):
        sections.append(("Evaluation", _evaluation(summary["evaluation"])))
    if data.get("labels"):
        sections.append(("Answers by label", _bars(data["labels"])))
    sections.append(("Tokens and cost", _spend(summary)))
    if data.get("errors"):
        sections.append(("Errors by type", _errors(data["errors"])))
    return _page("Run report", meta, sections)


def _evaluation(evaluation: Mapping[str, Any]) -> str:
    """The headline; then per label precision, recall, F1 and the heat map, or per field."""
    kind = evaluation.get("kind")
    headline = [
        ("exact match" if kind == "json" else "accuracy", _pct(evaluation.get("accuracy"))),
        (
            "correct of scored",
            f"{_int(evaluation.get('correct'))} / {_int(evaluation.get('scored'))}",
        ),
        ("invalid (scored wrong)", _int(evaluation.get("invalid"))),
        ("failed (scored wrong)", _int(evaluation.get("failed"))),
    ]
    if kind == "label":
        headline.insert(1, ("macro-F1", _fixed(evaluation.get("macro_f1"), 3)))
    out = _cards(headline)
    unscored = evaluation.get("unscored") or {}
    passed = [
        f"{_e(k.replace('_', ' '))} {_int(v)}" for k, v in unscored.items() if _number(v) and v
    ]
    if passed:
        out += f'<p class="note">Not scored: {", ".join(passed)}.</p>'
    unknown = evaluation.get("gold_not_in_labels")
    where = evaluation.get("gold_not_in_labels_rows")
    where = where if isinstance(where, Mapping) else None
    if isinstance(unknown, Mapping) and (warning := gold_warning(unknown, where)):
        out += f'<div class="alert"><b>warning:</b> {_e(warning)}</div>'
    if labels := evaluation.get("labels") or {}:
        heads = ("Precision", "Recall", "F1", "Support", "Answered")
        head = "<tr><th>Label</th>" + "".join(f'<th class="n">{h}</th>' for h in heads)
        rows = [
            f"<td>{_cut(name)}</td>"
            + "".join(
                f'<td class="n">{_fixed(s.get(k), 3)}</td>' for k in ("precision", "recall", "f1")
            )
            + "".join(f'<td class="n">{_int(s.get(k))}</td>' for k in ("support", "predicted"))
            for name, s in labels.items()
        ]
        figure = ""
        confusion = evaluation.get("confusion")
        if isinstance(confusion, Mapping) and confusion.get("gold"):
            caption = "Rows: the gold label; columns: the answer."
            figure = f"<figure>{_heatmap(confusion)}<figcaption>{caption}</figcaption></figure>"
        out += f'<div class="figs" style="margin-top:14px">{_table(head, rows)}{figure}</div>'
    if fields := evaluation.get("fields") or {}:
        head = "<tr><th>Field</th>" + "".join(
            f'<th class="n">{h}</th>' for h in ("Accuracy", "Correct", "Scored")
        )
        rows = [
            f'<td>{_cut(name)}</td><td class="n">{_pct(f.get("accuracy"))}</td>'
            f'<td class="n">{_int(f.get("correct"))}</td><td class="n">{_int(f.get("scored"))}</td>'
            for name, f in fields.items()
        ]
        out += f'<div style="margin-top:14px">{_table(head, rows)}</div>'
    return out


def _spend(summary: Mapping[str, Any]) -> str:
    rows, seconds = summary.get("rows"), summary.get("seconds")
    rate = rows / seconds if _number(rows) and _number(seconds) and seconds else None
    return _cards(
        [
            ("requests sent", _int(summary.get("requests_sent"))),
            ("retries", _int(summary.get("retries"))),
            ("prompt tokens", _int(summary.get("prompt_tokens"))),
            ("completion tokens", _int(summary.get("completion_tokens"))),
            ("cost", _usd(summary.get("cost_usd"))),
            ("time", _fixed(seconds, 1, " s")),
            ("rows per second", _fixed(rate, 1)),
        ]
    )


def _errors(errors: Mapping[str, Any]) -> str:
    counts = _counted(errors)
    total, most = sum(c for _, c in counts) or 1, max((c for _, c in counts), default=0) or 1
    head = '<tr><th>Error</th><th class="n">Rows</th><th class="n">Share</th><th></th>'
    rows = [
        f'<td>{_cut(name, 80)}</td><td class="n">{count:,}</td><td class="n">{count / total:.1%}'
        f'</td><td><span class="bar" style="width:{160 * count / most:.0f}px"></span></td>'
        for name, count in counts
    ]
    return _table(head, rows)


def write_report(path: Path, html: str) -> None:
    """Write the page whole or not at all: a temporary file beside it, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(html, encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
