"""Unit tests for `pipeline.configfile.load`: defaults, paths, key+line errors, ${VAR}, --set."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.config import (
    DEFAULT_BASE_URL,
    DEFAULT_KEY_ENV,
    DEFAULT_MODEL,
    Config,
    RunConfig,
)
from pipeline.configfile import load
from pipeline.errors import ConfigError

# Six lines; a section appended after it starts on line 7.
BASE = """\
input:
  path: data/in.csv
prompt:
  template: "Q: {{ q }}"
output:
  path: out/answers.parquet
"""

HYPOTHESIS = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def write_config(folder: Path, text: str, name: str = "job.yaml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def normalized(path: Path | None) -> Path:
    assert path is not None
    return Path(os.path.normpath(path))


def load_text(folder: Path, text: str, overrides: list[str] | None = None) -> Config:
    return load(write_config(folder, text), overrides)


def config_error(folder: Path, text: str, overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_text(folder, text, overrides)
    return str(info.value)


# --- a valid config ----------------------------------------------------------------------


def test_minimal_config_gets_model_and_run_defaults(tmp_path: Path) -> None:
    config = load_text(tmp_path, BASE)

    assert config.prompt.template == "Q: {{ q }}"
    assert config.prompt.system is None
    assert config.prompt.skip_null == []
    assert config.model.base_url == DEFAULT_BASE_URL
    assert config.model.name == DEFAULT_MODEL
    assert config.model.api_key_env == DEFAULT_KEY_ENV
    assert config.model.params == {}
    assert config.output.column == "answer"
    assert config.output.include_meta is False
    assert config.run == RunConfig()
    assert config.run.concurrency == 32
    assert config.run.max_retries == 5
    assert config.run.requests_per_minute is None
    assert config.run.tokens_per_minute is None


def test_full_config_keeps_every_value(tmp_path: Path) -> None:
    text = (
        BASE
        + """\
model:
  base_url: http://127.0.0.1:9000/v1
  name: tiny
  api_key_env: MY_KEY
  params: {temperature: 0, max_tokens: 16}
run:
  concurrency: 4
  requests_per_minute: 600
  tokens_per_minute: 200000
  max_retries: 2
  timeout_s: 7.5
  chunk_rows: 100
"""
    )
    config = load_text(tmp_path, text)

    assert config.model.base_url == "http://127.0.0.1:9000/v1"
    assert config.model.name == "tiny"
    assert config.model.api_key_env == "MY_KEY"
    assert config.model.params == {"temperature": 0, "max_tokens": 16}
    assert config.run.concurrency == 4
    assert config.run.requests_per_minute == 600
    assert config.run.tokens_per_minute == 200000
    assert config.run.max_retries == 2
    assert config.run.timeout_s == 7.5
    assert config.run.chunk_rows == 100


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load_text(tmp_path, BASE)
    with pytest.raises(ValueError, match="frozen"):
        config.run.concurrency = 1


def test_relative_paths_resolve_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "configs"
    folder.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the working directory must not matter
    config = load(write_config(folder, BASE + "run:\n  store: ../state/job.db\n"))

    assert config.input.path == folder / "data/in.csv"
    assert config.output.path == folder / "out/answers.parquet"
    assert normalized(config.run.store) == tmp_path / "state" / "job.db"
    assert normalized(config.store_path) == tmp_path / "state" / "job.db"


def test_absolute_and_home_paths_are_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    text = f"""\
input:
  path: {tmp_path / "abs" / "in.csv"}
prompt:
  template: x
output:
  path: ~/out.csv
