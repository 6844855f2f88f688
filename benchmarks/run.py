"""`python -m benchmarks.run`: the whole system under load, against its own broker and store.

Starts a fresh system on the embedded stack (the system clock: this measures real time),
then runs two phases of open-access chest X-ray referrals end to end (see `load.py`):

- paced: `--referrals` at `--rate` per second, for latency per hop at a steady load;
- saturation: `--referrals` as fast as the system takes them, for referrals per second.

Latency per hop comes from the events' own timestamps (each event's envelope time against
its cause's); store round trips and Kafka records are counted, not timed (each service's
`pathway_store_commands_total`, and each topic's true end offsets before and after, see
`Settler.ends`). In the same run it measures the baselines: raw produce-consume through the
same broker with aiokafka, and raw upserts into the same store. Prints rich tables and
writes JSON to var/benchmark/.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from benchmarks.baselines import KafkaBaseline, StoreBaseline, kafka_baseline, store_baseline
from benchmarks.load import Load, PhaseLoad
from benchmarks.measure import Counters, Hop, Spread, Timelines, scrape
from benchmarks.tuned import FETCH_WAIT_ENV
from pathway_cli.audit.source import read_kafka
from pathway_cli.simulate import Settler, service_groups
from pathway_cli.stack import SERVICE_MODULE_ENV
from pathway_cli.system import System, running_system
from pathway_schemas import topics
from pathway_schemas.envelope import Received

DEFAULT_OUT = Path("var") / "benchmark"
PROVIDERS = ["RXA01", "NWX02"]

# Targets of issue 12, reported against (never enforced).
TARGET_RATE = 50.0
TARGET_P99_SECONDS = 0.250
TARGET_RATE_FOR_P99 = 10.0
TARGET_COMMANDS_PER_EVENT = 2.0

HOPS: tuple[Hop, ...] = (
    Hop("vetting: submitted → accepted by rule", "referral.submitted", "vetting.accepted"),
    Hop("scheduling: accepted → walk-in", "vetting.accepted", "booking.walk_in_authorised"),
    Hop(
        "provider RIS stand-in: order → arrival sent",
        "provider.walk_in_authorised",
        "provider.patient_arrived",
        actor="benchmark",
    ),
    Hop("reporting: arrival", "provider.patient_arrived", "examination.arrived"),
    Hop("reporting: completion", "provider.examination_completed", "examination.completed"),
    Hop("reporting: report", "provider.report_issued", "report.issued"),
    Hop("notify: report → delivered (signed push)", "report.issued", "notification.delivered"),
    Hop(
        "practice stand-in: delivered → acknowledged (HTTP)",
        "notification.delivered",
        "notification.acknowledged",
        actor="benchmark",
    ),
)
END_TO_END = (
    Hop("submitted → delivered to the practice", "referral.submitted", "notification.delivered"),
    Hop("submitted → acknowledged", "referral.submitted", "notification.acknowledged"),
)

#: Less logging leaves the cores to the work; nothing else differs from `pathway up`.
BENCHMARK_ENV = {f"{name.upper()}_LOG_LEVEL": "WARNING" for name in topics.SERVICES}

console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)


@dataclass
class PhaseResult:
    load: PhaseLoad
    seconds: float
    counters: Counters
    idle_commands: float
    records: dict[str, int]
    hops: dict[str, Spread]
    request_timeline: Spread
    end_to_end: dict[str, Spread]

    @property
    def referrals(self) -> int:
        return self.load.done

    @property
    def commands(self) -> float:
        """Store commands of the phase, less what the idle system sends in as long."""
        return max(0.0, self.counters.commands - self.idle_commands)

    @property
    def events_applied(self) -> float:
        return self.counters.handled("applied", "duplicate")

    @property
    def events_consumed(self) -> float:
        return self.counters.handled("applied", "duplicate", "ignored", "dead_lettered")

    def per(self, value: float, by: float) -> float | None:
        return value / by if by else None


async def _settle(settler: Settler) -> None:
    await settler.settle(timeout=300)


async def _offsets(settler: Settler) -> dict[str, int]:
    # True ends, not the reported ones: the embedded broker reports a partition's end at
    # its last batch's first record, and the services' producers do pack records into
    # batches (concurrent requests and handlers share one producer). Offsets have no gaps
    # (no transactions, no compaction), so the difference of two true ends counts exactly
    # the records written in between.
    return await settler.end_offsets()


async def _idle_rate(http: httpx.AsyncClient, system: System, seconds: float = 5.0) -> float:
    """Store commands per second the system sends with nothing to do (jobs, relays, probes)."""
    urls = list(system.urls.values())
    before = await scrape(http, urls)
    began = time.monotonic()
    await asyncio.sleep(seconds)
    after = await scrape(http, urls)
    return after.minus(before).commands / (time.monotonic() - began)


async def _request_timeline(
    http: httpx.AsyncClient, system: System, referrals: list[str]
) -> Spread:
    """Each event's wait to reach its referral's timeline (request service: received - emitted)."""
    limit = asyncio.Semaphore(8)
    lags: list[float] = []

    async def one(referral_id: str) -> None:
        async with limit:
            response = await http.get(
                f"{system.urls['request']}/referrals/{referral_id}",
                headers={"X-API-Key": "dev-operator"},
            )
        if response.status_code != 200:
            return
        for entry in response.json().get("timeline", []):
            if entry.get("emitted_at") and entry.get("received_at"):
                emitted = datetime.fromisoformat(entry["emitted_at"])
                received = datetime.fromisoformat(entry["received_at"])
                lags.append((received - emitted).total_seconds())

    await asyncio.gather(*(one(r) for r in referrals))
    return Spread.of(lags)


async def run_phase(
    load: Load,
    system: System,
    http: httpx.AsyncClient,
    settler: Settler,
    name: str,
    referrals: int,
    rate: float | None,
    idle_rate: float,
) -> tuple[PhaseLoad, float, Counters, float, dict[str, int]]:
    urls = list(system.urls.values())
    await _settle(settler)
    offsets_before = await _offsets(settler)
    before = await scrape(http, urls)
    began = time.monotonic()
    timeout = 120.0 + referrals * 2.0
    phase = await load.run_phase(name, referrals, rate, timeout=timeout)
    await _settle(settler)
    seconds = time.monotonic() - began
    after = await scrape(http, urls)
    offsets_after = await _offsets(settler)
    records = {t: offsets_after.get(t, 0) - offsets_before.get(t, 0) for t in offsets_after}
    records = {t: n for t, n in records.items() if n}
    return phase, seconds, after.minus(before), idle_rate * seconds, records


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _mark(ok: bool | None) -> str:
    return "[yellow]n/a[/]" if ok is None else ("[green]met[/]" if ok else "[red]not met[/]")


def hop_table(result: PhaseResult) -> Table:
    rate = f"{result.load.rate:g}/s" if result.load.rate else "as fast as possible"
    table = Table(
        title=f"{result.load.name} phase ({rate}): latency per hop, ms", title_justify="left"
    )
    for column in ("hop", "who", "n", "p50", "p95", "p99", "max"):
        table.add_column(column, justify="left" if column in {"hop", "who"} else "right")
    rows = [(h.name, h.actor, result.hops[h.name]) for h in HOPS]
    rows.append(("request: any event → on the timeline", "service", result.request_timeline))
    rows += [(h.name, "end to end", result.end_to_end[h.name]) for h in END_TO_END]
    submit = Spread.of(result.load.submit_seconds)
    rows.insert(0, ("POST /referrals (HTTP round trip)", "service", submit))
    for name, who, spread in rows:
        table.add_row(
            name,
            who,
            str(spread.count),
            _ms(spread.p50),
            _ms(spread.p95),
            _ms(spread.p99),
            _ms(spread.max),
        )
    return table


def counts_table(results: list[PhaseResult]) -> Table:
    table = Table(title="counted per referral (not timed)", title_justify="left")
    table.add_column("measure")
    for result in results:
        table.add_column(result.load.name, justify="right")

    def row(label: str, values: list[str]) -> None:
        table.add_row(label, *values)

    row("referrals finished", [f"{r.referrals}/{r.load.referrals}" for r in results])
    row(
        "Kafka records per referral",
        [_num(r.per(sum(r.records.values()), r.referrals)) for r in results],
    )
    row(
        "events consumed per referral (all groups)",
        [_num(r.per(r.events_consumed, r.referrals)) for r in results],
    )
    row(
        "events handled per referral (applied)",
        [_num(r.per(r.events_applied, r.referrals)) for r in results],
    )
    row("store round trips per referral", [_num(r.per(r.commands, r.referrals)) for r in results])
    row(
        "store round trips per event handled",
        [_num(r.per(r.commands, r.events_applied), 2) for r in results],
    )
    return table


def build_report(
    args: dict[str, Any],
    results: list[PhaseResult],
    kafka: KafkaBaseline,
    store: StoreBaseline,
    idle_rate: float,
) -> dict[str, Any]:
    paced = next((r for r in results if r.load.name == "paced"), None)
    saturation = next((r for r in results if r.load.name == "saturation"), None)
    best = saturation or paced
    sustained = best.load.sustained_rate() if best else None
    worst_service_p99 = None
    if paced is not None:
        p99s = [
            p99
            for h in HOPS
            if h.actor == "service" and (p99 := paced.hops[h.name].p99) is not None
        ]
        worst_service_p99 = max(p99s) if p99s else None
    per_event = best.per(best.commands, best.events_applied) if best else None
    records_per_referral = best.per(sum(best.records.values()), best.referrals) if best else None
    commands_per_referral = best.per(best.commands, best.referrals) if best else None
    kafka_rate = sum(best.records.values()) / best.seconds if best and best.seconds else None
    store_rate = best.commands / best.seconds if best and best.seconds else None
    ratios = {
        "system_kafka_records_per_s_vs_raw_pipelined": _ratio(
            kafka_rate, kafka.pipelined_per_second
        ),
        "system_kafka_records_per_s_vs_raw_sequential": _ratio(
            kafka_rate, kafka.sequential_per_second
        ),
        "system_store_commands_per_s_vs_raw_upserts": _ratio(store_rate, store.upserts_per_second),
        "store_bound_referrals_per_s": _ratio(store.upserts_per_second, commands_per_referral),
        "broker_bound_referrals_per_s": _ratio(kafka.pipelined_per_second, records_per_referral),
        "sustained_vs_store_bound": _ratio(
            sustained, _ratio(store.upserts_per_second, commands_per_referral)
        ),
    }
    targets = {
        "referrals_per_second": {
            "target": TARGET_RATE,
            "measured": sustained,
            "met": None if sustained is None else sustained >= TARGET_RATE,
        },
        "p99_per_hop_seconds_at_10_per_second": {
            "target": TARGET_P99_SECONDS,
            "measured": worst_service_p99,
            "rate": paced.load.rate if paced else None,
            "met": None if worst_service_p99 is None else worst_service_p99 <= TARGET_P99_SECONDS,
        },
        "store_round_trips_per_event_handled": {
            "target": TARGET_COMMANDS_PER_EVENT,
            "measured": per_event,
            "met": None if per_event is None else per_event <= TARGET_COMMANDS_PER_EVENT,
        },
    }
    return {
        "when": datetime.now(UTC).isoformat(),
        "arguments": args,
        "machine": {"cpus": _cpus(), "load_average": _load_average()},
        "idle_store_commands_per_second": idle_rate,
        "phases": [_phase_json(r) for r in results],
        "baselines": {"kafka": asdict(kafka), "store": asdict(store)},
        "ratios": ratios,
        "targets": targets,
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _cpus() -> int | None:
    import os

    return os.cpu_count()


def _load_average() -> list[float] | None:
    import os

    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _phase_json(result: PhaseResult) -> dict[str, Any]:
    load = result.load
    return {
        "name": load.name,
        "rate": load.rate,
        "submitted": len(load.submitted_at),
        "finished": load.done,
        "failures": load.failures[:20],
        "seconds": result.seconds,
        "sustained_referrals_per_second": load.sustained_rate(),
        "overall_referrals_per_second": load.overall_rate(),
        "hops_seconds": {name: asdict(spread) for name, spread in result.hops.items()},
        "request_timeline_seconds": asdict(result.request_timeline),
        "end_to_end_seconds": {name: asdict(spread) for name, spread in result.end_to_end.items()},
        "submit_http_seconds": asdict(Spread.of(load.submit_seconds)),
        "acknowledge_http_seconds": asdict(Spread.of(load.acknowledge_seconds)),
        "kafka_records": result.records,
        "kafka_records_per_referral": result.per(sum(result.records.values()), result.referrals),
        "store_commands_raw": result.counters.commands,
        "store_commands_idle_correction": result.idle_commands,
        "store_commands_per_referral": result.per(result.commands, result.referrals),
        "store_commands_by_service": result.counters.commands_by(0),
        "store_commands_by_command": result.counters.commands_by(1),
        "events_applied": result.events_applied,
        "events_consumed": result.events_consumed,
        "store_commands_per_event_handled": result.per(result.commands, result.events_applied),
    }


def summary_tables(report: dict[str, Any]) -> list[Table]:
    kafka, store = report["baselines"]["kafka"], report["baselines"]["store"]
    baseline = Table(
        title="baselines: the same broker and store without the system", title_justify="left"
    )
    baseline.add_column("measure")
    baseline.add_column("per second", justify="right")
    baseline.add_row(
        f"Kafka produce→consume, pipelined ({kafka['records']} records of {kafka['record_bytes']} B)",
        _num(kafka["pipelined_per_second"], 0),
    )
    baseline.add_row(
        f"Kafka one record at a time, each send awaited ({kafka['sequential_records']})",
        _num(kafka["sequential_per_second"], 0),
    )
    baseline.add_row(
        f"store upserts ({store['upserts']}, {store['concurrency']} at a time)",
        _num(store["upserts_per_second"], 0),
    )
    baseline.add_row(
        f"store minimal units of work in a transaction ({store['transactions']})",
        _num(store["transactions_per_second"], 0),
    )
    after = report["baselines"].get("store_after_load")
    if after:
        baseline.add_row(
            f"store upserts again after the load ({after['upserts']}, {after['concurrency']} at a time)",
            _num(after["upserts_per_second"], 0),
        )
    baseline.add_row(
        "store commands of the idle system (background jobs, relays)",
        _num(report["idle_store_commands_per_second"], 1),
    )

    ratios = Table(title="ratios", title_justify="left")
    ratios.add_column("ratio")
    ratios.add_column("value", justify="right")
    labels = {
        "system_kafka_records_per_s_vs_raw_pipelined": "system Kafka records/s ÷ raw pipelined rate",
        "system_kafka_records_per_s_vs_raw_sequential": "system Kafka records/s ÷ raw one-at-a-time rate",
        "system_store_commands_per_s_vs_raw_upserts": "system store commands/s ÷ raw upsert rate",
        "store_bound_referrals_per_s": "store-bound ceiling, referrals/s (raw upserts ÷ commands per referral)",
        "broker_bound_referrals_per_s": "broker-bound ceiling, referrals/s (raw rate ÷ records per referral)",
        "sustained_vs_store_bound": "sustained referrals/s ÷ store-bound ceiling",
    }
    for key, label in labels.items():
        ratios.add_row(label, _num(report["ratios"].get(key), 2))

    targets = Table(title="targets (issue 12): reported, never enforced", title_justify="left")
    for column in ("target", "goal", "measured", ""):
        targets.add_column(column, justify="left" if column == "target" else "right")
    t = report["targets"]
    targets.add_row(
        "referrals per second, end to end, sustained",
        f"≥ {TARGET_RATE:g}",
        _num(t["referrals_per_second"]["measured"], 1),
        _mark(t["referrals_per_second"]["met"]),
    )
    rate = t["p99_per_hop_seconds_at_10_per_second"]["rate"]
    targets.add_row(
        f"worst p99 of the services' hops at {rate:g}/s (ms)" if rate else "worst p99 per hop (ms)",
        f"≤ {TARGET_P99_SECONDS * 1000:.0f}",
        _ms(t["p99_per_hop_seconds_at_10_per_second"]["measured"]),
        _mark(t["p99_per_hop_seconds_at_10_per_second"]["met"]),
    )
    targets.add_row(
        "store round trips per event handled",
        f"≤ {TARGET_COMMANDS_PER_EVENT:g}",
        _num(t["store_round_trips_per_event_handled"]["measured"], 2),
        _mark(t["store_round_trips_per_event_handled"]["met"]),
    )
    return [baseline, ratios, targets]


async def benchmark(
    referrals: int, rate: float, phases: list[str], out: Path, seed: int
) -> dict[str, Any]:
    work = out / "run"
    if work.exists():
        shutil.rmtree(work)
    async with (
        running_system(work, env=BENCHMARK_ENV) as system,
        httpx.AsyncClient(timeout=60.0) as http,
    ):
        console.print(
            f"[bold]benchmark[/] system up: {', '.join(f'{n} {u}' for n, u in system.urls.items())}"
        )
        every_topic = topics.all_topics(tuple(PROVIDERS))
        groups = service_groups(every_topic)
        settler = Settler(system.bootstrap, tuple(groups), every_topic, reads=groups)
        await settler.start()
        load = Load(system, http, seed=seed)
        await load.start(PROVIDERS)
        try:
            # One referral first, so that every consumer has joined and every cache is warm.
            await load.run_phase("warm-up", 2, None, timeout=120)
            await _settle(settler)
            idle = await _idle_rate(http, system)
            console.print(f"[bold]benchmark[/] idle system: {idle:.1f} store commands/s")
            console.print("[bold]benchmark[/] baselines: raw broker and store, before the load")
            kafka = await kafka_baseline(system.bootstrap, records=max(3000, referrals * 15))
            store = await store_baseline(system.mongo_url)
            raw: list[tuple[PhaseLoad, float, Counters, float, dict[str, int]]] = []
            for name in phases:
                phase_rate = rate if name == "paced" else None
                console.print(
                    f"[bold]benchmark[/] {name}: {referrals} referrals "
                    + (f"at {rate:g}/s" if phase_rate else "as fast as possible")
                )
                raw.append(
                    await run_phase(load, system, http, settler, name, referrals, phase_rate, idle)
                )
                done = raw[-1][0]
                console.print(
                    f"[bold]benchmark[/] {name}: {done.done}/{referrals} finished in "
                    f"{raw[-1][1]:.1f}s; {len(done.failures)} failures"
                )
        finally:
            await load.stop()
        console.print("[bold]benchmark[/] reading the events for the latencies")
        names = (
            *topics.CANONICAL,
            *(
                t
                for p in PROVIDERS
                for t in (topics.provider_inbound(p), topics.provider_outbound(p))
            ),
        )
        events = (await read_kafka(system.bootstrap, names)).events
        results = [await _result(http, system, events, *r) for r in raw]
        console.print("[bold]benchmark[/] the store again, after the load")
        store_after = await store_baseline(system.mongo_url, transactions=0)
        await settler.stop()
    args = {"referrals": referrals, "rate": rate, "phases": phases, "seed": seed}
    report = build_report(args, results, kafka, store, idle)
    report["baselines"]["store_after_load"] = asdict(store_after)
    return {"report": report, "results": results}


async def _result(
    http: httpx.AsyncClient,
    system: System,
    events: list[Received],
    load: PhaseLoad,
    seconds: float,
    counters: Counters,
    idle: float,
    records: dict[str, int],
) -> PhaseResult:
    referrals = set(load.submitted_at)
    timelines = Timelines.of(events, referrals)
    return PhaseResult(
        load=load,
        seconds=seconds,
        counters=counters,
        idle_commands=idle,
        records=records,
        hops={h.name: Spread.of(timelines.hop_seconds(h)) for h in HOPS},
        request_timeline=await _request_timeline(http, system, sorted(referrals)),
        end_to_end={h.name: Spread.of(timelines.hop_seconds(h)) for h in END_TO_END},
    )


def main(
    referrals: Annotated[int, typer.Option(min=10, help="Referrals per phase.")] = 200,
    rate: Annotated[
        float, typer.Option(min=0.1, help="Referrals per second in the paced phase.")
    ] = 10.0,
    phases: Annotated[
        str, typer.Option(help="Phases to run, comma separated: paced, saturation.")
    ] = "paced,saturation",
    out: Annotated[
        Path, typer.Option(help="Folder for the JSON result (and the run's logs).")
    ] = DEFAULT_OUT,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic patients.")] = 1,
    what_if_fetch_wait_ms: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="What-if: run the services with their Kafka consumers' fetch wait at this "
            "many ms (aiokafka's default is 500). Not the system as shipped.",
        ),
    ] = None,
) -> None:
    """Drive referrals end to end through all five services and report the figures."""
    if what_if_fetch_wait_ms is not None:
        os.environ[SERVICE_MODULE_ENV] = "benchmarks.tuned.{name}"
        os.environ[FETCH_WAIT_ENV] = str(what_if_fetch_wait_ms)
        console.print(
            f"[bold yellow]what-if[/]: consumers' fetch wait {what_if_fetch_wait_ms} ms "
            "(the services as shipped use aiokafka's 500 ms)"
        )
    chosen = [p.strip() for p in phases.split(",") if p.strip()]
    unknown = [p for p in chosen if p not in {"paced", "saturation"}]
    if unknown or not chosen:
        raise typer.BadParameter(
            f"phases are paced and saturation, not {', '.join(unknown) or 'none'}"
        )
    outcome = asyncio.run(benchmark(referrals, rate, chosen, out, seed))
    report: dict[str, Any] = outcome["report"]
    report["what_if"] = (
        {"consumer_fetch_max_wait_ms": what_if_fetch_wait_ms} if what_if_fetch_wait_ms else None
    )
    results: list[PhaseResult] = outcome["results"]
    for result in results:
        console.print(hop_table(result))
    console.print(counts_table(results))
    for table in summary_tables(report):
        console.print(table)
    out.mkdir(parents=True, exist_ok=True)
    suffix = f"-what-if-fetch-{what_if_fetch_wait_ms}ms" if what_if_fetch_wait_ms else ""
    path = out / f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}{suffix}.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n", "utf-8")
    console.print(f"[bold]benchmark[/] wrote {path}")


if __name__ == "__main__":
    typer.run(main)
