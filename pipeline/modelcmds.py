"""The `pipeline models` commands: list the models an endpoint serves, or show one model.

The endpoint and the key's environment variable come from --base-url and --api-key-env,
else from the model section of --config, else the defaults. `list` prints one id a line,
`show` one model object as JSON; on a 401/403 the error says which variable should hold
the key, as `pipeline run` does.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable

from .catalog import Catalog, key_advice, model_id
from .config import DEFAULT_BASE_URL, DEFAULT_KEY_ENV
from .configfile import load
from .errors import CatalogUnavailable, ConfigError, PipelineError, RunStopped
from .strict import ENV_NAME
from .summary import EXIT_OK


def _catalog(args: argparse.Namespace) -> tuple[Catalog, Callable[[CatalogUnavailable], str]]:
    """The catalog the arguments name, and what to say when it answers with an error: on a
    401/403, which variable should hold the key, as `run` says."""
    base_url, key_env = DEFAULT_BASE_URL, DEFAULT_KEY_ENV
    setting = "the default; --api-key-env names another"
    if args.config:
        config = load(args.config)
        base_url, key_env = config.model.base_url, config.model.api_key_env
        setting = f"model.api_key_env in {args.config}"
    if args.api_key_env:
        if not ENV_NAME.fullmatch(args.api_key_env):
            raise ConfigError(
                "--api-key-env takes the name of an environment variable (letters, digits "
                "and _, not starting with a digit); this looks like a key itself, so it is not "
                "shown: put the key in a variable and pass that variable's name"
            )
        key_env, setting = args.api_key_env, "--api-key-env"
    key = os.environ.get(key_env) or None

    def explain(exc: CatalogUnavailable) -> str:
        if exc.status in (401, 403):
            return key_advice(key_env, key is not None, str(exc), setting)
        return str(exc)

    return Catalog(args.base_url or base_url, key), explain


def cmd_models_list(args: argparse.Namespace) -> int:
    catalog, explain = _catalog(args)
    try:
        models = catalog.list()
    except CatalogUnavailable as exc:
        raise PipelineError(f"cannot list models: {explain(exc)}") from None
    finally:
        catalog.close()
    if models is None:
        raise PipelineError("the endpoint serves no model list (GET /models answered 404)")
    for item in models:
        name = model_id(item)
        if not args.search or args.search.lower() in name.lower():
            print(name)
    return EXIT_OK


def cmd_models_show(args: argparse.Namespace) -> int:
    catalog, explain = _catalog(args)
    try:
        found = catalog.find(args.model_id)
    except CatalogUnavailable as exc:
        raise PipelineError(f"cannot read model '{args.model_id}': {explain(exc)}") from None
    finally:
        catalog.close()
    if found is None:
        raise RunStopped(
            f"the endpoint does not serve model '{args.model_id}' (neither GET /models/"
            f"{args.model_id} nor GET /models has it); `pipeline models list` shows what it serves"
        )
    print(json.dumps(found, indent=2, ensure_ascii=False))
    return EXIT_OK
