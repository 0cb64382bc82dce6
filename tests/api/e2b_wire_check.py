"""Parses every API response a test receives with the official ``e2b`` SDK's own REST client.

``openapi_check`` compares responses with *our* ``/openapi.json``, so it cannot see drift from what
E2B's clients read. This check asks E2B's generated client instead: the operation that answers a
request is looked up among the SDK's generated modules (``e2b.api.client.api.*`` and
``e2b.volume.client.api.*``, matched by method
and path template, both read from each module's ``_get_kwargs``), the body goes through that
module's own ``_parse_response`` (which picks the model per status and calls ``Model.from_dict``,
exactly as the SDK does), and the parsed objects are then walked against the models' declared
types. A response is wire drift when:

* the SDK's parser raises (a required field missing, an enum value E2B does not know, a bad
  timestamp, a body that is not JSON);
* a value does not have the declared type (``null`` where E2B declares a plain string, a string
  where it declares an integer, a timestamp without a UTC offset, ...);
* we send a field E2B does not define (the models keep unknown keys in ``additional_properties``),
  unless :data:`ALLOWED_EXTRA_FIELDS` allows it with a reason;
* the status is a success E2B does not document for the operation, or an error whose body is
  not ``{code, message}`` with ``code`` equal to the status (the SDKs read ``message`` for every
  error and the JS SDK reads ``code``);
* the route is not an E2B operation at all and not in :data:`NOT_E2B_OPERATIONS`.
"""

from __future__ import annotations

import datetime as dt
import enum
import importlib
import inspect
import pkgutil
import re
import types
import typing
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import attrs
import e2b.api.client.api as sdk_api
import e2b.api.client.models as sdk_models
import e2b.volume.client.api as sdk_volume_api
import e2b.volume.client.errors as volume_errors
import httpx
from e2b.api.client import errors as sdk_errors
from e2b.api.client.client import Client as SdkClient
from e2b.api.client.models import Error as SdkError
from e2b.api.client.types import Unset

# (e2b model class name, JSON key) -> why we may send a key E2B's model does not define.
ALLOWED_EXTRA_FIELDS: Mapping[tuple[str, str], str] = {
    ("SnapshotInfo", "sandboxID"): "our extension: which sandbox it was taken of",
    ("SnapshotInfo", "sizeBytes"): "our extension: the disk it takes (issue: visible disk use)",
    ("SnapshotInfo", "createdAt"): "our extension: when it was taken",
    ("ListedSandbox", "pausedBytes"): "our extension: disk a paused sandbox's memory takes",
    ("SandboxDetail", "pausedBytes"): "our extension: disk a paused sandbox's memory takes",
}

# (method, path) of routes we serve that are not E2B operations -> why; their successes are not
# parsed (no E2B model exists), their errors still must be E2B's Error shape.
NOT_E2B_OPERATIONS: Mapping[tuple[str, str], str] = {
    ("get", "/health"): "not in the SDK's generated client (E2B's answers plain text); unused",
    ("post", "/sandboxes/{sandbox_id}/rollback"): "our extension: rollback in place",
    ("get", "/sandboxes/{sandbox_id}/egress"): "our extension: the egress audit log",
    ("post", "/v2/templates"): "E2B's older template create; the SDK 2.63 calls /v3/templates",
    ("post", "/templates"): "E2B's v1 template create; the SDK 2.63 calls /v3/templates",
}


class WireDrift(AssertionError):
    pass


@dataclass(frozen=True)
class SdkOperation:
    """One generated operation module of the e2b SDK."""

    method: str
    template: str  # e.g. "/sandboxes/{sandbox_id}/connect"
    module: types.ModuleType
    pattern: re.Pattern[str]

    @property
    def name(self) -> str:
        return self.module.__name__.rsplit(".", 1)[1]


class _Placeholder:
    """Stands in for a required keyword argument (a request body, a list of ids) of _get_kwargs."""

    payload = b""  # a file upload's body

    def to_dict(self) -> dict[str, Any]:
        return {}

    def __iter__(self) -> typing.Iterator[Any]:
        return iter(())


