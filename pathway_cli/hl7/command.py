"""`pathway hl7-gateway`: run one provider's HL7 v2 gateway until Ctrl-C or SIGTERM."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from pathway_cli.hl7.gateway import GatewaySettings, run_until_signalled
from services.common.logs import configure_logging


def hl7_gateway(
    provider: Annotated[
        str | None, typer.Option("--provider", help="The provider's ODS code, e.g. RXA01.")
    ] = None,
    ris_host: Annotated[
        str | None, typer.Option("--ris-host", help="Where the RIS listens for orders (MLLP).")
    ] = None,
    ris_port: Annotated[int | None, typer.Option("--ris-port", help="The RIS's MLLP port.")] = None,
    listen_host: Annotated[
        str | None, typer.Option("--listen-host", help="Address to listen on for the RIS.")
    ] = None,
    listen_port: Annotated[
        int | None, typer.Option("--listen-port", help="Port the RIS sends results to (MLLP).")
    ] = None,
    kafka_bootstrap: Annotated[
        str | None, typer.Option("--kafka-bootstrap", help="Kafka bootstrap servers.")
    ] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option("--state-dir", help="Orders, read positions and dead letters (a volume)."),
    ] = None,
    ack_timeout: Annotated[
        float | None, typer.Option("--ack-timeout", help="Seconds to wait for the RIS's ACK.")
    ] = None,
    allow_from: Annotated[
        list[str] | None,
        typer.Option("--allow-from", help="Address or network the RIS connects from (repeat)."),
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option("--metrics-port", help="Serve Prometheus metrics on this port.")
    ] = None,
) -> None:
    """Bridge one provider's RIS (HL7 v2 over MLLP) and its pathway topics.

    Every option can also come from the environment (PATHWAY_HL7_PROVIDER, PATHWAY_HL7_RIS_HOST,
    PATHWAY_HL7_KAFKA__BOOTSTRAP_SERVERS, ...); an option given here wins.
    """
    given: dict[str, Any] = {
        "provider": provider,
        "ris_host": ris_host,
        "ris_port": ris_port,
        "listen_host": listen_host,
        "listen_port": listen_port,
        "state_dir": state_dir,
        "ack_timeout_s": ack_timeout,
        "allow_from": tuple(allow_from) if allow_from else None,
        "metrics_port": metrics_port,
    }
    overrides = {name: value for name, value in given.items() if value is not None}
    try:
        settings = GatewaySettings(**overrides)
        if kafka_bootstrap:
            kafka = settings.kafka.model_copy(update={"bootstrap_servers": kafka_bootstrap})
            settings = settings.model_copy(update={"kafka": kafka})
    except ValidationError as error:
        for problem in error.errors(include_input=False, include_url=False):
            name = ".".join(str(p) for p in problem["loc"])
            typer.echo(
                f"error: {name}: {problem['msg']} (option --{name.replace('_', '-')})", err=True
            )
        raise typer.Exit(2) from None
    configure_logging("hl7-gateway", settings.log_level)
    asyncio.run(run_until_signalled(settings))
