"""Unit tests for `pipeline.report`: the sections and numbers of both pages for hand-made
data, escaping of every value from the data, no external reference, determinism, the atomic
write; then both pages rendered by headless Chromium (skipped only without `chromium` on
PATH: `make chromium` installs it)."""

from __future__ import annotations

import copy
import importlib.util
import re
import shutil
import struct
import sys
from html import escape
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.comparereport import compare_report
from pipeline.evaluate import score
from pipeline.report import DASH, run_report, write_report
from pipeline.summary import Summary

ROOT = Path(__file__).resolve().parent.parent
XSS = "<script>alert(1)</script>"
QUOTED = '"&<> said the cell'
LONG = "a label much longer than twenty-two characters"


def load_script(name: str) -> ModuleType:
    """A script of scripts/ as a module (they are not a package)."""
    spec = importlib.util.spec_from_file_location(
        f"_{name}_script", ROOT / "scripts" / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def variant(name: str, evaluation: dict[str, Any] | None, **figures: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": name,
        "overrides": [f"model.name={name}-model"],
        "model": f"{name}-model",
        "rows": 4,
        "answered": 4,
        "invalid": 0,
        "failed": 0,
        "invalid_rate": 0.0,
        "failed_rate": 0.0,
        "requests_sent": 4,
        "prompt_tokens": 400,
        "completion_tokens": 20,
        "cost_usd": None,
        "projected_cost_usd": None,
        "projected_batch_cost_usd": None,
        "latency_p50_s": None,
        "latency_p95_s": None,
        "evaluation": evaluation,
        "stopped": None,
        "exit_code": 0,
    }
    return base | figures


NULL_VARIANT = {  # a variant that never got going: every figure unknown
    "name": "broken",
    "overrides": [],
    "model": None,
    "rows": None,
    "answered": None,
    "invalid": None,
    "failed": None,
    "invalid_rate": None,
    "failed_rate": None,
    "requests_sent": None,
    "prompt_tokens": None,
    "completion_tokens": None,
    "cost_usd": None,
    "projected_cost_usd": None,
    "projected_batch_cost_usd": None,
    "latency_p50_s": None,
    "latency_p95_s": None,
    "evaluation": None,
    "stopped": "HTTP 401: the key was rejected",
    "exit_code": 3,
}
GOLD = ["billing", "billing", "bug", "bug"]
OK4 = ["ok"] * 4


def label_compare() -> dict[str, Any]:
    """Two label variants scored against gold (accuracy 75% and 100%), and a broken one."""
    lite = score("label", ["billing", "bug", "bug", "bug"], GOLD, OK4, labels=["billing", "bug"])
    mini = score("label", GOLD, GOLD, OK4, labels=["billing", "bug"])
    return {
        "config": "configs/classify.yaml",
        "sample": {"rows": 4, "how": "random", "seed": 7},
        "table_rows": 10_000,
        "gold": "true_label",
        "kind": "label",
        "variants": [
            variant(
                "flash-lite",
                lite.to_dict(),
                invalid_rate=0.03,
                failed_rate=0.02,
                prompt_tokens=12_345,
                completion_tokens=2_345,
                cost_usd=0.0123,
                projected_cost_usd=0.61,
                projected_batch_cost_usd=0.31,
                latency_p50_s=0.41,
                latency_p95_s=1.2,
            ),
            variant(
                "mini",
                mini.to_dict(),
                cost_usd=0.0456,
                projected_cost_usd=2.28,
                projected_batch_cost_usd=1.14,
                latency_p50_s=0.9,
                latency_p95_s=2.5,
            ),
            NULL_VARIANT,
        ],
        "agreement": [
            {"a": "flash-lite", "b": "mini", "agreement": 0.75, "kappa": 0.5},
            {"a": "flash-lite", "b": "broken", "agreement": None, "kappa": None},
            {"a": "mini", "b": "broken", "agreement": None, "kappa": None},
        ],
        "disagreements": {
            "columns": ["id", "text"],
            "rows": [
                {
                    "row": 2,
                    "input": {"id": 2, "text": QUOTED},
                    "gold": "billing",
                    "answers": {"flash-lite": "bug", "mini": "billing", "broken": None},
                },
                {
                    "row": 4,
                    "input": {"id": 4, "text": "word " * 100},
                    "gold": "bug",
                    "answers": {"flash-lite": XSS, "mini": "Bug.", "broken": None},
                },
            ],
            "total": 5,
        },
    }


def json_compare() -> dict[str, Any]:
    gold = [{"city": "Paris", "year": 2020}, {"city": "Rome", "year": 1999}]
    answers = [{"city": "paris", "year": 2020.0}, {"city": "Rome", "year": 2000}]
    evaluation = score("json", answers, gold, ["ok", "ok"]).to_dict()
    return {
        "config": "configs/extract.yaml",
        "sample": {"rows": 2, "how": "first", "seed": None},
        "table_rows": 2,
        "gold": "expected",
        "kind": "json",
        "variants": [variant("a", evaluation), variant("b", evaluation, prompt_tokens=300)],
        "agreement": [{"a": "a", "b": "b", "agreement": 1.0, "kappa": None}],
        "disagreements": {"columns": ["text"], "rows": [], "total": 0},
    }


def text_compare() -> dict[str, Any]:
    """Three text variants, no gold: no scores, only agreement and the rows that differ."""
    return {
        "config": "configs/translate.yaml",
        "sample": {"rows": 3, "how": "first", "seed": None},
        "table_rows": 3,
        "gold": None,
        "kind": "text",
        "variants": [variant("a", None), variant("b", None), variant("c", None)],
        "agreement": [
            {"a": "a", "b": "b", "agreement": 0.5, "kappa": None},
            {"a": "a", "b": "c", "agreement": 1.0, "kappa": None},
            {"a": "b", "b": "c", "agreement": 0.5, "kappa": None},
        ],
        "disagreements": {
            "columns": ["text"],
            "rows": [
                {
                    "row": 1,
                    "input": {"text": "Bonjour"},
                    "gold": None,
                    "answers": {"a": "Hello", "b": "Good day", "c": " hello "},
                }
            ],
            "total": 1,
        },
    }


def run_data() -> dict[str, Any]:
    summary = Summary(
        rows=100,
        answered=90,
        failed=4,
        invalid=3,
        skipped=2,
        pending=1,
        requests_sent=97,
        retries=5,
        prompt_tokens=12_000,
        completion_tokens=800,
        cost_usd=0.0123,
        seconds=12.5,
        output="out/tickets.parquet",
    )
    gold = ["billing"] * 50 + ["bug"] * 40 + [LONG] * 7
    answers = ["billing"] * 45 + ["bug"] * 45 + [LONG] * 7
    summary.evaluation = score(
        "label", answers, gold, ["ok"] * 97, labels=["billing", "bug", LONG]
    ).to_dict()
    return {
        "config": "configs/classify.yaml",
        "summary": summary.to_dict(),
        "labels": {"billing": 45, "bug": 38, LONG: 7},
        "errors": {"HTTP 500": 3, "invalid answer": 3, "timeout": 1},
    }


def variant_row(page: str, name: str) -> str:
    """The <tr> of the variants table for the variant `name`."""
    match = re.search(rf"<tr><td><span class=\"dot\"[^>]*></span><b>{name}</b>.*?</tr>", page)
    assert match, name
    return match.group(0)


# --- the comparison ------------------------------------------------------------------------


def test_compare_report_has_every_section_and_the_figures() -> None:
    page = compare_report(label_compare())
    for heading in (
        "Comparison of variants",
        "Variants",
        "Confusion matrices",
        "Accuracy and projected cost",
        "Agreement",
        "Rows where the variants disagree: 2 of 5 shown",
    ):
        assert f">{heading}</h" in page, heading
    assert "configs/classify.yaml" in page and "<b>10,000</b> rows (random, seed 7)" in page
    lite = variant_row(page, "flash-lite")
    cells = re.findall(r'<td class="n[^"]*"[^>]*>([^<]*)</td>', lite)
    assert cells == [
        "75.0%",
        "0.733",
        "3.0%",
        "2.0%",
        "14,690",
        "$0.0123",
        "$0.610",
        "$0.310",
        "0.41 s",
        "1.20 s",
    ]
    assert 'title="prompt 12,345, completion 2,345"' in lite
    assert '<td class="n best">100.0%</td>' in variant_row(page, "mini")  # the best accuracy
    assert '<td class="n best">$0.0123</td>' in lite  # the cheapest
    assert page.count("<figure>") == 2  # a heat map per scored variant, none for `broken`
    assert page.count("<svg") == 3  # and the scatter
    assert '75.0%<div class="sub">κ 0.50</div>' in page


def test_a_variant_with_nothing_known_shows_dashes() -> None:
    page = compare_report(label_compare())
    broken = variant_row(page, "broken")
    assert broken.count(f">{DASH}</td>") == 10
    assert "stopped: HTTP 401: the key was rejected" in broken
    assert "<title>broken" not in page  # no point in the scatter, no heat map


def test_disagreements_mark_answers_against_gold() -> None:
    page = compare_report(label_compare())
    assert '<td class="cell right">billing</td>' in page
    assert '<td class="cell wrong">bug</td>' in page
    assert '<td class="cell right">Bug.</td>' in page  # a label compares as the parser reads it
    assert f'<td class="cell wrong">{DASH}</td>' in page  # no answer is wrong
    assert 'title="word word' in page and "word word…" in page  # a long cell is cut


def test_json_compare_shows_exact_match_and_fields() -> None:
    page = compare_report(json_compare())
    assert ">Exact match</th>" in page and ">Accuracy</th>" not in page
    assert ">Accuracy per field</h2>" in page
    assert '<td>city</td><td class="n" title="2 of 2">100.0%</td>' in page
    assert '<td>year</td><td class="n" title="1 of 2">50.0%</td>' in page
    assert "<svg" not in page  # no scatter: the projected cost is unknown
    assert "Confusion matrices" not in page
    assert "0 of 0 shown" in page


def test_text_compare_without_gold_has_no_scores() -> None:
    page = compare_report(text_compare())
    for absent in ("Quality", ">Accuracy", "Macro-F1", "<svg", ">Gold</th>", "κ"):
        assert absent not in page, absent
    assert "gold <b>none</b>" in page
    assert '<td class="cell minority">Good day</td>' in page  # the odd one out
    assert '<td class="cell"> hello </td>' in page  # "Hello" and " hello " agree
    assert "50.0%" in page and "100.0%" in page


def test_thirty_labels_and_a_long_one_fit_the_heat_map() -> None:
    labels = [f"label{i:02}" for i in range(29)] + [LONG]
    evaluation = score("label", labels, labels[::-1], ["ok"] * 30, labels=labels).to_dict()
    data = label_compare()
    data["variants"] = [variant("many", evaluation, projected_cost_usd=1.0)]
    page = compare_report(data)
    svg = re.search(r"<svg.*?</svg>", page, re.S)
    assert svg
    assert svg.group(0).count("<rect") == 30 * 31  # gold rows x answers and (no answer)
    assert f"<title>{LONG}</title>a label much longer t…</text>" in page
    one = variant("one", score("label", ["x"], ["x"], ["ok"], labels=["x"]).to_dict())
    data["variants"] = [one]
    assert compare_report(data).count("<rect") == 2


def test_scatter_axis_is_logarithmic_when_costs_span_a_decade() -> None:
    data = label_compare()
    data["variants"][1]["projected_cost_usd"] = 61.0
    page = compare_report(data)
    assert "(log scale)" in page and ">$0.5</text>" in page and ">$100</text>" in page
    data["variants"][1]["projected_cost_usd"] = 0.9
    assert "(log scale)" not in compare_report(data)


def test_every_value_from_the_data_is_escaped() -> None:
    data = label_compare()
    data["config"] = data["gold"] = data["generated"] = XSS
    data["variants"][0]["name"] = XSS
    data["variants"][0]["overrides"] = [f"prompt.system={XSS}"]
    data["variants"][2]["stopped"] = XSS
    data["disagreements"]["columns"] = ["id", XSS]
    for row in data["disagreements"]["rows"]:
        row["input"][XSS] = QUOTED
        row["answers"][XSS] = row["answers"].pop("flash-lite")
    data["agreement"][0]["a"] = XSS
    confusion = data["variants"][1]["evaluation"]["confusion"]
    confusion["gold"][0] = confusion["predicted"][0] = XSS
    page = compare_report(data)
    assert "<script" not in page.lower()
    assert escape(XSS) in page and escape(QUOTED) in page
    assert "&quot;&amp;&lt;&gt; said the cell" in page
    run = run_data()
    run["config"] = run["summary"]["error"] = XSS
    run["labels"] = {XSS: 3}
    run["errors"] = {XSS: 1, QUOTED: 2}
    page = run_report(run)
    assert "<script" not in page.lower() and escape(XSS) in page and escape(QUOTED) in page


@settings(max_examples=60)
@given(st.text(max_size=200))
def test_no_text_from_the_data_makes_a_tag(text: str) -> None:
    """Whatever an answer, a cell or a label holds, the page has the same tags."""

    def page(value: str) -> str:
        data = label_compare()
        data["disagreements"]["rows"][0]["answers"]["mini"] = value
        data["disagreements"]["rows"][0]["input"]["text"] = value
        data["variants"][0]["evaluation"]["confusion"]["gold"][1] = value
        return compare_report(data)

    def tags(html: str) -> list[str]:
        return re.findall(r"<(/?[a-zA-Z][\w-]*)", html)

    assert tags(page(text)) == tags(page("x"))


def test_pages_reference_nothing_outside_themselves() -> None:
    pages = [compare_report(d) for d in (label_compare(), json_compare(), text_compare())]
    pages.append(run_report(run_data()))
    for page in pages:
        assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", page, re.I)
        for banned in ("http://", "https://", "@import", "url(", "<link", "<img", "<script"):
            assert banned not in page.lower(), banned


def test_pages_are_deterministic_and_leave_the_data_alone() -> None:
    data, run = label_compare(), run_data()
    kept = copy.deepcopy((data, run))
    assert compare_report(data) == compare_report(label_compare())
    assert run_report(run) == run_report(run_data())
    assert (data, run) == kept
    assert "generated" not in compare_report(data)
    data["generated"] = "2025-06-02 09:30 UTC"
    assert "generated <b>2025-06-02 09:30 UTC</b>" in compare_report(data)


def test_missing_pieces_do_not_break_a_page() -> None:
    assert "0 of 0 shown" in compare_report({})
    assert ">Rows</h2>" in run_report({})
    assert "Comparison of variants" in compare_report({"variants": [{"name": "x"}]})


# --- a run ---------------------------------------------------------------------------------


def test_run_report_has_every_section() -> None:
    page = run_report(run_data())
    for heading in ("Run report", "Rows", "Evaluation", "Answers by label", "Tokens and cost"):
        assert f">{heading}</h" in page, heading
    assert ">Errors by type</h2>" in page
    assert "answered <b>90</b>" in page and "of <b>100</b> rows" in page
    assert "exit code <b>1</b>" in page and "12.5 s" in page
    assert "<b>94.8%</b><span>accuracy</span>" in page  # 92 of 97
    assert '<td>billing</td><td class="n">1.000</td><td class="n">0.900</td>' in page
    assert "<b>$0.0123</b><span>cost</span>" in page and "<b>12,000</b>" in page
    assert '<td>HTTP 500</td><td class="n">3</td><td class="n">42.9%</td>' in page
    assert ">45 · 50.0%</text>" in page  # 45 of the 90 labelled answers
    assert page.count("<svg") == 3  # the status bar, the heat map, the label bars


def test_run_report_without_evaluation_labels_or_errors() -> None:
    summary = Summary(rows=3, answered=3, seconds=1.0, stopped="budget reached").to_dict()
    page = run_report({"config": "c.yaml", "summary": summary, "labels": None, "errors": {}})
    for absent in ("Evaluation", "Answers by label", "Errors by type"):
        assert absent not in page
    assert "<b>stopped:</b> budget reached" in page
    assert f"<b>{DASH}</b><span>cost</span>" in page


def test_run_report_per_field_for_json() -> None:
    evaluation = score("json", [{"a": 1}], [{"a": 1, "b": 2}], ["ok"]).to_dict()
    page = run_report({"summary": {"rows": 1, "answered": 1, "evaluation": evaluation}})
    assert "<span>exact match</span>" in page
    assert '<td>a</td><td class="n">100.0%</td>' in page
    assert '<td>b</td><td class="n">0.0%</td>' in page


# --- writing -------------------------------------------------------------------------------


def test_write_report_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "new" / "folder" / "report.html"
    write_report(path, "first")
    assert path.read_text(encoding="utf-8") == "first"

    def broken(self: Path, target: Path) -> Path:
        raise OSError("disk full")

    monkeypatch.setattr(Path, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        write_report(path, "second")
    assert path.read_text(encoding="utf-8") == "first"
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]


# --- in a browser --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shots() -> ModuleType:
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not on PATH (`make chromium` installs it as root)")
    return load_script("report_screenshot")


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind, width, height = struct.unpack(">I4sII", head[8:24])
    assert length == 13
    assert kind == b"IHDR"
    return width, height


def console_errors(stderr: str) -> list[str]:
    """Chromium's log lines of console messages (all logged as INFO, whatever their level:
    the pages run no script, so any is a fault) and uncaught errors."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


@pytest.mark.parametrize("which", ["compare", "run"])
def test_chromium_renders_the_page(which: str, shots: ModuleType, tmp_path: Path) -> None:
    page = tmp_path / f"{which}.html"
    html = (
        compare_report(shots.realistic_compare()) if which == "compare" else run_report(run_data())
    )
    write_report(page, html)
    png = tmp_path / f"{which}.png"
    done = shots.chromium(page, f"--screenshot={png}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert png.exists() and png.stat().st_size > 30_000  # a drawn page, not a blank one
    assert png_size(png) == shots.WINDOW
    assert console_errors(done.stderr) == []
    dom = shots.chromium(page, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert console_errors(dom.stderr) == []
    assert dom.stdout.count("<svg") == html.count("<svg") > 0
    assert dom.stdout.count("<table") == html.count("<table") > 0
    assert dom.stdout.count("<section>") == html.count("<section>")


def test_the_docs_screenshot_is_there() -> None:
    png = ROOT / "docs" / "images" / "compare-report.png"
    assert png_size(png)[0] == 1280, "run scripts/report_screenshot.py"
