"""`pathway`: run the imaging pathway on the embedded broker and store.

Commands: `up` (start everything, show a live status table, stop everything on Ctrl-C or
SIGTERM) and `status` (what is running). `simulate` and `audit` come with their own issues.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from pathway_cli import simulate as simulate_command
from pathway_cli import stack as st
from pathway_cli.audit import commands as audit_commands
from pathway_cli.hl7 import command as hl7_command

app = typer.Typer(
    name="pathway",
    help="The imaging referral-to-report pathway on an embedded Kafka broker and MongoDB store.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Piped output (make, CI, files) gets a wide console so that URLs and errors stay on one line.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

_COLOURS = ("cyan", "magenta", "green", "yellow", "blue", "bright_red", "bright_cyan")


def _fail(message: str, code: int = 1) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {escape(message)}")
    return typer.Exit(code)


def _line_printer(names: list[str]) -> st.LineSink:
    width = max(len(n) for n in names)
    colours = dict(zip(names, itertools.cycle(_COLOURS), strict=False))

    def sink(name: str, line: str) -> None:
        prefix = Text(f"{name:<{width}} | ", style=colours.get(name, "white"))
        console.print(prefix + Text(line), soft_wrap=True)

    return sink


def _table(rows: list[dict[str, Any]], ready: dict[str, bool], title: str) -> Table:
    table = Table(title=title, title_justify="left", expand=False)
    for column in ("process", "pid", "port", "ready"):
        table.add_column(column, no_wrap=True)
    for column in ("API docs / address", "metrics"):
        table.add_column(column, overflow="fold")
    for row in rows:
        ok = ready.get(row["name"], False)
        table.add_row(
            row["name"],
            str(row.get("pid") or "-"),
            str(row.get("port") or "-"),
            Text("yes", style="green") if ok else Text("no", style="red"),
            row.get("docs") or row.get("address") or "",
            row.get("metrics") or "",
        )
    return table


async def _probe_all(stack: st.Stack) -> dict[str, bool]:
    procs = stack.processes
    results = await asyncio.gather(*(p.is_ready() for p in procs))
    return {p.name: r for p, r in zip(procs, results, strict=True)}


async def _run_up(stack: st.Stack, state_file: Path) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig.name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)

    start = asyncio.ensure_future(
        stack.start(on_step=lambda msg: console.print(f"[bold]pathway[/] {escape(msg)}"))
    )
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({start, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if not start.done():  # Ctrl-C while starting: Stack.start stops what it started
        start.cancel()
        with contextlib.suppress(asyncio.CancelledError, st.StackError):
            await start
        console.print("[bold]pathway[/] stopped before it was ready")
        return 130
    stopped.cancel()
    start.result()  # raises StackError when a process failed to start

    st.write_state(state_file, stack)
    rows = [p.describe() for p in stack.processes]
    console.print(
        f"[bold]pathway[/] all {len(rows)} processes ready; logs in {stack.config.log_dir}; "
        "Ctrl-C stops everything"
    )
    exit_code = 0
    try:
        with Live(console=console, refresh_per_second=2, transient=False) as live:
            while not stop.is_set():
                ready = await _probe_all(stack)
                live.update(_table(rows, ready, "pathway: embedded stack"))
                dead = [p.name for p in stack.processes if not p.is_running()]
                if dead:
                    err_console.print(
                        f"[bold red]error:[/] {', '.join(dead)} exited: see its log in "
                        f"{stack.config.log_dir}; stopping everything"
                    )
                    exit_code = 1
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1.0)
    finally:
        if not console.is_terminal:
            console.line()  # the last table of a piped run ends without a newline
        console.print("[bold]pathway[/] stopping services, store, broker")
        await asyncio.to_thread(stack.stop)
        await asyncio.to_thread(state_file.unlink, missing_ok=True)
        console.print("[bold]pathway[/] stopped")
    return exit_code


@app.command()
def up(
    ephemeral: Annotated[
        bool, typer.Option("--ephemeral", help="Throwaway store in memory instead of a folder.")
    ] = False,
    data_dir: Annotated[
        Path, typer.Option(help="Where the store keeps its data (survives restarts).")
    ] = st.DEFAULT_DATA_DIR,
    log_dir: Annotated[Path, typer.Option(help="Where each process's log goes.")] = (
        st.DEFAULT_LOG_DIR
    ),
    no_services: Annotated[
        bool, typer.Option("--no-services", help="Start the broker and store only.")
    ] = False,
    base_port: Annotated[
        int, typer.Option(help="Port of the first service; the others follow.")
    ] = st.DEFAULT_BASE_PORT,
    broker_port: Annotated[int, typer.Option(help="Kafka port.")] = st.DEFAULT_BROKER_PORT,
    store_port: Annotated[int, typer.Option(help="MongoDB port.")] = st.DEFAULT_STORE_PORT,
    state_file: Annotated[Path, typer.Option(hidden=True)] = st.DEFAULT_STATE_FILE,
) -> None:
    """Start broker, store, topics and the five services; Ctrl-C stops them all."""
    services = () if no_services else st.SERVICE_NAMES
    names = ["broker", "store", *services]
    config = st.StackConfig(
        broker_port=broker_port,
        store_port=store_port,
        base_port=base_port,
        data_dir=None if ephemeral else data_dir,
        log_dir=log_dir.resolve(),
        services=services,
    )
    stack = st.Stack(config, on_line=_line_printer(names))
    try:
        code = asyncio.run(_run_up(stack, state_file))
    except st.StackError as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        stack.stop()
        code = 130
    if code:
        raise typer.Exit(code)


async def _probe_row(row: dict[str, Any]) -> bool:
    if not st.pid_alive(row.get("pid")):
        return False
    kind, port = row.get("kind"), row.get("port")
    if kind == "service" and row.get("url"):
        try:
            async with httpx.AsyncClient(timeout=2.0) as client:
                response = await client.get(f"{row['url']}/readyz")
            return response.status_code == 200
        except httpx.HTTPError:
            return False
    if isinstance(port, int):
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(st.LOOPBACK, port), timeout=2
            )
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True
    return False


@app.command()
def status(
    state_file: Annotated[Path, typer.Option(hidden=True)] = st.DEFAULT_STATE_FILE,
) -> None:
    """What `pathway up` is running; exit 1 when nothing is."""
    state = st.read_state(state_file)
    if state is None:
        raise _fail("nothing is running (no state file): start it with `pathway up`")
    rows: list[dict[str, Any]] = list(state.get("processes", []))

    async def probe() -> list[bool]:
        return list(await asyncio.gather(*(_probe_row(r) for r in rows)))

    ready = asyncio.run(probe())
    alive = [st.pid_alive(r.get("pid")) for r in rows]
    owner = state.get("pid")
    owner_alive = st.pid_alive(owner) if isinstance(owner, int) else False
    title = f"pathway up (pid {owner}{'' if owner_alive else ', gone'})"
    console.print(_table(rows, {r["name"]: ok for r, ok in zip(rows, ready, strict=True)}, title))
    if not any(alive):
        raise _fail("nothing is running (stale state file): start it with `pathway up`")
    if not all(ready):
        raise typer.Exit(2)


app.command(name="audit")(audit_commands.audit)
app.command(name="export-events")(audit_commands.export_events)
app.command(name="simulate")(simulate_command.simulate)
app.command(name="hl7-gateway")(hl7_command.hl7_gateway)


def main() -> None:  # pragma: no cover - console script entry for `python -m pathway_cli`
    app()


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
