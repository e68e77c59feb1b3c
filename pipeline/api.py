"""Library API: the same engine (store, limiter, retries, parsing) on an in-memory frame."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx
import polars as pl
from pydantic import BaseModel, ValidationError

from .checks import check_new_columns
from .config import DEFAULT_MODEL, Config, ModelConfig, OutputConfig, PromptConfig
from .ending import log_run
from .errors import ConfigError, PipelineError, RunStopped
from .execute import execute
from .render import Renderer
from .runconfig import RunConfig
from .summary import Summary

T = TypeVar("T")

DEFAULT_STORE = Path(".pipeline") / "map_rows.db"
_FIXED = {"template", "name", "path", "column"}  # map_rows' own arguments and the frame


def _keys(model: type[BaseModel]) -> tuple[str, ...]:
    return tuple(
        field.alias or name for name, field in model.model_fields.items() if name not in _FIXED
    )


# Every config key of these sections can be passed by name: the models are the one list.
_SECTIONS = {
    "prompt": _keys(PromptConfig),
    "model": _keys(ModelConfig),
    "output": _keys(OutputConfig),
    "run": _keys(RunConfig),
}


def make_config(template: str, model: str, output_column: str, options: dict[str, Any]) -> Config:
    """A Config for an in-memory frame; option names are the config keys of each section."""
    data: dict[str, dict[str, Any]] = {
        "input": {"path": "<frame>"},
        "prompt": {"template": template},
        "model": {"name": model},
        "output": {"path": "<frame>.parquet", "column": output_column},
        "run": {"store": DEFAULT_STORE},
    }
    for name, value in options.items():
        section = next((s for s, keys in _SECTIONS.items() if name in keys), None)
        if section is None:
            known = sorted(k for keys in _SECTIONS.values() for k in keys)
            raise ConfigError(
                f"map_rows got an unknown option '{name}'; options: {', '.join(known)}"
            )
        data[section][name] = value
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"map_rows option {where}: {first['msg']}") from None


async def amap_rows(
    df: pl.DataFrame,
    *,
    template: str,
    model: str = DEFAULT_MODEL,
    output_column: str = "answer",
    transport: httpx.AsyncBaseTransport | None = None,
    **options: Any,
) -> pl.DataFrame:
    """`map_rows` for code already inside an event loop."""
    config = make_config(template, model, output_column, options)
    renderer = Renderer(config.prompt, config.model, df.columns, config.output, Path())
    check_new_columns(config, df.columns)
    parts: list[pl.DataFrame] = []
    size = config.run.chunk_rows
    frames = (df.slice(start, size) for start in range(0, max(df.height, 1), size))
    summary = Summary(output="<frame>", fail_threshold=config.run.fail_threshold)
    try:
        await execute(
            config,
            renderer,
            frames,
            parts.append,
            summary=summary,
            total=df.height,
            transport=transport,
        )
    except PipelineError as exc:
        summary.fail(exc)
        raise
    finally:
        log_run(summary, config, "map_rows")
    answered = pl.concat(parts) if parts else df
    if summary.stopped:
        raise RunStopped(summary.stopped, partial=answered)
    return answered


def map_rows(
    df: pl.DataFrame,
    *,
    template: str,
    model: str = DEFAULT_MODEL,
    output_column: str = "answer",
    **options: Any,
) -> pl.DataFrame:
    """Run one chat request per row of `df` and return it with the answer column(s) added.

    Options are the config keys by name (`system`, `base_url`, `params`, `concurrency`,
    `store`, `parse`, `labels`, `schema`, ...). Answers are kept in the store
    (default `.pipeline/map_rows.db`), so calling again sends nothing already answered.

    A row that fails or does not parse gets a null answer (`include_meta=True` adds
    `_status` and `_error`). A run that stops early (key or model rejected, budget reached,
    endpoint down, every request the same error) raises `RunStopped`, whose `partial` is
    the frame with what was answered (None when nothing was sent).
    """
    coroutine = amap_rows(
        df, template=template, model=model, output_column=output_column, **options
    )
    return _run_sync(coroutine)


def _run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    # Inside a running loop (a notebook): run on a fresh loop in a worker thread.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()
