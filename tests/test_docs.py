"""The docs stay true: generated pages current, every command, option, exit code and config key
documented, quoted files verbatim, every docs page linked, the bench's table writer."""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

from pipeline.answers import META_COLUMNS, TRACE_COLUMNS
from pipeline.cli import build_parser
from pipeline.clihelp import EPILOG
from pipeline.config import Config

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def load_script(name: str) -> ModuleType:
    """A script of scripts/ as a module (they are not a package)."""
    spec = importlib.util.spec_from_file_location(
        f"_{name}_script", ROOT / "scripts" / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


def read(relative: str) -> str:
    return (ROOT / relative).read_text(encoding="utf-8")


def subcommands(parser: argparse.ArgumentParser, prefix: str) -> dict[str, argparse.ArgumentParser]:
    """Every leaf command, by its full name ("pipeline run", "pipeline models list")."""
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.update(subcommands(sub, f"{prefix} {name}") or {f"{prefix} {name}": sub})
    return found


def section(page: str, heading: str) -> str:
    """The text of `page` under the Markdown heading `heading`, up to the next heading."""
    match = re.search(rf"^#+ {re.escape(heading)}\n(.*?)(?=^#+ |\Z)", page, re.M | re.S)
    assert match, f"no section '{heading}'"
    return match.group(1)


# --- generated pages ---------------------------------------------------------------------


def test_generated_pages_are_current() -> None:
    docs = load_script("docs")
    for name, render in docs.PAGES.items():
        path = ROOT / name
        assert path.exists(), f"{name} is missing: run `make docs`"
        assert path.read_text(encoding="utf-8") == render(), f"{name} is stale: run `make docs`"


def test_check_names_a_stale_page(tmp_path: Path) -> None:
    docs = load_script("docs")
    (tmp_path / "docs").mkdir()
    for name, render in docs.PAGES.items():
        (tmp_path / name).write_text(render(), encoding="utf-8")
    assert docs.stale_pages(tmp_path) == []
    (tmp_path / "docs" / "cli.md").write_text("# CLI reference\n", encoding="utf-8")
    (tmp_path / "docs" / "configuration.md").unlink()
    assert docs.stale_pages(tmp_path) == ["docs/configuration.md", "docs/cli.md"]


def test_every_command_and_option_is_in_the_cli_reference() -> None:
    page = read("docs/cli.md")
    commands = subcommands(build_parser(), "pipeline")
    assert {"pipeline run", "pipeline reparse", "pipeline models list"} <= set(commands)
    for name, sub in commands.items():
        text = section(page, name)
        for action in sub._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}" in text or f", {flag}" in text, f"{name} {flag}"
            if not action.option_strings:
                assert f"`{(action.metavar or action.dest).upper()}`" in text, (name, action.dest)
        assert sub.description and sub.description.lower() in text.lower(), name


def exit_codes(epilog: str) -> list[tuple[str, str]]:
    """(code, meaning) per code line; the deeper-indented lines after it continue its meaning."""
    listed = epilog.partition("exit codes:")[2]
    found = re.findall(r"^  (\d+) +(.+(?:\n {3,}\S.*)*)$", listed, flags=re.M)
    return [(code, " ".join(meaning.split())) for code, meaning in found]


EPILOG_OVER_LINES = """prose
exit codes:
  0    fine
  3    stopped early (key rejected, only 429s for
       10 minutes), or rows left pending; answers
       are kept
  130  interrupted
"""


def test_an_exit_code_meaning_over_several_lines_is_read_whole() -> None:
    whole = [
        ("0", "fine"),
        (
            "3",
            "stopped early (key rejected, only 429s for 10 minutes), or rows left pending; "
            "answers are kept",
        ),
        ("130", "interrupted"),
    ]
    assert exit_codes(EPILOG_OVER_LINES) == whole
    assert load_script("docs").exit_codes(EPILOG_OVER_LINES) == whole


