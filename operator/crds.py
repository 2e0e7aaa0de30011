"""CustomResourceDefinitions generated from the pydantic models in ``resources``.

Kubernetes wants structural OpenAPI v3 schemas: every ``$ref`` inlined, ``null`` expressed as
``nullable``, int-or-string quantities marked, and free-form parts marked to keep unknown
fields. ``write_crds`` renders the manifests committed in ``deploy/crds``; a test fails when they
drift from the models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from infergraph.operator.resources import GROUP, KINDS, VERSION

FREE_FORM = {"x-kubernetes-preserve-unknown-fields": True}


def _structural(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        target = defs[schema["$ref"].rsplit("/", 1)[1]]
        merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        return _structural(merged, defs)
    if "anyOf" in schema:
        options = [o for o in schema["anyOf"] if o.get("type") != "null"]
        nullable = len(options) < len(schema["anyOf"])
        rest = {k: v for k, v in schema.items() if k != "anyOf"}
        kinds = {o.get("type") for o in options}
        result: dict[str, Any]
        if len(options) == 1:
            result = _structural({**options[0], **rest}, defs)
        elif kinds == {"string", "integer"}:
            result = {"x-kubernetes-int-or-string": True}
        else:  # a union of shapes (e.g. true or a mapping): left to the router to validate
            result = dict(FREE_FORM)
        if "description" in rest:
            result["description"] = rest["description"]
        if nullable:
            result["nullable"] = True
        return result
    result = {}
    for key in ("type", "description", "enum", "minimum", "maximum", "format"):
        if key in schema:
            result[key] = schema[key]
    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if isinstance(schema.get(exclusive), int | float):  # OpenAPI v3.0 spells it as a flag
            result[bound] = schema[exclusive]
            result[exclusive] = True
    if "const" in schema:
        result["enum"] = [schema["const"]]
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        result["type"] = "object"
        properties = schema.get("properties")
        if properties:
            result["properties"] = {
                name: _structural(value, defs) for name, value in properties.items()
            }
            if schema.get("required"):
                result["required"] = sorted(schema["required"])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and extra:
            result["additionalProperties"] = _structural(extra, defs)
        elif not properties:
            result.update(FREE_FORM)
    elif kind == "array":
        items = schema.get("items") or {}
        result["items"] = _structural(items, defs) if items else {"type": "object", **FREE_FORM}
    elif not kind and "enum" not in result:
        result.update(FREE_FORM)
    return result


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True)
    return _structural(schema, schema.get("$defs", {}))


def crd(kind: str) -> dict[str, Any]:
    spec_model, status_model, plural, short_names = KINDS[kind]
    ready = '.status.conditions[?(@.type=="Ready")].status'
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short_names,
                "categories": ["infergraph"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "URL", "type": "string", "jsonPath": ".status.url"},
                        {"name": "Ready", "type": "string", "jsonPath": ready},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "required": ["spec"],
                            "properties": {
                                "spec": openapi_schema(spec_model),
                                "status": openapi_schema(status_model),
                            },
                        }
                    },
                }
            ],
        },
    }


def render(kind: str) -> str:
    header = "# Generated by `infergraph crds` from operator/resources.py; do not edit.\n"
    return header + yaml.safe_dump(crd(kind), sort_keys=False, width=100)


def write_crds(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for kind, (_, _, plural, _) in KINDS.items():
        path = directory / f"{GROUP}_{plural}.yaml"
        path.write_text(render(kind))
        written.append(path)
    return written
