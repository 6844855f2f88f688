"""Run one service as its own process: `python -m services.<name>`."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError

from services.common.logs import configure_logging
from services.common.settings import ServiceSettings

S = TypeVar("S", bound=ServiceSettings)


def run(service: str, settings_class: type[S], create_app: Callable[[S], FastAPI]) -> None:
    try:
        settings = settings_class()
    except ValidationError as error:
        # Fail loudly at start, naming each bad variable.
        prefix = settings_class.model_config.get("env_prefix", "")
        for problem in error.errors(include_input=False, include_url=False):
            name = prefix + "__".join(str(p) for p in problem["loc"]).upper()
            print(f"{service}: setting {name}: {problem['msg']}", file=sys.stderr)
        sys.exit(2)
    configure_logging(service, settings.log_level)
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.http.host,
        port=settings.http.port,
        log_config=None,
        timeout_graceful_shutdown=int(settings.kafka.graceful_timeout_s) + 5,
    )