def sdk_operations() -> list[SdkOperation]:
    """Every operation of the SDK's generated REST clients (the API's and the volume content
    API's), literal paths before templated ones."""
    ops = []
    groups = [(api, group) for api in (sdk_api, sdk_volume_api)
              for group in pkgutil.iter_modules(api.__path__)]  # fmt: skip
    for api, group in groups:
        package = importlib.import_module(f"{api.__name__}.{group.name}")
        for info in pkgutil.iter_modules(package.__path__):
            module = importlib.import_module(f"{package.__name__}.{info.name}")
            params = inspect.signature(module._get_kwargs).parameters.values()
            path_params = [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
            required_kw = {
                p.name: _Placeholder()
                for p in params
                if p.kind is p.KEYWORD_ONLY and p.default is p.empty
            }
            markers = [f"PATHPARAM{i}X" for i in range(len(path_params))]
            kwargs = module._get_kwargs(*markers, **required_kw)
            template = pattern = str(kwargs["url"])
            for marker, name in zip(markers, path_params, strict=True):
                template = template.replace(marker, "{" + name + "}")
                pattern = pattern.replace(marker, "[^/]+")
            ops.append(
                SdkOperation(
                    str(kwargs["method"]).lower(), template, module, re.compile(f"^{pattern}$")
                )
            )
    ops.sort(key=lambda op: op.template.count("{"))
    return ops


class E2bWireChecker:
    """An httpx response hook: parse the response as the official e2b SDK would, or fail.

    ``allowed_extra`` maps (e2b model name, JSON key) to a reason for sending that key anyway.
    """

    def __init__(
        self,
        allowed_extra: Mapping[tuple[str, str], str] = ALLOWED_EXTRA_FIELDS,
        not_e2b: Mapping[tuple[str, str], str] = NOT_E2B_OPERATIONS,
    ) -> None:
        for reasons in (allowed_extra, not_e2b):
            for key, reason in reasons.items():
                assert reason.strip(), f"{key} is allowed without a reason"
        self.allowed_extra = allowed_extra
        self.not_e2b = not_e2b
        self.operations = sdk_operations()
        self.sdk_client = SdkClient(base_url="http://sdk.invalid", raise_on_unexpected_status=True)
        self.checked: Counter[str] = Counter()  # operation name -> responses parsed

    def __call__(self, response: httpx.Response) -> None:
        response.read()
        self.check(response)

    def operation(self, method: str, path: str) -> SdkOperation | None:
        method = method.lower()
        return next(
            (op for op in self.operations if op.method == method and op.pattern.match(path)),
            None,
        )

    def check_json(self, method: str, path: str, status: int, body: Any) -> Any:
        """Check a body given as data (for tests of this checker)."""
        request = httpx.Request(method, "http://sdk.invalid" + path)
        return self.check(httpx.Response(status, json=body, request=request))

    def check(self, response: httpx.Response) -> Any:
        """Return what the SDK's generated client parses from ``response``; raise on drift."""
        method = response.request.method.lower()
        path = response.request.url.path
        status = response.status_code
        where = f"{method.upper()} {path} → {status}"
        op = self.operation(method, path)
        if op is None:
            if (method, path) in self.not_e2b and status < 400:
                self.checked["not-e2b"] += 1
                return None
            if status < 400:
                raise WireDrift(f"{where}: no operation of E2B's API matches this request")
            parsed: Any = self._parse_error(response, where)
            self.checked["unknown-route-error"] += 1
            return parsed
        try:
            parsed = op.module._parse_response(client=self.sdk_client, response=response)
        except (sdk_errors.UnexpectedStatus, volume_errors.UnexpectedStatus):
            if status < 400:
                raise WireDrift(f"{where}: E2B does not document {status} for {op.name}") from None
            parsed = self._parse_error(response, where)  # the SDK reads `message` of any error
        except Exception as e:  # whatever breaks the SDK's parser breaks the SDK
            raise WireDrift(f"{where}: the e2b SDK cannot parse the body: {e!r}") from e
        if parsed is None and status >= 400:  # the volume client leaves some errors unparsed
            parsed = self._parse_error(response, where)
        if parsed is None:  # the SDK ignores 204 bodies; there must be none
            if response.content:
                raise WireDrift(f"{where}: unexpected body {response.content[:200]!r}")
        else:
            self._walk_parsed(parsed, where)
            if isinstance(parsed, SdkError):
                self._check_error_code(parsed, status, where)
        self.checked[op.name] += 1
        return parsed

    def _parse_error(self, response: httpx.Response, where: str) -> SdkError:
        try:
            error = SdkError.from_dict(response.json())
        except Exception as e:
            raise WireDrift(f"{where}: not E2B's Error {{code, message}}: {e!r}") from e
        self._walk_parsed(error, where)
        self._check_error_code(error, response.status_code, where)
        return error

    @staticmethod
    def _check_error_code(error: SdkError, status: int, where: str) -> None:
        if error.code != status:
            raise WireDrift(f"{where}: Error.code {error.code!r} differs from the status")

    def check_models(self, parsed: Any, where: str) -> None:
        """Check parsed e2b model(s) against their declared types and fields; raise on drift."""
        self._walk_parsed(parsed, where)

    def _walk_parsed(self, parsed: Any, where: str) -> None:
        many = isinstance(parsed, list)
        for i, item in enumerate(parsed if many else [parsed]):
            label = f"{where}: {type(item).__name__}" + (f"[{i}]" if many else "")
            if not attrs.has(type(item)):
                raise WireDrift(f"{label}: parsed to {item!r}, not an e2b model")
            self._check(item, type(item), label)

    # -- typed walk over the parsed attrs models ---------------------------------------------

    def _check(self, value: Any, hint: Any, where: str) -> None:
        problem = self._mismatch(value, hint, where)
        if problem:
            raise WireDrift(problem)

    def _mismatch(self, value: Any, hint: Any, where: str) -> str | None:
        """None when ``value`` fits ``hint``, else a description of the first mismatch."""
        origin = typing.get_origin(hint)
        if hint is Any:
            return None
        if origin in (typing.Union, types.UnionType):
            options = typing.get_args(hint)
            problems = [self._mismatch(value, option, where) for option in options]
            if all(problems):
                names = " | ".join(_name(o) for o in options)
                return f"{where}: {value!r} is not {names}"
            return None
        if origin is list:
            if not isinstance(value, list):
                return f"{where}: {value!r} is not a list"
            (item_hint,) = typing.get_args(hint)
            for i, item in enumerate(value):
                if problem := self._mismatch(item, item_hint, f"{where}[{i}]"):
                    return problem
            return None
        if origin is dict:
            if not isinstance(value, dict):
                return f"{where}: {value!r} is not an object"
            _, value_hint = typing.get_args(hint)
            for key, item in value.items():
                if not isinstance(key, str):
                    return f"{where}: key {key!r} is not a string"
                if problem := self._mismatch(item, value_hint, f"{where}[{key!r}]"):
                    return problem
            return None
        if not isinstance(hint, type):
            return f"{where}: cannot check against {hint!r}"
        if attrs.has(hint):
            return self._model_mismatch(value, hint, where)
        if hint is type(None):
            return None if value is None else f"{where}: {value!r} is not null"
        if hint in (int, float, bool, str) and isinstance(value, bool) != (hint is bool):
            return f"{where}: {value!r} is not {hint.__name__}"
        if hint is float:
            ok = isinstance(value, int | float)  # a JSON number without a fraction is fine
        elif hint is dt.datetime:
            ok = isinstance(value, dt.datetime) and value.utcoffset() is not None
        elif hint is uuid.UUID:  # the SDK's parser already turned the string into one
            ok = isinstance(value, uuid.UUID)
        elif issubclass(hint, enum.Enum | Unset | int | str):
            ok = isinstance(value, hint)
        else:
            return f"{where}: cannot check against {hint!r}"
        return None if ok else f"{where}: {value!r} is not {hint.__name__}"

    def _model_mismatch(self, value: Any, model: type[Any], where: str) -> str | None:
        if not isinstance(value, model):
            return f"{where}: {value!r} is not {model.__name__}"
        hints = _hints(model)
        declared = [f.name for f in attrs.fields(model) if f.name != "additional_properties"]
        for name in declared:
            if problem := self._mismatch(getattr(value, name), hints[name], f"{where}.{name}"):
                return problem
        extra: dict[str, Any] = value.additional_properties
        _, extra_hint = typing.get_args(hints["additional_properties"])
        if extra_hint is not Any or not declared:  # a map (e.g. log entry fields): keys are data
            return self._mismatch(extra, dict[str, extra_hint], where)  # type: ignore[valid-type]
        unknown = sorted(k for k in extra if (model.__name__, k) not in self.allowed_extra)
        if unknown:
            return f"{where}: field(s) {unknown} are not in E2B's {model.__name__}"
        return None


_HINTS: dict[type[Any], dict[str, Any]] = {}


def _hints(model: type[Any]) -> dict[str, Any]:
    """Resolved annotations of a generated model (its forward refs name other models)."""
    if model not in _HINTS:
        namespace = {**vars(sdk_models), **vars(inspect.getmodule(model))}
        _HINTS[model] = typing.get_type_hints(model, globalns=namespace)
    return _HINTS[model]


def _name(hint: Any) -> str:
    return "null" if hint is type(None) else getattr(hint, "__name__", None) or str(hint)
