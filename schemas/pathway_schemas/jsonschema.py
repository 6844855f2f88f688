"""JSON Schema of every event, generated from the models, and the compatibility check.

`python -m pathway_schemas.jsonschema write DIR` writes one file per event type;
`python -m pathway_schemas.jsonschema check DIR` fails when the files are out of date or
when a change within a version would break a consumer (a field removed, a field made
required, a type changed): such a change needs a new event version instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pathway_schemas.base import EVENT_TYPES, PathwayEvent
from pathway_schemas.envelope import schema_url
from pathway_schemas.events import FAMILIES

Schema = dict[str, Any]


def topic_of(model: type[PathwayEvent]) -> str:
    for topic, members in FAMILIES.items():
        if model in members:
            return topic
    raise KeyError(model.__name__)


def event_schema(model: type[PathwayEvent]) -> Schema:
    schema = model.model_json_schema(mode="serialization")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = schema_url(model.event_type)
    schema["x-cloudevents-type"] = model.event_type
    schema["x-kafka-topic"] = topic_of(model)
    schema["x-kafka-key"] = "referral_id" if "referral_id" in model.model_fields else "request_id"
    return schema


def all_schemas() -> dict[str, Schema]:
    return {event_type: event_schema(model) for event_type, model in sorted(EVENT_TYPES.items())}


def _render(schema: Schema) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for event_type, schema in all_schemas().items():
        path = directory / f"{event_type}.json"
        path.write_text(_render(schema), "utf-8")
        written.append(path)
    return written


def _resolve(node: Any, root: Schema) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        node = root.get("$defs", {}).get(name, {})
    return node


def _signature(node: Any, root: Schema, depth: int = 0) -> Any:
    """The shape of a value that consumers rely on: types, formats, nested properties."""
    node = _resolve(node, root)
    if not isinstance(node, dict) or depth > 8:
        return None
    if "anyOf" in node or "oneOf" in node:
        options: list[Any] = node.get("anyOf") or node.get("oneOf") or []
        return ("union", tuple(sorted(repr(_signature(o, root, depth + 1)) for o in options)))
    kind = node.get("type")
    if kind == "object" and "properties" in node:
        return (
            "object",
            tuple(
                sorted(
                    (k, repr(_signature(v, root, depth + 1))) for k, v in node["properties"].items()
                )
            ),
        )
    if kind == "array":
        items = node.get("items") or node.get("prefixItems")
        return ("array", repr(_signature(items, root, depth + 1)))
    return (kind, node.get("format"), "enum" if "enum" in node else None)


def breaking_changes(old: Schema, new: Schema) -> list[str]:
    """What in `new` would break a consumer written against `old` (same event version)."""
    problems = []
    old_props: dict[str, Any] = old.get("properties", {})
    new_props: dict[str, Any] = new.get("properties", {})
    for name in old_props:
        if name not in new_props:
            problems.append(f"field {name!r} was removed")
        elif _signature(old_props[name], old) != _signature(new_props[name], new):
            problems.append(f"field {name!r} changed type")
        else:
            old_enum = _resolve(old_props[name], old).get("enum") or []
            new_enum = _resolve(new_props[name], new).get("enum") or []
            if old_enum and new_enum and set(old_enum) - set(new_enum):
                problems.append(
                    f"field {name!r} lost enum values {sorted(set(old_enum) - set(new_enum))}"
                )
    newly_required = set(new.get("required", [])) - set(old.get("required", []))
    for name in sorted(newly_required):
        problems.append(
            f"field {name!r} became required"
            if name in old_props
            else f"required field {name!r} was added"
        )
    return problems


def check(directory: Path) -> list[str]:
    """Differences between the committed schemas and the models, breaking ones named."""
    problems = []
    current = all_schemas()
    committed = {p.name[: -len(".json")]: p for p in directory.glob("*.json")}
    for event_type, schema in current.items():
        path = committed.get(event_type)
        if path is None:
            problems.append(f"{event_type}: no committed schema (run `make schemas`)")
            continue
        old = json.loads(path.read_text("utf-8"))
        for change in breaking_changes(old, schema):
            problems.append(
                f"{event_type}: BREAKING within a version: {change}; publish a new version instead"
            )
        if _render(old) != _render(schema):
            problems.append(f"{event_type}: committed schema is out of date (run `make schemas`)")
    for event_type in committed.keys() - current.keys():
        problems.append(f"{event_type}: committed schema has no model (an event type was removed)")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in {"write", "check"}:
        print("usage: python -m pathway_schemas.jsonschema write|check DIR", file=sys.stderr)
        return 2
    directory = Path(argv[1])
    if argv[0] == "write":
        print(f"wrote {len(write(directory))} schemas to {directory}")
        return 0
    problems = check(directory)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
