"""The README and the CLI's help stay in step."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from pipeline.cli import EPILOG, build_parser

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def subcommands(parser: argparse.ArgumentParser, prefix: str) -> dict[str, argparse.ArgumentParser]:
    """Every leaf command, by its full name ("pipeline run", "pipeline models list")."""
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.update(subcommands(sub, f"{prefix} {name}") or {f"{prefix} {name}": sub})
    return found


def test_every_command_and_option_is_in_the_readme() -> None:
    commands = subcommands(build_parser(), "pipeline")
    assert {"pipeline run", "pipeline reparse", "pipeline models list"} <= set(commands)
    for name, sub in commands.items():
        assert f"{name} " in README, name
        for action in sub._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert flag in README, f"{name} {flag} is not documented"


def test_every_exit_code_is_in_the_readme_table() -> None:
    for code, meaning in re.findall(r"^  (\d+) +(.+)$", EPILOG, flags=re.MULTILINE):
        assert re.search(rf"^\| {code} \|", README, flags=re.MULTILINE), (code, meaning)


def test_every_config_key_is_in_the_readme() -> None:
    from pipeline.config import Config

    for section, field in Config.model_fields.items():
        assert f"{section}:" in README
        model = field.annotation
        for key, sub in getattr(model, "model_fields", {}).items():
            key = sub.alias or key
            assert f"{key}:" in README, f"{section}.{key} is not documented"
