"""The query API's JSON Schemas (schemas/api/) and its OpenAPI description, for the tests that hold
real responses to them."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

API_SCHEMAS = Path(__file__).resolve().parent.parent / "schemas" / "api"


@lru_cache(maxsize=None)
def _registry() -> Registry:
    resources = []
    for path in sorted(API_SCHEMAS.glob("*.json")):
        doc = json.loads(path.read_text())
        Draft202012Validator.check_schema(doc)
        resources.append((doc["$id"], Resource.from_contents(doc)))
    return Registry().with_resources(resources)


def api_validate(name: str, body: Any) -> None:
    """Raise jsonschema.ValidationError unless `body` is valid against schemas/api/<name>.v1.schema.json."""
    doc = json.loads((API_SCHEMAS / f"{name}.v1.schema.json").read_text())
    Draft202012Validator(doc, registry=_registry(), format_checker=Draft202012Validator.FORMAT_CHECKER).validate(body)


def openapi() -> dict[str, Any]:
    return yaml.safe_load((API_SCHEMAS / "openapi.yaml").read_text())


def schema_for(path: str, status: int) -> str:
    """The schema name the OpenAPI description gives for a path's GET answer with this status."""
    responses = openapi()["paths"][path]["get"]["responses"]
    ref = responses[str(status)]["content"]["application/json"]["schema"]["$ref"]
    return ref.removesuffix(".v1.schema.json")
