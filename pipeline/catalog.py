"""Model catalog: what the endpoint serves, at what price, with which parameters.

Reads `GET {base_url}/models` and `GET {base_url}/models/{id}`. Before a run sends its first
chat request it checks the model here; an endpoint without the per-model route (llama.cpp's
server lists models only) is checked against the list, and one without either is skipped.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from typing import Any

import httpx

from .client import error_detail
from .config import ModelConfig
from .errors import CatalogUnavailable, EndpointUnreachable, RunStopped
from .redact import redact_in, redact_url

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Price:
    """USD per token, and where the figures came from."""

    input_per_token: float
    output_per_token: float
    source: str

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return prompt_tokens * self.input_per_token + completion_tokens * self.output_per_token


class Catalog:
    """A small synchronous client for the model routes."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout_s: float = 15,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._base_url = base_url
        self._client = httpx.Client(
            base_url=base_url.rstrip("/") + "/",
            headers=headers,
            timeout=timeout_s,
            transport=transport,
        )

    def close(self) -> None:
        self._client.close()

    def _get(self, path: str) -> Any:
        try:
            response = self._client.get(path)
        except httpx.HTTPError as exc:
            message = redact_in(f"{type(exc).__name__}: {exc}", self._base_url)
            if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
                raise EndpointUnreachable(message) from None
            raise CatalogUnavailable(message) from None
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            detail = error_detail(response.status_code, response.text)
            raise CatalogUnavailable(
                f"HTTP {response.status_code}: {detail}", status=response.status_code
            )
        try:
            return response.json()
        except ValueError:
            raise CatalogUnavailable("the answer is not JSON") from None

    def list(self) -> list[dict[str, Any]] | None:
        """Every model the endpoint lists, or None when it has no such route."""
        body = self._get("models")
        if body is None:
            return None
        items = body.get("data", body.get("models")) if isinstance(body, dict) else body
        if not isinstance(items, list):
            raise CatalogUnavailable("the model list has no 'data' array")
        return [item for item in items if isinstance(item, dict)]

    def show(self, model_id: str) -> dict[str, Any] | None:
        """The model object, or None when the endpoint says 404."""
        body = self._get(f"models/{model_id}")
        if isinstance(body, dict) and isinstance(body.get("data"), dict):
            body = body["data"]
        return body if isinstance(body, dict) else None

    def find(self, name: str) -> dict[str, Any] | None:
        """The model from its own route, else its entry in the list; None: served by neither.

        llama.cpp's server answers 404 to `GET /models/{id}` but lists its model.
        """
        found = self.show(name)
        if found is not None:
            return found
        return next((item for item in self.list() or [] if model_id(item) == name), None)


def model_id(item: dict[str, Any]) -> str:
    return str(item.get("id") or item.get("name") or "")


@dataclass(frozen=True, slots=True)
class Preflight:
    """The model object when the endpoint serves one; `error` when the model is unknown."""

    model: dict[str, Any] | None = None
    error: str | None = None
    note: str | None = None


def preflight(catalog: Catalog, name: str, *, strict: bool = False) -> Preflight:
    """Check that the endpoint serves `name`, as far as its routes allow; `strict` (validate)
    raises `EndpointUnreachable` where a run goes on (its requests are retried)."""
    try:
        found = catalog.show(name)
        if found is not None:
            return Preflight(model=found)
        listed = catalog.list()
    except CatalogUnavailable as exc:
        if exc.status in (401, 403):
            raise  # the key: every chat request would be refused too
        if strict and isinstance(exc, EndpointUnreachable):
            raise
        return Preflight(note=f"could not check model '{name}' ({exc}); going on")
    if listed is None:
        return Preflight(note="the endpoint serves no model list; model check skipped")
    ids = [model_id(item) for item in listed]
    if name in ids:
        return Preflight(note=f"model '{name}' is listed (no per-model route to read details)")
    close = difflib.get_close_matches(name, ids, n=5, cutoff=0.3) or ids[:5]
    return Preflight(
        error=f"the endpoint does not serve model '{name}' (config key model.name); "
        f"available models include: {', '.join(close) or 'none listed'}"
    )


def check_model(model: ModelConfig, api_key: str | None, *, strict: bool = False) -> Preflight:
    """Preflight `model.name` at `model.base_url`; raise `RunStopped` when it is not served,
    and with `strict` when the endpoint cannot be reached."""
    catalog = Catalog(model.base_url, api_key)
    try:
        checked = preflight(catalog, model.name, strict=strict)
    except EndpointUnreachable as exc:
        raise RunStopped(
            f"cannot reach the endpoint {redact_url(model.base_url)} (config key "
            f"model.base_url): {exc}; check the address and that the server is up"
        ) from None
    except CatalogUnavailable as exc:
        raise RunStopped(key_advice(model.api_key_env, api_key is not None, str(exc))) from None
    finally:
        catalog.close()
    if checked.error:
        raise RunStopped(checked.error)
    return checked


def key_advice(key_env: str, key_set: bool, answer: str, setting: str = "model.api_key_env") -> str:
    """What to do when the endpoint refuses the key (401/403); `setting` names where the
    variable `key_env` was chosen."""
    if not key_set:
        return (
            f"the endpoint refused the request ({answer}) and the variable "
            f"{key_env} is not set: put your API key there ({setting})"
        )
    return f"the endpoint rejected the API key ({answer}): check the variable {key_env}"


def price(model: ModelConfig, found: dict[str, Any] | None) -> Price | None:
    """The config's `model.pricing` if set, else the model object's, else unknown."""
    if model.pricing is not None:
        return Price(
            model.pricing.input_per_million / 1e6,
            model.pricing.output_per_million / 1e6,
            "config",
        )
    pricing = (found or {}).get("pricing")
    if not isinstance(pricing, dict):
        return None
    try:
        return Price(
            float(pricing["input_cost_per_token"]),
            float(pricing["output_cost_per_token"]),
            "endpoint",
        )
    except (KeyError, TypeError, ValueError):
        return None


def check_params(params: dict[str, Any], found: dict[str, Any]) -> list[str]:
    """Problems with `model.params` under the model's request schema (empty when fine)."""
    import jsonschema  # slow to import; only `validate` needs it

    schema = found.get("request_schema") or found.get("json_request_schema")
    if not isinstance(schema, dict):
        return []
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        return []
    problems = []
    for name, value in params.items():
        if name not in properties:
            accepted = ", ".join(sorted(properties))
            problems.append(
                f"model.params.{name}: the model does not accept '{name}' (accepted: {accepted})"
            )
            continue
        sub = properties[name]
        if isinstance(sub, dict):
            error = jsonschema.exceptions.best_match(
                jsonschema.Draft202012Validator(sub).iter_errors(value)
            )
            if error is not None:
                problems.append(f"model.params.{name}: {error.message}")
    return problems
