"""Generated contract artefacts: JSON Schemas of every event and each service's AsyncAPI.

`pathway contracts write` regenerates them; `pathway contracts check` (run by the test
suite) fails when the committed files differ from the code, or when a change within an
event version would break consumers.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from faststream.specification import AsyncAPI

from pathway_cli.guide import provider_guide
from pathway_schemas import jsonschema
from pathway_schemas.base import EVENT_TYPES

REPO = Path(__file__).resolve().parent.parent
SCHEMA_DIR = REPO / "schemas" / "jsonschema"
ASYNCAPI_DIR = REPO / "docs" / "asyncapi"
SERVICES = ("request", "vetting", "scheduling", "reporting", "notify")
# A fixed server address, so the document does not depend on where it was generated.
DOCUMENTED_BOOTSTRAP = "kafka:9092"


def service_asyncapi(service: str) -> dict[str, Any]:
    """The AsyncAPI 3.0 document FastStream generates for a service, with message schemas.

    Subscribers take raw records (one CloudEvents decode path for all), so FastStream cannot
    see their payloads: each subscribe message is given the schemas of the events the
    service handles, from its consumer's registry.
    """
    main = importlib.import_module(f"services.{service}.main")
    settings_module = importlib.import_module(f"services.{service}.settings")
    from services.common.settings import KafkaSettings

    settings = settings_module.Settings(kafka=KafkaSettings(bootstrap_servers=DOCUMENTED_BOOTSTRAP))
    app = main.create_app(settings)
    runtime = app.state.runtime
    spec = AsyncAPI(
        runtime.broker,
        title=f"imaging-{service}",
        version="1.0.0",
        description=f"Kafka channels of the {service} service: what it consumes and publishes.",
    ).to_specification()
    document: dict[str, Any] = json.loads(spec.to_json())
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    handled = sorted(runtime.consumer.handlers)
    refs = []
    for event_type in handled:
        model = EVENT_TYPES[event_type]
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in schema.pop("$defs", {}).items():
            schemas.setdefault(name, definition)
        schema["x-cloudevents-type"] = event_type
        schemas[model.__name__] = schema
        refs.append({"$ref": f"#/components/schemas/{model.__name__}"})
    for name, message in document["components"].get("messages", {}).items():
        if name.endswith(":SubscribeMessage"):
            message["payload"] = {"oneOf": refs}
    schemas.pop("EmptyPayload", None)
    return document


def _render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


GUIDE = REPO / "schemas" / "README.md"


def write() -> list[Path]:
    written = jsonschema.write(SCHEMA_DIR)
    GUIDE.write_text(provider_guide(), "utf-8")
    written.append(GUIDE)
    ASYNCAPI_DIR.mkdir(parents=True, exist_ok=True)
    for service in SERVICES:
        path = ASYNCAPI_DIR / f"{service}.json"
        path.write_text(_render(service_asyncapi(service)), "utf-8")
        written.append(path)
    return written


def check() -> list[str]:
    problems = jsonschema.check(SCHEMA_DIR)
    if not GUIDE.exists() or GUIDE.read_text("utf-8") != provider_guide():
        problems.append("schemas/README.md is out of date (run `make contracts`)")
    for service in SERVICES:
        path = ASYNCAPI_DIR / f"{service}.json"
        if not path.exists():
            problems.append(f"{path.relative_to(REPO)} is missing (run `make contracts`)")
        elif path.read_text("utf-8") != _render(service_asyncapi(service)):
            problems.append(f"{path.relative_to(REPO)} is out of date (run `make contracts`)")
    return problems