"""
    config = load_text(tmp_path, text)

    assert config.input.path == tmp_path / "abs" / "in.csv"
    assert config.output.path == tmp_path / "home" / "out.csv"


def test_store_path_defaults_to_output_path_with_db_suffix(tmp_path: Path) -> None:
    config = load_text(tmp_path, BASE)

    assert config.run.store is None
    assert config.store_path == tmp_path / "out" / "answers.db"


# --- errors that name the key and its line -----------------------------------------------


def test_unknown_key_names_dotted_key_and_line(tmp_path: Path) -> None:
    message = config_error(tmp_path, BASE + "run:\n  concurency: 8\n")

    assert "unknown key 'run.concurency'" in message
    assert "line 8" in message
    assert str(tmp_path / "job.yaml") in message


def test_unknown_top_level_section_is_named(tmp_path: Path) -> None:
    message = config_error(tmp_path, BASE + "extras:\n  a: 1\n")

    assert "unknown key 'extras'" in message
    assert "line 7" in message


def test_wrong_type_names_key_and_line(tmp_path: Path) -> None:
    message = config_error(tmp_path, BASE + "run:\n  timeout_s: 5\n  concurrency: many\n")

    assert "run.concurrency" in message
    assert "line 9" in message
    assert "integer" in message


@pytest.mark.parametrize(
    ("section", "dotted"),
    [
        ("run:\n  concurrency: 0\n", "run.concurrency"),
        ("run:\n  max_retries: -1\n", "run.max_retries"),
        ("run:\n  requests_per_minute: 0\n", "run.requests_per_minute"),
        ("model:\n  params: [temperature, 0]\n", "model.params"),
    ],
)
def test_invalid_values_are_rejected_with_key_and_line(
    tmp_path: Path, section: str, dotted: str
) -> None:
    message = config_error(tmp_path, BASE + section)

    assert f"config key '{dotted}' (line 8)" in message


@pytest.mark.parametrize(
    ("line", "dotted", "why"),
    [
        ("encoding: klingon", "input.encoding", "unknown encoding 'klingon'"),
        ("separator: ';;'", "input.separator", "one ASCII character"),
        ("ragged: pad", "input.ragged", "'error' or 'truncate'"),
    ],
)
def test_csv_settings_are_checked_with_key_and_line(
    tmp_path: Path, line: str, dotted: str, why: str
) -> None:
    text = BASE.replace("  path: data/in.csv\n", f"  path: data/in.csv\n  {line}\n")
    message = config_error(tmp_path, text)

    assert f"config key '{dotted}' (line 3)" in message and why in message


def test_csv_settings_default_and_set(tmp_path: Path) -> None:
    default = load_text(tmp_path, BASE).input
    assert (default.encoding, default.separator, default.ragged) == ("utf8", None, "error")
    overrides = ["input.encoding=cp1252", "input.separator=;", "input.ragged=truncate"]
    changed = load_text(tmp_path, BASE, overrides).input
    assert (changed.encoding, changed.separator, changed.ragged) == ("cp1252", ";", "truncate")


def test_missing_template_is_named_with_its_section_line(tmp_path: Path) -> None:
    text = BASE.replace('  template: "Q: {{ q }}"\n', "  system: be brief\n")
    message = config_error(tmp_path, text)

    assert "missing required key 'prompt.template'" in message
    assert "line 3" in message  # the prompt section


def test_missing_input_section_is_named(tmp_path: Path) -> None:
    text = BASE.replace("input:\n  path: data/in.csv\n", "")
    message = config_error(tmp_path, text)

    assert "missing required key 'input'" in message


def test_several_errors_are_reported_together(tmp_path: Path) -> None:
    message = config_error(tmp_path, BASE + "run:\n  concurrency: x\n  colour: red\n")

    assert "run.concurrency" in message
    assert "run.colour" in message


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    text = BASE + "model:\n  params: [temperature, 0\n  name: x\n"
    message = config_error(tmp_path, text)

    assert "invalid YAML" in message
    assert "line 9" in message


def test_an_unclosed_quote_names_the_line_it_opens_on(tmp_path: Path) -> None:
    text = BASE.replace('"Q: {{ q }}"', '"Q: {{ q }}') + "".join(f"# note {n}\n" for n in range(11))
    assert len(text.splitlines()) == 17
    message = config_error(tmp_path, text)

    assert "invalid YAML (line 4)" in message
    assert "quoted scalar" in message
    assert 'line 4 is: template: "Q: {{ q }}' in message
    assert "line 18" not in message


def test_a_problem_at_the_end_of_the_file_names_a_line_in_it(tmp_path: Path) -> None:
    message = config_error(tmp_path, BASE + "run: [1, 2")

    assert "invalid YAML (line 7)" in message
    assert "line 7 is: run: [1, 2" in message


def test_tab_indentation_is_invalid_yaml_with_line(tmp_path: Path) -> None:
    message = config_error(tmp_path, BASE + "run:\n\tconcurrency: 3\n")

    assert "invalid YAML" in message
    assert "line 8" in message


@pytest.mark.parametrize("text", ["", "# only a comment\n", "- input\n- prompt\n", "just text\n"])
def test_non_mapping_document_is_rejected(tmp_path: Path, text: str) -> None:
    message = config_error(tmp_path, text)

    assert "mapping" in message


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="cannot read config") as info:
        load(missing)
    assert str(missing) in str(info.value)


def test_directory_instead_of_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load(tmp_path)


def test_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("# café\n".encode("latin-1") + BASE.encode())

    with pytest.raises(ConfigError, match="cannot read config"):
        load(path)


# --- ${VAR} expansion --------------------------------------------------------------------


def test_env_var_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPE_TEST_MODEL", "m-1")
    monkeypatch.setenv("PIPE_TEST_PORT", "8123")
    text = BASE + "model:\n  name: ${PIPE_TEST_MODEL}\n  base_url: http://h:${PIPE_TEST_PORT}/v1\n"
    config = load_text(tmp_path, text)

    assert config.model.name == "m-1"
    assert config.model.base_url == "http://h:8123/v1"


def test_expanded_value_is_validated_to_its_type(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIPE_TEST_CONC", "12")
    config = load_text(tmp_path, BASE + "run:\n  concurrency: ${PIPE_TEST_CONC}\n")

    assert config.run.concurrency == 12


def test_env_var_default_is_used_when_unset_or_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PIPE_TEST_UNSET", raising=False)
    monkeypatch.setenv("PIPE_TEST_EMPTY", "")
    text = BASE + (
        "model:\n"
        "  base_url: http://127.0.0.1:${PIPE_TEST_UNSET:-8787}/v1\n"
        "  name: ${PIPE_TEST_EMPTY:-fallback}\n"
    )
    config = load_text(tmp_path, text)

    assert config.model.base_url == "http://127.0.0.1:8787/v1"
    assert config.model.name == "fallback"


def test_set_variable_wins_over_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPE_TEST_NAME", "real")
    config = load_text(tmp_path, BASE + "model:\n  name: ${PIPE_TEST_NAME:-fallback}\n")

    assert config.model.name == "real"


def test_env_var_in_input_path_expands_before_resolving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIPE_TEST_DIR", "shared")
    text = BASE.replace("data/in.csv", "${PIPE_TEST_DIR}/in.csv")
    config = load_text(tmp_path, text)

    assert config.input.path == tmp_path / "shared" / "in.csv"


def test_unset_env_var_without_default_names_variable_and_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PIPE_TEST_MISSING", raising=False)
    message = config_error(tmp_path, BASE + "model:\n  name: ${PIPE_TEST_MISSING}\n")

    assert "PIPE_TEST_MISSING" in message
    assert "model.name" in message
    assert "line 8" in message


def test_env_var_is_not_expanded_in_comments_or_unrelated_text(tmp_path: Path) -> None:
    text = "# ${PIPE_TEST_NEVER_SET} in a comment is fine\n" + BASE.replace(
        '"Q: {{ q }}"', '"costs $5 {{ q }}"'
    )
    config = load_text(tmp_path, text)

    assert config.prompt.template == "costs $5 {{ q }}"


# --- --set overrides ---------------------------------------------------------------------


def test_set_overrides_and_is_typed_via_yaml(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        BASE + "run:\n  concurrency: 2\n",
        ["run.concurrency=8", "output.include_meta=true", "model.params={temperature: 0.5}"],
    )

    assert config.run.concurrency == 8
    assert isinstance(config.run.concurrency, int)
    assert config.output.include_meta is True
    assert config.model.params == {"temperature": 0.5}


def test_set_creates_a_missing_section(tmp_path: Path) -> None:
    config = load_text(tmp_path, BASE, ["run.max_retries=0", "model.name=other"])

    assert config.run.max_retries == 0
    assert config.model.name == "other"


def test_set_value_keeps_text_after_the_first_equals_sign(tmp_path: Path) -> None:
    config = load_text(tmp_path, BASE, ["prompt.template=a={{ q }}"])

    assert config.prompt.template == "a={{ q }}"


def test_set_of_unknown_key_is_an_error_mentioning_set(tmp_path: Path) -> None:
    message = config_error(tmp_path, BASE, ["run.concurency=8"])

    assert "run.concurency" in message
    assert "--set" in message


def test_set_with_wrong_type_mentions_set(tmp_path: Path) -> None:
    message = config_error(tmp_path, BASE, ["run.concurrency=lots"])

    assert "run.concurrency" in message
    assert "--set" in message


@pytest.mark.parametrize("item", ["run.concurrency", "=8", " =8"])
def test_malformed_set_is_an_error(tmp_path: Path, item: str) -> None:
    message = config_error(tmp_path, BASE, [item])

    assert "--set" in message
    assert "KEY=VALUE" in message


def test_set_below_a_scalar_is_an_error(tmp_path: Path) -> None:
    message = config_error(tmp_path, BASE, ["input.path.deeper=1"])

    assert "--set input.path.deeper" in message
    assert "not a section" in message


# --- round trips -------------------------------------------------------------------------

names = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), min_size=1, max_size=30
).filter(lambda s: "${" not in s)


@HYPOTHESIS
@given(
    concurrency=st.integers(1, 4096),
    max_retries=st.integers(0, 100),
    timeout_s=st.floats(min_value=0.001, max_value=1e6),
    rpm=st.none() | st.floats(min_value=0.01, max_value=1e7),
    chunk_rows=st.integers(1, 10**7),
    name=names,
    column=names,
    include_meta=st.booleans(),
    params=st.dictionaries(
        st.text(st.characters(codec="ascii", categories=["L"]), min_size=1, max_size=8),
        st.integers(-(10**6), 10**6) | st.booleans() | names,
        max_size=4,
    ),
)
def test_yaml_round_trip(
    tmp_path: Path,
    concurrency: int,
    max_retries: int,
    timeout_s: float,
    rpm: float | None,
    chunk_rows: int,
    name: str,
    column: str,
    include_meta: bool,
    params: dict[str, Any],
) -> None:
    document = {
        "input": {"path": "in.csv"},
        "prompt": {"template": "{{ q }}"},
        "model": {"name": name, "params": params},
        "output": {"path": "o.csv", "column": column, "include_meta": include_meta},
        "run": {
            "concurrency": concurrency,
            "max_retries": max_retries,
            "timeout_s": timeout_s,
            "requests_per_minute": rpm,
            "chunk_rows": chunk_rows,
        },
    }
    config = load_text(tmp_path, yaml.safe_dump(document, allow_unicode=True))

    assert config.model.name == name
    assert config.model.params == params
    assert config.output.column == column
    assert config.output.include_meta is include_meta
    assert config.run.concurrency == concurrency
    assert config.run.max_retries == max_retries
    assert config.run.timeout_s == timeout_s
    assert config.run.requests_per_minute == rpm
    assert config.run.chunk_rows == chunk_rows


@HYPOTHESIS
@given(concurrency=st.integers(1, 4096), retries=st.integers(0, 100))
def test_set_round_trip_of_integers(tmp_path: Path, concurrency: int, retries: int) -> None:
    config = load_text(
        tmp_path, BASE, [f"run.concurrency={concurrency}", f"run.max_retries={retries}"]
    )

    assert config.run.concurrency == concurrency
    assert config.run.max_retries == retries


def test_params_may_not_replace_the_model_or_the_messages(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "input: {path: in.csv}\nprompt: {template: x}\noutput: {path: o.csv}\n"
        "model: {params: {model: other}}\n"
    )
    with pytest.raises(ConfigError, match="may not set 'model'"):
        load(path)


@pytest.mark.parametrize("value", ["'16'", "0", "-3", "[1]", "1.5"])
def test_max_tokens_must_be_a_positive_whole_number(tmp_path: Path, value: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "input: {path: in.csv}\nprompt: {template: x}\noutput: {path: o.csv}\n"
        f"model: {{params: {{max_tokens: {value}}}}}\n"
    )
    with pytest.raises(ConfigError, match="max_tokens must be a positive whole number"):
        load(path)


def test_output_commit_and_branch_are_read(tmp_path: Path) -> None:
    text = BASE.replace(
        "  path: out/answers.parquet\n",
        "  path: out/answers.parquet\n  commit: true\n  branch: labels/nightly\n",
    )
    config = load_text(tmp_path, text)

    assert config.output.commit and config.output.branch == "labels/nightly"
    assert not load_text(tmp_path, BASE).output.commit


@pytest.mark.parametrize(
    ("lines", "why"),
    [
        ("  path: oxen://ox:r@main/a.csv\n  commit: true\n", "output.commit is for a file"),
        ("  path: out/answers.parquet\n  branch: labels\n", "output.branch needs output.commit"),
        ("  path: o.csv\n  commit: true\n  branch: a..b\n", "'a..b' is not a branch name"),
        ("  path: o.csv\n  commit: true\n  branch: -x\n", "'-x' is not a branch name"),
    ],
)
def test_output_commit_and_branch_are_checked(tmp_path: Path, lines: str, why: str) -> None:
    message = config_error(tmp_path, BASE.replace("  path: out/answers.parquet\n", lines))

    assert why in message
    if "commit is for" in why:  # both keys named
        assert "output.path" in message and "drop output.commit" in message


# --- keys given twice --------------------------------------------------------------------


def test_a_section_given_twice_names_both_lines(tmp_path: Path) -> None:
    text = BASE + "run:\n  concurrency: 2\nmodel:\n  name: m\nrun:\n  max_retries: 1\n"
    message = config_error(tmp_path, text)

    assert message == (
        f"{tmp_path / 'job.yaml'}: config key 'run' is defined twice, lines 7 and 11; write it "
        "once (YAML would keep only the last)"
    )


@pytest.mark.parametrize(
    ("text", "dotted", "lines"),
    [
        (
            BASE.replace(
                "  path: out/answers.parquet\n", "  column: a\n  path: o.csv\n  column: b\n"
            ),
            "output.column",
            (6, 8),
        ),
        (
            BASE + "model:\n  params:\n    temperature: 0\n    temperature: 1\n",
            "model.params.temperature",
            (9, 10),
        ),
        (BASE.replace("input:\n", "input:\n  path: other.csv\n"), "input.path", (2, 3)),
    ],
)
def test_a_key_given_twice_at_any_level_names_both_lines(
    tmp_path: Path, text: str, dotted: str, lines: tuple[int, int]
) -> None:
    message = config_error(tmp_path, text)

    assert message.endswith(
        f": config key '{dotted}' is defined twice, lines {lines[0]} and {lines[1]}; write it "
        "once (YAML would keep only the last)"
    )


def test_a_key_given_twice_on_one_line_names_the_line(tmp_path: Path) -> None:
    message = config_error(tmp_path, BASE + "model: {name: a, name: b}\n")

    assert message.endswith(
        ": config key 'model.name' is defined twice, on line 7; write it once (YAML would keep "
        "only the last)"
    )


def test_a_merge_key_s_values_may_be_overridden(tmp_path: Path) -> None:
    text = BASE + (
        "model:\n  params:\n    <<: {temperature: 0, max_tokens: 8}\n    temperature: 1\n"
    )
    config = load_text(tmp_path, text)

    assert config.model.params == {"temperature": 1, "max_tokens": 8}


def test_set_replaces_a_key_without_being_a_duplicate(tmp_path: Path) -> None:
    config = load_text(tmp_path, BASE + "run:\n  concurrency: 2\n", ["run.concurrency=3"])

    assert config.run.concurrency == 3


# --- empty values where none makes sense -------------------------------------------------


@pytest.mark.parametrize(
    ("dotted", "optional"),
    [
        ("model.name", False),
        ("model.base_url", False),
        ("prompt.template", False),
        ("prompt.system", True),
        ("input.path", False),
        ("output.path", False),
        ("output.column", False),
        ("run.store", True),
    ],
)
@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_value_from_set_is_an_error_naming_the_key(
    tmp_path: Path, dotted: str, optional: bool, value: str
) -> None:
    message = config_error(tmp_path, BASE, [f"{dotted}={value}"])

    unset = " (null, or leaving the key out, means unset)" if optional else ""
    assert message == (
        f"{tmp_path / 'job.yaml'}: config key '{dotted}' (from --set): may not be empty{unset}"
    )


def test_an_empty_value_in_the_file_names_its_line(tmp_path: Path) -> None:
    message = config_error(tmp_path, BASE.replace('"Q: {{ q }}"', "''") + "model:\n  name: ''\n")

    assert message.endswith(
        ": config key 'prompt.template' (line 4): may not be empty; config key 'model.name' "
        "(line 8): may not be empty"
    )


def test_an_empty_variable_makes_an_empty_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIPE_TEST_EMPTY", "")
    message = config_error(tmp_path, BASE + "model:\n  name: ${PIPE_TEST_EMPTY}\n")

    assert message.endswith(": config key 'model.name' (line 8): may not be empty")


def test_null_still_unsets_an_optional_key(tmp_path: Path) -> None:
    config = load_text(tmp_path, BASE, ["run.store=null", "prompt.system=null"])

    assert config.run.store is None and config.prompt.system is None


# --- keys that name an environment variable ----------------------------------------------

NOT_A_NAME = (
    "is not the name of an environment variable (letters, digits and _, not starting with a "
    "digit); it looks like a key itself, so it is not shown: put the key in an environment "
    "variable and write that variable's name here"
)


@pytest.mark.parametrize(
    "dotted",
    [
        "model.api_key_env",
        "oxen.api_key_env",
        "input.storage_options.access_key_id_env",
        "output.storage_options.secret_access_key_env",
        "input.storage_options.session_token_env",
    ],
)
@pytest.mark.parametrize("value", ["sk-live-SECRET999", "1KEY", "MY KEY", "$MY_KEY"])
def test_a_key_variable_setting_must_be_a_name_and_is_never_shown(
    tmp_path: Path, dotted: str, value: str
) -> None:
    text = BASE.replace("data/in.csv", "s3://my-bucket/in.csv").replace(
        "out/answers.parquet", "s3://my-bucket/out.parquet"
    )
    message = config_error(tmp_path, text, [f"{dotted}={value}"])

    assert message == f"{tmp_path / 'job.yaml'}: config key '{dotted}' (from --set): {NOT_A_NAME}"
    assert value not in message


def test_an_empty_key_variable_setting_asks_for_a_name(tmp_path: Path) -> None:
    message = config_error(tmp_path, BASE, ["model.api_key_env="])

    assert message.endswith(
        "config key 'model.api_key_env' (from --set): may not be empty: give the name of the "
        "variable that holds the key"
    )


def test_a_key_substituted_into_api_key_env_names_the_variable_not_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OXEN_API_KEY", "sk-live-SECRET999")
    message = config_error(tmp_path, BASE + "model:\n  api_key_env: ${OXEN_API_KEY}\n")

    assert message == (
        f"{tmp_path / 'job.yaml'}: config key 'model.api_key_env' (line 8): ${{OXEN_API_KEY}} "
        "is replaced by the value of OXEN_API_KEY, which is not a variable name and looks like "
        "a key itself, so it is not shown; write the variable's name instead: api_key_env: "
        "OXEN_API_KEY"
    )


@pytest.mark.parametrize("name", ["OXEN_API_KEY", "_k", "key2", "a"])
def test_a_variable_name_is_accepted(tmp_path: Path, name: str) -> None:
    assert load_text(tmp_path, BASE, [f"model.api_key_env={name}"]).model.api_key_env == name


@pytest.mark.parametrize(
    "url",
    [
        "ftp://user:pw-SECRET@host/v1",
        "host/v1",
        "http://user:pw-SECRET@/v1",
        "http://user:pw-SECRET@host:99999/v1",
        "http://host:0/v1",
        "http://host:port/v1",
    ],
)
def test_base_url_must_be_an_http_url_and_is_not_shown(tmp_path: Path, url: str) -> None:
    message = config_error(tmp_path, BASE, [f"model.base_url={url}"])

    assert message == (
        f"{tmp_path / 'job.yaml'}: config key 'model.base_url' (from --set): Value error, must "
        "be an http:// or https:// URL with a host and, if any, a port from 1 to 65535, e.g. "
        "https://api.openai.com/v1"
    )


@pytest.mark.parametrize(
    "url", ["https://api.openai.com/v1", "http://[::1]:8080/v1", "http://user:pw@host/v1"]
)
def test_an_http_base_url_is_accepted(tmp_path: Path, url: str) -> None:
    assert load_text(tmp_path, BASE, [f"model.base_url={url}"]).model.base_url == url
