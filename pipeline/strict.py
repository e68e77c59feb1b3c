"""The shared pydantic base of the config models (unknown keys forbidden, frozen), and the
checks several of their keys share: not empty, an environment variable's name."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic_core import PydanticCustomError

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def not_blank(value: Any, *, optional: bool = False) -> Any:
    """Refuse an empty (or all-blank) string where one makes no sense: a name, path or
    template."""
    if isinstance(value, str) and not value.strip():
        unset = " (null, or leaving the key out, means unset)" if optional else ""
        raise PydanticCustomError("blank", f"may not be empty{unset}")
    return value


def env_name(value: Any) -> Any:
    """A key that names an environment variable takes a name, never the secret itself.

    The value is not put in the message: a value that is not a name is most likely the key.
    """
    if isinstance(value, str) and not ENV_NAME.fullmatch(value):
        if not value.strip():
            raise PydanticCustomError(
                "blank", "may not be empty: give the name of the variable that holds the key"
            )
        raise PydanticCustomError(
            "env_name",
            "is not the name of an environment variable (letters, digits and _, not starting "
            "with a digit); it looks like a key itself, so it is not shown: put the key in an "
            "environment variable and write that variable's name here",
        )
    return value
