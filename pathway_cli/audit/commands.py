"""`pathway audit` and `pathway export-events`: the rolling audit as files, from the events."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from pathway_cli.audit.capacity import load_providers
from pathway_cli.audit.compute import AuditError, compute_audit
from pathway_cli.audit.export import export_events as export_to_file
from pathway_cli.audit.render import describe_window, write_all
from pathway_cli.audit.source import EventBatch, SourceError, read_jsonl, read_kafka
from pathway_cli.stack import DEFAULT_BROKER_PORT, DEFAULT_VAR_DIR, LOOPBACK
from services.common.clock import LONDON

DEFAULT_BOOTSTRAP = f"{LOOPBACK}:{DEFAULT_BROKER_PORT}"
DEFAULT_OUT = DEFAULT_VAR_DIR / "audit"
#: What `pathway simulate` writes; the audit reads it by default when it is there.
DEFAULT_SIMULATION_EVENTS = DEFAULT_VAR_DIR / "simulation" / "events.jsonl"

# Piped output (make, CI, files) gets a wide console so that paths stay on one line.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def _fail(message: str) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {escape(message)}")
    return typer.Exit(1)


def parse_until(text: str) -> datetime:
    """An instant with an offset (2026-03-31T18:00:00Z), or a date: the end of that London day."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(
            "expected an ISO 8601 instant such as 2026-03-31T23:59:59Z, or a date such as 2026-03-31"
        ) from None
    if len(text.strip()) == 10:  # a bare date: audit up to the midnight that ends it
        day = moment.date() + timedelta(days=1)
        return datetime.combine(day, time(0), tzinfo=LONDON).astimezone(UTC)
    if moment.tzinfo is None:
        raise typer.BadParameter("give the instant a UTC offset, e.g. 2026-03-31T23:59:59Z")
    return moment.astimezone(UTC)


def audit(
    bootstrap: Annotated[
        str | None,
        typer.Option(
            help=f"Read the canonical topics of this Kafka broker (default {DEFAULT_BOOTSTRAP})."
        ),
    ] = None,
    events: Annotated[
        Path | None,
        typer.Option(
            "--events",
            help="Read a JSON Lines export (`pathway export-events`) instead "
            f"(default {DEFAULT_SIMULATION_EVENTS} when it exists and no --bootstrap is given).",
        ),
    ] = None,
    window_days: Annotated[int, typer.Option(min=1, help="Length of the rolling window.")] = 30,
    until: Annotated[
        str | None,
        typer.Option(help="End of the window (ISO instant or date) (default: the latest event)."),
    ] = None,
    out: Annotated[
        Path, typer.Option(help="Folder for the CSV, JSON and HTML files.")
    ] = DEFAULT_OUT,
    providers: Annotated[
        Path | None,
        typer.Option(
            help="Provider registry, for slot capacity (default: the scheduling service's "
            "file, config/providers.json unless SCHEDULING_CONFIG_DIR says otherwise)."
        ),
    ] = None,
) -> None:
    """The rolling audit over a window, as CSV, JSON and an HTML report.

    Utilisation, appropriateness, waits, turnaround, DNA, delivery, acknowledgement and
    duplicates, per provider, site, modality and practice; see docs/audit.md.
    """
    if bootstrap is not None and events is not None:
        raise _fail("give either --bootstrap or --events, not both")
    end = parse_until(until) if until else None
    if bootstrap is None and events is None and DEFAULT_SIMULATION_EVENTS.exists():
        events = DEFAULT_SIMULATION_EVENTS  # the month `pathway simulate` just played
    try:
        if events is not None:
            batch: EventBatch = read_jsonl(events)
            origin = str(events)
        else:
            address = bootstrap or DEFAULT_BOOTSTRAP
            batch = asyncio.run(read_kafka(address))
            origin = f"Kafka at {address}"
        result = compute_audit(
            batch.events,
            window_days=window_days,
            until=end,
            providers=load_providers(providers),
            notes=batch.notes(),
        )
    except (SourceError, AuditError) as error:
        raise _fail(str(error)) from None
    written = write_all(result, out)
    totals = {
        n: result.tables[n].row() for n in ("volumes", "waits", "turnaround", "dna", "duplicates")
    }
    console.print(
        f"[bold]audit[/] {len(batch.events)} events from {escape(origin)}; window "
        f"{describe_window(result.window_start, result.window_end)}"
    )
    console.print(
        f"  referrals {totals['volumes']['referrals']}, "
        f"appointments within wait target {_pct(totals['waits']['share_within_target'])}, "
        f"reports within turnaround target {_pct(totals['turnaround']['share_within_target'])}, "
        f"DNA rate {_pct(totals['dna']['dna_rate'])}, "
        f"duplicates prevented {totals['duplicates']['prevented']}"
    )
    for note in result.notes:
        console.print(f"  [yellow]note:[/] {escape(note)}")
    console.print(
        f"[bold]audit[/] wrote {len(written)} files to {escape(str(out))}: open {escape(str(out / 'report.html'))}"
    )


def _pct(value: object) -> str:
    return f"{value:.1%}" if isinstance(value, float) else "n/a"


def export_events(
    out: Annotated[Path, typer.Option(help="The JSON Lines file to write.")],
    bootstrap: Annotated[str, typer.Option(help="Kafka broker to read.")] = DEFAULT_BOOTSTRAP,
) -> None:
    """Dump every event of the canonical topics to a JSON Lines file (one CloudEvent a line)."""
    try:
        count, batch = asyncio.run(export_to_file(bootstrap, out))
    except SourceError as error:
        raise _fail(str(error)) from None
    console.print(f"[bold]export[/] wrote {count} events to {escape(str(out))}")
    for note in batch.notes():
        console.print(f"  [yellow]note:[/] {escape(note)}")
