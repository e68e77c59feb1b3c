"""End to end: a template that multiplies a CSV column (text) fails on its rows, unsent."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from e2e import run_cli, write_config
from fake_server import FakeServer, last_content

TEMPLATE = "{{ text }}{% if price %} costs {{ PRICE }}{% endif %}"


def test_text_times_a_number_fails_its_rows_and_the_converted_template_answers(
    tmp_path: Path,
) -> None:
    (tmp_path / "in.csv").write_text("id,text,price\n1,a,1.50\n2,b,\n3,c,4\n4,d,\n")
    unchecked = {"template": TEMPLATE.replace("PRICE", "price * 2")}
    with FakeServer(answer=lambda body: last_content(body)) as server:
        config = write_config(tmp_path, server.base_url, prompt=unchecked)
        ran = run_cli("run", str(config))
        assert ran.code == 1, ran.stderr
        assert sorted(last_content(body) for body in server.requests) == ["b", "d"]
        assert (ran.summary["answered"], ran.summary["failed"]) == (2, 2)
        assert ran.summary["row_errors"] == 2
        assert "2 rows failed before sending (the template or an image fails" in ran.stderr
        out = pl.read_parquet(tmp_path / "out/answers.parquet")
        assert out["answer"].to_list() == [None, "b", None, "d"]
        assert out["_status"].to_list() == ["failed", "ok", "failed", "ok"]
        assert out["_error"][0] == (
            "template error: `price * 2`: `*` between text ('1.50') and a number (2); "
            "CSV and TSV columns are text: write {{ price | float * 2 }}"
        )
        assert out["_error"][2].startswith("template error: `price * 2`: `*` between text ('4')")

        fixed = TEMPLATE.replace("PRICE", "price | float * 2")
        again = run_cli("run", str(config), "--set", f"prompt.template={fixed}")
        assert again.code == 0, again.stderr
        assert again.summary["requests_sent"] == 2  # b and d come from the store
        out = pl.read_parquet(tmp_path / "out/answers.parquet")
        assert out["answer"].to_list() == ["a costs 3.0", "b", "c costs 8.0", "d"]
    assert not any("1.501.50" in last_content(body) for body in server.requests)
