"""The exported surface: one exception tree, every error reachable from the package."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pipeline
from pipeline.errors import PipelineError


def _modules() -> list[object]:
    return [
        importlib.import_module(f"pipeline.{info.name}")
        for info in pkgutil.iter_modules(pipeline.__path__)
        if info.name != "__main__"
    ]


def test_every_exception_class_descends_from_pipeline_error_or_is_private() -> None:
    strays = []
    for module in _modules():
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == module.__name__  # type: ignore[attr-defined]
                and not name.startswith("_")
                and not issubclass(value, PipelineError)
            ):
                strays.append(f"{module.__name__}.{name}")  # type: ignore[attr-defined]
    assert strays == []


def test_the_package_exports_every_public_error() -> None:
    errors = importlib.import_module("pipeline.errors")
    public = {
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value) and issubclass(value, PipelineError)
    }
    assert public <= set(pipeline.__all__)
    for name in public:
        assert getattr(pipeline, name) is getattr(errors, name)
