"""Unit tests for `pipeline.render`: rows -> chat requests, store keys, token estimates."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.config import ModelConfig, PromptConfig
from pipeline.errors import InputError, RowError
from pipeline.render import DEFAULT_RESERVE, Renderer, estimate_tokens, request_key

HYPOTHESIS = settings(max_examples=60, deadline=None, database=None)
KEY = re.compile(r"^r1:[0-9a-f]{64}$")


def renderer(
    template: str = "Ticket: {{ text }}",
    *,
    system: str | None = None,
    skip_null: list[str] | None = None,
    columns: tuple[str, ...] = ("id", "text", "channel"),
    name: str = "m",
    params: dict[str, Any] | None = None,
) -> Renderer:
    prompt = PromptConfig(system=system, template=template, skip_null=skip_null or [])
    model = ModelConfig(name=name, params=params or {})
    return Renderer(prompt, model, columns)


# --- rendering ---------------------------------------------------------------------------


def test_renders_system_and_user_messages_and_body() -> None:
    r = renderer(
        "[{{ channel }}] {{ text }}",
        system="Answer in {{ channel }} style.",
        params={"temperature": 0, "max_tokens": 16},
    )
    request = r.render({"id": 1, "text": "help", "channel": "email"})

    assert request is not None
    messages = [
        {"role": "system", "content": "Answer in email style."},
        {"role": "user", "content": "[email] help"},
    ]
    assert request.body == {
        "model": "m",
        "messages": messages,
        "temperature": 0,
        "max_tokens": 16,
    }
    assert request.key == request_key("m", messages, {"temperature": 0, "max_tokens": 16})
    assert r.variables == ["channel", "text"]


def test_without_system_only_a_user_message_is_sent() -> None:
    request = renderer().render({"text": "hi"})

    assert request is not None
    assert request.body["messages"] == [{"role": "user", "content": "Ticket: hi"}]
    assert set(request.body) == {"model", "messages"}


def test_body_is_json_serialisable_with_non_string_cells() -> None:
    request = renderer("{{ id }} costs {{ text }}").render({"id": 7, "text": 1.5})

    assert request is not None
    assert request.body["messages"][0]["content"] == "7 costs 1.5"
    json.dumps(request.body)


def test_null_cell_renders_as_empty_string() -> None:
    request = renderer("<{{ text }}|{{ channel }}>").render({"text": None, "channel": "web"})

    assert request is not None
    assert request.body["messages"][0]["content"] == "<|web>"


def test_null_cell_prints_as_empty_text_on_the_jinja_path_too() -> None:
    request = renderer("<{{ text }}|{{ channel | default('x') }}>{% if id %}!{% endif %}").render(
        {"id": None, "text": None, "channel": None}
    )

    assert request is not None
    assert request.body["messages"][0]["content"] == "<|>"


def test_null_cells_are_none_to_jinja_tests_and_filters() -> None:
    r = renderer(
        "{% if text is none %}no text{% else %}{{ text }}{% endif %}; "
        "{{ channel | default('web', true) }}; {{ id is none }}"
    )
    empty = r.render({"id": None, "text": None, "channel": None})
    full = r.render({"id": 3, "text": "", "channel": "email"})

    assert empty is not None and full is not None
    assert empty.body["messages"][0]["content"] == "no text; web; True"
    assert full.body["messages"][0]["content"] == "; email; False"


@pytest.mark.parametrize(
    ("template", "system", "key"),
    [
        (  # the plain (str.format_map) path
            "Product: {{ name }}, price: {{ price }}",
            "Be brief.",
            "r1:e50aaf6225f779f9f30333c4338aa9bd69b685aab166963bf3114a340933608a",
        ),
        (  # the Jinja path
            "{{ name }}: {{ price }}{% if price %} costs {{ price }}{% endif %}.",
            None,
            "r1:d1e29c1a5b0e3daf56b7b356f5a4eb02569c4ed208eb95edb3c4278b0ac054dc",
        ),
    ],
)
def test_a_null_cell_keeps_the_store_key_of_earlier_versions(
    template: str, system: str | None, key: str
) -> None:
    # Pinned: keys of stores written when nulls were rendered as "" before Jinja saw them.
    r = renderer(template, system=system, columns=("name", "price"), params={"temperature": 0})
    request = r.render({"name": "lamp", "price": None})

    assert request is not None
    assert request.key == key


def test_trailing_newline_is_kept() -> None:
    request = renderer("{{ text }}\n").render({"text": "x"})

    assert request is not None
    assert request.body["messages"][0]["content"] == "x\n"


@pytest.mark.parametrize(
    ("row", "skipped"),
    [
        ({"text": None, "channel": "web"}, True),
        ({"text": "", "channel": "web"}, False),
        ({"text": "hi", "channel": None}, False),
    ],
)
def test_skip_null_skips_only_rows_with_null_in_those_columns(
    row: dict[str, Any], skipped: bool
) -> None:
    request = renderer("{{ text }} {{ channel }}", skip_null=["text"]).render(row)

    assert (request is None) is skipped


def test_skip_null_column_need_not_be_in_template() -> None:
    r = renderer("{{ text }}", skip_null=["id"])

    assert r.render({"id": None, "text": "x"}) is None
    assert r.render({"id": 3, "text": "x"}) is not None


def test_missing_template_column_names_it_and_lists_columns() -> None:
    with pytest.raises(InputError) as info:
        renderer("{{ txt }}", columns=("id", "text"))

    message = str(info.value)
    assert "'txt'" in message
    assert "prompt template" in message
    assert "id, text" in message


def test_missing_column_in_system_template_is_found() -> None:
    with pytest.raises(InputError, match="'lang'"):
        renderer("{{ text }}", system="Reply in {{ lang }}.")


def test_missing_skip_null_column_is_named_as_skip_null() -> None:
    with pytest.raises(InputError, match=r"prompt\.skip_null uses column 'nope'"):
        renderer("{{ text }}", skip_null=["nope"])


@pytest.mark.parametrize(
    "template", ["{{ text ", "{% if text %}x", "{{ text | no_such_filter }}", "{% endfor %}"]
)
def test_template_syntax_error_is_input_error(template: str) -> None:
    with pytest.raises(InputError, match="prompt template, line 1"):
        renderer(template)


def test_syntax_error_in_system_template_is_input_error() -> None:
    with pytest.raises(InputError, match="prompt template"):
        renderer("{{ text }}", system="{% if %}")


def test_loop_variables_and_filters_are_not_taken_for_columns() -> None:
    r = renderer("{% for w in text.split() %}[{{ w | upper }}]{% endfor %}")

    assert r.variables == ["text"]
    request = r.render({"text": "a b"})
    assert request is not None
    assert request.body["messages"][0]["content"] == "[A][B]"


# --- images ------------------------------------------------------------------------------

PNG = b"\x89PNG\r\n\x1a\n"


def image_renderer(base: Path, **prompt: Any) -> Renderer:
    config = PromptConfig(template="{{ text }}", images=["img"], **prompt)
    return Renderer(config, ModelConfig(name="m"), ("text", "img"), image_base=base)


def test_images_are_read_under_the_input_folder_and_the_configured_roots(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "pics").mkdir()
    (tmp_path / "in/a.png").write_bytes(PNG)
    (tmp_path / "pics/b.png").write_bytes(PNG)
    narrow = image_renderer(tmp_path / "in")
    wide = image_renderer(tmp_path / "in", image_roots=[tmp_path / "pics"])

    assert narrow.render({"text": "x", "img": "a.png"}) is not None
    with pytest.raises(RowError, match="outside the allowed folders"):
        narrow.render({"text": "x", "img": "../pics/b.png"})
    request = wide.render({"text": "x", "img": "../pics/b.png"})
    assert request is not None
    assert request.body["messages"][0]["content"][1]["image_url"]["url"].startswith(
        "data:image/png;base64,"
    )


def test_the_image_size_cap_comes_from_the_prompt_config(tmp_path: Path) -> None:
    (tmp_path / "big.png").write_bytes(PNG + b"\0" * 2_000_000)

    assert image_renderer(tmp_path, image_max_mb=3).render({"text": "x", "img": "big.png"})
    with pytest.raises(RowError, match="too big"):
        image_renderer(tmp_path, image_max_mb=1).render({"text": "x", "img": "big.png"})


def test_a_null_image_cell_sends_text_only(tmp_path: Path) -> None:
    request = image_renderer(tmp_path).render({"text": "x", "img": None})

    assert request is not None
    assert request.body["messages"] == [{"role": "user", "content": "x"}]


# --- keys --------------------------------------------------------------------------------


def test_key_is_stable_and_versioned() -> None:
    row = {"text": "same"}
    first = renderer().render(row)
    second = renderer().render(dict(row))

    assert first is not None and second is not None
    assert KEY.match(first.key)
    assert first.key == second.key


def test_identical_text_from_different_rows_shares_a_key() -> None:
    r = renderer("{{ text }}")
    a = r.render({"id": 1, "text": "dup", "channel": "x"})
    b = r.render({"id": 2, "text": "dup", "channel": "y"})

    assert a is not None and b is not None
    assert a.key == b.key


def test_key_is_a_documented_contract() -> None:
    # Pinned: a change here invalidates every store; bump KEY_VERSION instead.
    key = request_key("m", [{"role": "user", "content": "hi"}], {"temperature": 0})

    canonical = b'{"messages":[{"content":"hi","role":"user"}],"model":"m","temperature":0}'
    assert key == "r1:" + hashlib.sha256(canonical).hexdigest()


def test_key_changes_with_model_messages_and_params() -> None:
    messages = [{"role": "user", "content": "hi"}]
    base = request_key("m", messages, {"temperature": 0})

    assert request_key("m2", messages, {"temperature": 0}) != base
    assert request_key("m", [{"role": "user", "content": "hi!"}], {"temperature": 0}) != base
    assert request_key("m", [{"role": "system", "content": "hi"}], {"temperature": 0}) != base
    assert request_key("m", messages, {"temperature": 1}) != base
    assert request_key("m", messages, {}) != base


def test_changed_template_or_system_prompt_asks_anew() -> None:
    row = {"text": "x"}
    plain = renderer("{{ text }}").render(row)
    other_template = renderer("{{ text }}.").render(row)
    with_system = renderer("{{ text }}", system="Be brief.").render(row)

    assert plain is not None and other_template is not None and with_system is not None
    assert len({plain.key, other_template.key, with_system.key}) == 3


json_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=10,
)
params_strategy = st.dictionaries(
    st.text(min_size=1, max_size=10).filter(
        lambda k: k not in ("model", "messages", "max_tokens", "max_completion_tokens")
    ),
    json_values,
    max_size=6,
)


def reversed_dict(value: Any) -> Any:
    """The same JSON value with every mapping's insertion order reversed."""
    if isinstance(value, dict):
        return {k: reversed_dict(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [reversed_dict(v) for v in value]
    return value


@HYPOTHESIS
@given(model=st.text(max_size=20), content=st.text(), params=params_strategy)
def test_key_ignores_mapping_order(model: str, content: str, params: dict[str, Any]) -> None:
    messages = [{"role": "user", "content": content}]
    key = request_key(model, messages, params)

    assert KEY.match(key)
    assert request_key(model, reversed_dict(messages), reversed_dict(params)) == key


@HYPOTHESIS
@given(a=st.text(), b=st.text())
def test_different_contents_give_different_keys(a: str, b: str) -> None:
    key_a = request_key("m", [{"role": "user", "content": a}], {})
    key_b = request_key("m", [{"role": "user", "content": b}], {})

    assert (key_a == key_b) == (a == b)


@HYPOTHESIS
@given(params=params_strategy, text=st.text(max_size=50))
def test_rendered_key_matches_request_key_of_its_body(params: dict[str, Any], text: str) -> None:
    r = renderer("{{ text }}", params=params)
    request = r.render({"text": text})

    assert request is not None
    assert request.key == request_key("m", [{"role": "user", "content": text}], params)


# --- token estimates ---------------------------------------------------------------------


def test_estimate_uses_max_tokens_then_max_completion_tokens_then_default() -> None:
    assert estimate_tokens(400, {"max_tokens": 16}) == 100 + 1 + 16
    assert estimate_tokens(400, {"max_completion_tokens": 32}) == 100 + 1 + 32
    assert estimate_tokens(400, {"max_tokens": 8, "max_completion_tokens": 32}) == 100 + 1 + 8
    assert estimate_tokens(400, {}) == 100 + 1 + DEFAULT_RESERVE
    assert estimate_tokens(0, {}) == 1 + DEFAULT_RESERVE


def test_render_estimate_counts_all_message_chars_and_max_tokens() -> None:
    r = renderer("{{ text }}", system="abcd", params={"max_tokens": 10})
    request = r.render({"text": "x" * 36})

    assert request is not None
    assert request.est_tokens == (4 + 36) // 4 + 1 + 10


@HYPOTHESIS
@given(chars=st.integers(0, 10**7), reserve=st.integers(1, 10**5))
def test_estimate_grows_with_text_and_reserve(chars: int, reserve: int) -> None:
    estimate = estimate_tokens(chars, {"max_tokens": reserve})

    assert estimate > reserve
    assert estimate_tokens(chars + 4, {"max_tokens": reserve}) == estimate + 1
    assert estimate_tokens(chars, {"max_tokens": reserve + 1}) == estimate + 1


# --- plain templates skip Jinja and must render exactly as Jinja would ---------------------

_text = st.text(alphabet=st.characters(blacklist_characters="{}%#"), max_size=30)
_value = st.one_of(
    st.none(), st.text(max_size=20), st.integers(), st.floats(allow_nan=False), st.booleans()
)


@given(
    st.lists(st.tuples(_text, st.sampled_from(["a", "b", "c"])), max_size=5),
    _text,
    st.fixed_dictionaries({"a": _value, "b": _value, "c": _value}),
)
def test_plain_templates_render_as_jinja_does(
    pieces: list[tuple[str, str]], tail: str, values: dict[str, object]
) -> None:
    import jinja2

    from pipeline.render import _finalize, _Text

    source = "".join(f"{text}{{{{ {name} }}}}" for text, name in pieces) + tail
    env = jinja2.Environment(
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True, finalize=_finalize
    )
    fast = _Text(env, source)
    assert fast._parts is not None
    assert fast.render(values) == env.from_string(source).render(values)


def test_templates_with_filters_or_logic_use_jinja() -> None:
    import jinja2

    from pipeline.render import plain_parts

    env = jinja2.Environment(keep_trailing_newline=True)
    assert plain_parts(env, "x {{ a }} y") == [(False, "x "), (True, "a"), (False, " y")]
    for source in ["{{ a|upper }}", "{% if a %}x{% endif %}", "{{ a.b }}", "{{ a ~ b }}"]:
        assert plain_parts(env, source) is None


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@given(
    st.text(max_size=10),
    st.dictionaries(
        st.text(max_size=12).filter(lambda k: k not in ("model", "messages")), _json, max_size=4
    ),
    st.lists(
        st.tuples(st.sampled_from(["system", "user"]), st.text(max_size=40)), min_size=1, max_size=3
    ),
)
def test_the_body_writer_gives_the_canonical_bytes(
    model: str, params: dict[str, object], messages: list[tuple[str, str]]
) -> None:
    from pipeline.render import _BodyWriter, canonical_body

    as_dicts = [{"role": role, "content": text} for role, text in messages]
    assert _BodyWriter(model, params).write(messages) == canonical_body(model, as_dicts, params)


# --- text times a number: a CSV `price` of "1.50" is text, and `price * 2` is refused ------

PRICE = ("price", "qty", "row")


@pytest.mark.parametrize(
    ("template", "row", "message"),
    [
        (
            "Total: {{ price * 2 }}",
            {"price": "1.50"},
            "`price * 2`: `*` between text ('1.50') and a number (2); CSV and TSV columns "
            "are text: write {{ price | float * 2 }}",
        ),
        (
            "{{ 1.2 * price }}",
            {"price": "1.50"},
            "`1.2 * price`: `*` between a number (1.2) and text ('1.50'); CSV and TSV columns "
            "are text: write {{ 1.2 * price | float }}",
        ),
        (
            "{{ price * qty }}",
            {"price": "1.50", "qty": "3"},
            "`price * qty`: `*` between text ('1.50') and text ('3'); CSV and TSV columns "
            "are text: write {{ price | float * qty | float }}",
        ),
        (
            "{{ row.price | trim * qty }}",
            {"row": {"price": " 1.5"}, "qty": 3},
            "`row.price | trim * qty`: `*` between text ('1.5') and a number (3); CSV and "
            "TSV columns are text: write {{ row.price | trim | float * qty }}",
        ),
        (
            "{% set total = row['price'] * 2 %}{{ total }}",
            {"row": {"price": "1.5"}},
            "`row['price'] * 2`: `*` between text ('1.5') and a number (2)",
        ),
        (
            "{{ (price ~ '0') * 2 }}",
            {"price": "1.5"},
            "`*` between text ('1.50') and a number (2); CSV and TSV columns are text: "
            "convert the text first with `| float` or `| int`",
        ),
    ],
)
def test_text_times_a_number_is_a_template_error_that_shows_the_fix(
    template: str, row: dict[str, Any], message: str
) -> None:
    import jinja2

    with pytest.raises(jinja2.TemplateRuntimeError) as caught:
        renderer(template, columns=PRICE).render(row)
    assert message in str(caught.value)


def test_a_long_text_operand_is_shortened_in_the_error() -> None:
    import jinja2

    with pytest.raises(jinja2.TemplateRuntimeError, match=r"text \('x{36}\.\.\.\) and"):
        renderer("{{ price * 2 }}", columns=PRICE).render({"price": "x" * 100})


@pytest.mark.parametrize(
    ("template", "row", "text"),
    [
        ("{{ price | float * 2 }}", {"price": "1.50"}, "3.0"),
        ("{{ (price | float) * 2 }}", {"price": "1.50"}, "3.0"),
        ("{{ 2 * price | int }}", {"price": "4"}, "8"),
        ("{{ price * qty }}", {"price": 1.5, "qty": 2}, "3.0"),  # Parquet numbers
        ("{{ row * 2 }}", {"row": ["a"]}, "['a', 'a']"),  # only text is refused
        ('{{ "-" * 3 }}{{ qty * "=" }}', {"qty": 2}, "---=="),  # text the template writes
    ],
)
def test_numbers_multiply_and_template_text_repeats_as_before(
    template: str, row: dict[str, Any], text: str
) -> None:
    request = renderer(template, columns=PRICE).render(row)
    assert request is not None and request.body["messages"][-1]["content"] == text


def test_only_multiplication_compiles_differently_from_plain_jinja() -> None:
    """The check costs nothing on templates without `*`: Jinja compiles them as before."""
    import jinja2

    from pipeline.templating import TemplateEnvironment

    plain, checked = jinja2.Environment(), TemplateEnvironment()
    for source in [
        "{{ a | upper }} {{ row.b }} {{ row['c'] }}{% for x in xs %}{{ x }}{% endfor %}",
        "{{ a + b - c / d // e % f ** g }}{% if n > 3 %}{{ n ~ m }}{% endif %}",
    ]:
        assert checked.compile(source, raw=True) == plain.compile(source, raw=True)
    assert "environment.multiply(" in checked.compile("{{ a * b }}", raw=True)


def test_plain_templates_still_skip_jinja() -> None:
    r = renderer("[{{ channel }}] {{ text }}", system="Be {{ channel }}.")
    assert r._template._format is not None and r._system is not None
    assert r._system._format is not None