def test_the_cli_reference_gives_each_exit_code_its_whole_meaning() -> None:
    """Each table row of docs/cli.md ends where its meaning ends in the epilog, not at the
    end of the epilog's first line."""
    page = read("docs/cli.md")
    for name, sub in subcommands(build_parser(), "pipeline").items():
        rows = re.findall(r"^\| (\d+) \| (.*) \|$", section(page, name), flags=re.M)
        listed = [(c, m.replace("\\|", "|")) for c, m in rows if c.isdigit()]
        assert listed == exit_codes(sub.epilog or ""), name


def test_every_exit_code_is_documented() -> None:
    codes = exit_codes(EPILOG)
    assert [code for code, _ in codes] == ["0", "1", "2", "3", "4", "5", "6", "130", "143"]
    page = read("docs/cli.md")
    for name, sub in subcommands(build_parser(), "pipeline").items():
        text = section(page, name)
        for code, meaning in exit_codes(sub.epilog or ""):
            assert f"| {code} | {' '.join(meaning.split())} |" in text, (name, code)
    # The hand-written tables: the nightly page's and the README's short one.
    for table in (section(read("docs/nightly.md"), "Exit codes"), read("README.md")):
        for code, meaning in codes:
            assert re.search(rf"^\| {code} \|", table, flags=re.M), (code, meaning)


def test_every_config_key_is_in_the_reference_with_a_description() -> None:
    page = read("docs/configuration.md")
    for name, field in Config.model_fields.items():
        assert field.description, name
        text = section(page, name)
        model = field.annotation
        for key, sub in model.model_fields.items():  # type: ignore[union-attr]
            key = sub.alias or key
            assert sub.description, f"{name}.{key} has no Field(description=...)"
            assert f"| `{name}.{key}` |" in text, f"{name}.{key} is not documented"
    assert "| `model.pricing.input_per_million` |" in page


# --- hand-written pages ------------------------------------------------------------------


def anchors(text: str) -> set[str]:
    """The #anchors a page has: its headings as GitHub slugs them, and explicit ids."""
    slugs = {
        re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        for heading in re.findall(r"^#+ (.+)$", text, flags=re.M)
    }
    return slugs | set(re.findall(r'<a id="([^"]+)">', text))


def test_readme_links_every_docs_page_and_every_link_resolves() -> None:
    readme = read("README.md")
    pages = sorted(DOCS.glob("*.md"))
    assert {p.name for p in pages} >= {
        "configuration.md",
        "cli.md",
        "nightly.md",
        "performance.md",
        "design.md",
        "guide.md",
    }
    for page in pages:
        assert f"](docs/{page.name})" in readme, f"the README does not link docs/{page.name}"
    for path in [ROOT / "README.md", *pages]:
        text = path.read_text(encoding="utf-8")
        for target, anchor in re.findall(r"\]\(([^)#:\s]*)(?:#([^)]*))?\)", text):
            linked = path.parent / target if target else path
            assert linked.exists(), f"{path.name} links {target}, which is missing"
            if anchor:
                assert anchor in anchors(linked.read_text(encoding="utf-8")), (
                    f"{path.name} links {target}#{anchor}, which has no such heading"
                )


