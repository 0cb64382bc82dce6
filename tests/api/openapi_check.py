"""Checks every API response a test receives against ``/openapi.json`` (Firecracker-style).

The status must be documented for the operation, and a JSON body must match the documented
schema, so the document and the server cannot drift apart unnoticed.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import httpx


class SpecMismatch(AssertionError):
    pass


class OpenApiChecker:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.routes: list[tuple[re.Pattern[str], dict[str, Any]]] = []
        for template, item in spec["paths"].items():
            pattern = re.sub(r"\{[^/]+\}", "[^/]+", template)
            self.routes.append((re.compile(f"^{pattern}$"), item))
        self.checked = 0

    def __call__(self, response: httpx.Response) -> None:
        response.read()
        method = response.request.method.lower()
        path = response.request.url.path
        item = next((i for rx, i in self.routes if rx.match(path)), None)
        if item is None or method not in item:
            # unknown route or method: still our error shape
            self._validate(response.json(), {"$ref": "#/components/schemas/Error"}, "error")
            self.checked += 1
            return
        responses = item[method]["responses"]
        status = str(response.status_code)
        if status not in responses:
            raise SpecMismatch(f"{method.upper()} {path}: {status} is not documented")
        content = responses[status].get("content", {}).get("application/json")
        if content is not None:
            self._validate(response.json(), content["schema"], f"{method.upper()} {path}")
        for name in responses[status].get("headers", {}):
            assert name.lower() in (h.lower() for h in responses[status]["headers"])
        self.checked += 1

    def _resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[1]
            schema = self.spec["components"]["schemas"][name]
        return schema

    def _validate(self, value: Any, schema: dict[str, Any], where: str) -> None:
        schema = self._resolve(schema)
        if "anyOf" in schema:
            errors = []
            for option in schema["anyOf"]:
                try:
                    self._validate(value, option, where)
                    return
                except SpecMismatch as e:
                    errors.append(str(e))
            raise SpecMismatch(f"{where}: {value!r} matches no option: {errors}")
        kind = schema.get("type")
        checks = {
            "object": lambda v: isinstance(v, dict),
            "array": lambda v: isinstance(v, list),
            "string": lambda v: isinstance(v, str),
            "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
            "boolean": lambda v: isinstance(v, bool),
            "null": lambda v: v is None,
        }
        if kind is not None and not checks[kind](value):
            raise SpecMismatch(f"{where}: {value!r} is not of type {kind}")
        if "enum" in schema and value not in schema["enum"]:
            raise SpecMismatch(f"{where}: {value!r} not in {schema['enum']}")
        if schema.get("format") == "date-time":
            dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        if kind == "object":
            props = schema.get("properties", {})
            for name in schema.get("required", []):
                if name not in value:
                    raise SpecMismatch(f"{where}: required field {name!r} missing")
            for name, item in value.items():
                if name in props:
                    self._validate(item, props[name], f"{where}.{name}")
                elif isinstance(schema.get("additionalProperties"), dict):
                    self._validate(item, schema["additionalProperties"], f"{where}.{name}")
                elif props:
                    raise SpecMismatch(f"{where}: undocumented field {name!r}")
        if kind == "array":
            for i, item in enumerate(value):
                self._validate(item, schema.get("items", {}), f"{where}[{i}]")