def test_quoted_files_are_verbatim() -> None:
    """A block after `<!-- file: PATH -->` is exactly that file, as the text claims."""
    quoted = 0
    for path in [ROOT / "README.md", *DOCS.glob("*.md")]:
        text = path.read_text(encoding="utf-8")
        for name, body in re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```\n", text, re.S):
            assert body == read(name), f"{path.name} quotes {name}, which has changed"
            quoted += 1
    assert quoted >= 1


def test_the_meta_columns_named_are_the_real_ones() -> None:
    names = ", ".join(META_COLUMNS)
    assert names == "_status, _error, _prompt_tokens, _completion_tokens, _attempts"
    assert f"include_meta: true # also write {names}" in read("configs/demo.yaml")
    for text in (read("README.md"), read("docs/guide.md")):
        for name in re.findall(r"`(_[a-z_]+)`", text):
            assert name in META_COLUMNS or name in TRACE_COLUMNS, name


def test_every_module_is_in_the_design_notes() -> None:
    listing = section(read("docs/design.md"), "Modules")
    for path in sorted((ROOT / "pipeline").glob("*.py")):
        if not path.name.startswith("__"):
            assert re.search(rf"^{re.escape(path.name)} ", listing, re.M), path.name


# --- the bench's writer ------------------------------------------------------------------


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("bench")


def test_bench_writes_the_table_format_of_the_performance_page(
    bench: ModuleType, tmp_path: Path
) -> None:
    lines = [
        bench.Line("S1", "pipeline CLI", 20_000, 8643.2, 0.1123, 248.4, lost=0, twice=0, wrong=0),
        bench.Line(
            "S2", "pipeline CLI", 2_000, 49.0, 1.2971, 201.0, pct_limit=98.21, r429=0, lost=0
        ),
        bench.Line("S5 resume", "pipeline CLI", 1_000_000, 811083.0, notes=["memo", "1.2 s"]),
    ]
    verdicts = [bench.Verdict("S1", "pipeline ≥ 5,000 rows/s", "8,643", True)]
    block = bench.docs_block(lines, verdicts, ["command: `python scripts/bench.py`"])
    assert block.splitlines() == [
        bench.DOCS_START,
        "",
        "Conditions of this run:",
        "",
        "- command: `python scripts/bench.py`",
        "",
        bench.DOCS_HEADER,
        bench.DOCS_ALIGN,
        "| S1 | pipeline CLI | 20,000 | 8,643 | 0.112 | 248 |  |  | 0 | 0 | 0 |",
        "| S2 | pipeline CLI | 2,000 | 49 | 1.297 | 201 | 98.2 % | 0 | 0 |  |  |",
        "| S5 resume | pipeline CLI | 1,000,000 | 811,083 |  |  |  |  |  |  |  |",
        "",
        "| scenario | target | measured | result |",
        "|---|---|---|---|",
        "| S1 | pipeline ≥ 5,000 rows/s | 8,643 | PASS |",
        "",
        "Notes per line:",
        "",
        "- S5 resume, pipeline CLI, 1,000,000 rows: memo; 1.2 s",
        "",
        bench.DOCS_END,
    ]
    # The page keeps its prose; only the part between the markers is replaced.
    page = tmp_path / "performance.md"
    page.write_text(
        f"# Performance\n\nbefore\n\n{bench.DOCS_START}\nold\n{bench.DOCS_END}\n\nafter\n"
    )
    bench.write_docs(block, page)
    assert page.read_text() == f"# Performance\n\nbefore\n\n{block}\n\nafter\n"
    bench.write_docs(block, page)
    assert page.read_text() == f"# Performance\n\nbefore\n\n{block}\n\nafter\n"


def test_the_performance_page_holds_a_block_in_the_writer_format(bench: ModuleType) -> None:
    page = read("docs/performance.md")
    start, end = page.index(bench.DOCS_START), page.index(bench.DOCS_END)
    block = page[start:end].splitlines()
    header = block.index(bench.DOCS_HEADER)
    assert block[header + 1] == bench.DOCS_ALIGN
    rows = block[header + 2 : block.index("", header)]
    assert len(rows) >= 12
    for row in rows:
        assert row.count("|") == bench.DOCS_HEADER.count("|"), row
    assert "Conditions of this run:" in block
    assert any(item.startswith("- machine: ") for item in block)


def test_only_a_full_bench_run_writes_the_page(bench: ModuleType) -> None:
    assert bench.full_run(bench.parse_args([]))
    assert bench.full_run(bench.parse_args(["--repeat", "3"]))
    for partial in (["--quick"], ["--only", "S1"], ["--s5-sizes", "1000"]):
        assert not bench.full_run(bench.parse_args(partial)), partial
