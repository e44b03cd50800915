"""``ehb``: the command line of the electronic-health-book pipeline.

Every command reads the ``EHB_*`` settings (``ehb settings`` lists them), so each process can
run on its own machine against external services; without ``EHB_KAFKA_BOOTSTRAP`` /
``EHB_DATABASE_URL`` the commands use the embedded stack that ``ehb up`` or ``ehb demo`` runs.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ehb.commands.reasons import Lang
from ehb.commands.rejected import DEFAULT_LIMIT
from ehb.commands.rejected import Format as RejectedFormat
from ehb.logs import configure_logging
from ehb.runtime import limit_malloc_arenas, tune_gc
from ehb.settings import BrokerStorage, Settings
from schemas.errors import EhbError

__all__ = ["app", "main"]

console = Console(stderr=True)
out = Console()
log = logging.getLogger("ehb")


def settings_markdown() -> str:
    """docs/settings.md's table, generated from the model so the two cannot drift."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = "unset" if default is None else f"`{default}`"
        rows.append(f"| `EHB_{name.upper()}` | {shown} | {field.description} |")
    return "\n".join(rows)


def _settings_epilog() -> str:
    lines = ["Settings (environment variables):", ""]
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = "unset" if default is None else str(default)
        lines.append(f"  EHB_{name.upper()} (default {shown}): {field.description}")
    return "\n\n".join(lines)


app = typer.Typer(
    name="ehb",
    help="Event-streaming backbone of Ho Chi Minh City's electronic health book: facilities "
    "-> Kafka -> Faust -> PostgreSQL + Prometheus.",
    epilog=_settings_epilog(),
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


def load_settings(**overrides: Any) -> Settings:
    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(
            f"EHB_{'_'.join(str(p) for p in e['loc']).upper() or 'SETTINGS'}: {e['msg']}"
            for e in exc.errors()
        )
        raise EhbError(f"invalid settings: {problems}") from None
    configure_logging(settings.log_level)
    return settings


MetricsPort = Annotated[
    int | None,
    typer.Option("--metrics-port", help="Port of /metrics (0 disables). [env: EHB_METRICS_PORT]"),
]


# -- services -----------------------------------------------------------------------------
@app.command()
def up(
    fresh: Annotated[
        bool, typer.Option(help="Start with an empty database and empty topics.")
    ] = False,
    brokers: Annotated[
        int | None,
        typer.Option(
            help="Tansu brokers sharing one store; clients bootstrap to all. [env: EHB_BROKERS]"
        ),
    ] = None,
    storage: Annotated[
        BrokerStorage | None,
        typer.Option(
            help="durable: topics and offsets in SeaweedFS under EHB_DATA_DIR/objects; "
            "memory: lost when the broker stops. [env: EHB_BROKER_STORAGE]"
        ),
    ] = None,
) -> None:
    """Start the embedded brokers (Tansu), their object store (SeaweedFS) and PostgreSQL,
    create topics, migrate; until Ctrl-C."""
    from ehb.embedded import DURABLE_LINGER_MS, EmbeddedStack
    from ehb.kafka import create_topics
    from sinks.migrate import migrate

    settings = load_settings(brokers=brokers, broker_storage=storage)
    stack = EmbeddedStack(settings, fresh_database=fresh)
    where = (
        f"durable, under {settings.state_dir / 'objects'}"
        if settings.broker_storage is BrokerStorage.DURABLE
        else "memory: lost when the broker stops"
    )
    with console.status(f"starting {settings.brokers} broker(s) ({where}) and PostgreSQL..."):
        info = stack.start()
    try:
        stack_settings = settings.model_copy(update={"kafka_bootstrap": info.bootstrap})
        create_topics(stack_settings)
        from pydantic import SecretStr

        from ehb.db import connect

        conn = connect(settings.model_copy(update={"database_url": SecretStr(info.database_url)}))
        migrate(conn)
        conn.close()
        out.print(f"export EHB_KAFKA_BOOTSTRAP={info.bootstrap}")
        out.print("export EHB_KAFKA_IDEMPOTENCE=false  # Tansu: see docs/embedded.md")
        if stack.durable:
            out.print(f"export EHB_KAFKA_LINGER_MS={DURABLE_LINGER_MS}")
        out.print(f"export EHB_DATABASE_URL={info.database_url}")
        console.print(
            f"[green]embedded stack running[/]: {len(stack.brokers)} broker(s), topics "
            f"{where}. Other ehb commands on this machine find it without the variables; "
            "Ctrl-C to stop"
        )
        _wait_for_signal()
    finally:
        stack.stop()


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass


@app.command()
def topics(
    create: Annotated[bool, typer.Option("--create/--list", help="Create missing topics.")] = True,
) -> None:
    """Create (default) or list the pipeline's topics with their partition counts."""
    from ehb.kafka import admin_client, create_topics
    from schemas.topics import topic_specs

    settings = load_settings()
    status = create_topics(settings) if create else {}
    metadata = admin_client(settings).list_topics(timeout=10).topics
    table = Table("topic", "partitions", "key", "value", "status")
    for spec in topic_specs(settings):
        name = settings.topic(spec.name)
        partitions = len(metadata[name].partitions) if name in metadata else 0
        table.add_row(
            name,
            str(partitions),
            spec.key,
            spec.value,
            status.get(name, "exists" if name in metadata else "missing"),
        )
    out.print(table)


@app.command()
def migrate() -> None:
    """Apply database migrations (the sink also does this at start)."""
    from ehb.db import connect
    from sinks.migrate import migrate as apply

    settings = load_settings()
    conn = connect(settings)
    try:
        applied = apply(conn)
    finally:
        conn.close()
    out.print(f"applied: {', '.join(applied) if applied else 'nothing (up to date)'}")


@app.command("settings")
def show_settings(
    markdown: Annotated[
        bool,
        typer.Option("--markdown", help="Print the defaults as docs/settings.md's Markdown table."),
    ] = False,
) -> None:
    """Show every setting, its environment variable and its current value (secrets masked)."""
    if markdown:
        out.print(settings_markdown(), markup=False, highlight=False, soft_wrap=True)
        return
    settings = load_settings()
    table = Table("variable", "value", "meaning")
    values = settings.public_dict()
    for name, field in Settings.model_fields.items():
        table.add_row(f"EHB_{name.upper()}", str(values[name]), field.description or "")
    out.print(table)


# -- the data path ------------------------------------------------------------------------
@app.command()
def worker(metrics_port: MetricsPort = None) -> None:
    """Run a Faust stream worker (validate, enrich, route; stateful health-book stage)."""
    import faust
    from prometheus_client import start_http_server

    from ehb.embedded import resolve_bootstrap
    from ehb.facilities import initial_registry
    from streams.app import create_app
    from streams.faust_patches import EXIT_AGENT_FAILED

    settings = load_settings(metrics_port=metrics_port)
    limit_malloc_arenas(settings.malloc_arenas)  # before any native thread starts
    resolve_bootstrap(settings)  # fail early, in one line, when no broker is configured
    if settings.worker_instance_id and not settings.kafka_bootstrap:
        log.warning(
            "EHB_WORKER_INSTANCE_ID is set on the embedded broker: Tansu stalls static "
            "members that rejoin (docs/reliability.md, Limits); leave it unset there"
        )
    registry = initial_registry(settings)
    faust_app = create_app(settings, registry=registry)
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.metrics_host)
    log.info(
        "worker %s starting (group %s, %d facilities in registry)",
        faust_app.conf.id,
        settings.worker_group,
        len(registry),
    )
    faust_worker = faust.Worker(
        faust_app,
        loglevel=settings.log_level.lower().replace("warning", "warn"),
        quiet=True,
        redirect_stdouts=False,
    )
    tune_gc(settings.gc_young_threshold)
    try:
        faust_worker.execute_from_commandline()
    except SystemExit:
        if getattr(faust_app, "_ehb_failed", None) is not None:
            raise SystemExit(EXIT_AGENT_FAILED) from None  # non-zero: a supervisor restarts it
        raise


@app.command()
def sink(metrics_port: MetricsPort = None) -> None:
    """Run the PostgreSQL sink (health book, referrals, appointments, dead letters)."""
    from sinks.runner import run_sink

    settings = load_settings(metrics_port=metrics_port)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    run_sink(settings, stop)


@app.command()
def simulate(
    events: Annotated[int, typer.Option(help="Examination events to publish.")] = 20_000,
    rate: Annotated[float, typer.Option(help="Events per second (0: as fast as possible).")] = 0,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same city).")] = 79,
    invalid_share: Annotated[float, typer.Option(help="Share of invalid events.")] = 0.01,
    days: Annotated[
        float | None,
        typer.Option(
            help="Simulated days the events span. Default: the city's real pace, "
            "3,789,912 exams a year."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Events per Kafka message.")] = 100,
    xml_out: Annotated[
        Path | None,
        typer.Option(
            "--xml-out",
            file_okay=False,
            help="Write the events as hospital XML dossiers (GIAMDINHHS files, one per facility "
            "per day) into this directory instead of publishing them; see `ehb gateway`.",
        ),
    ] = None,
    reports: Annotated[
        bool,
        typer.Option(
            "--reports/--no-reports",
            help="Each facility also sends its daily report (topic facility-reports).",
        ),
    ] = True,
    silent_facilities: Annotated[
        int, typer.Option(help="Facilities that never send their daily report.", min=0)
    ] = 0,
    inconsistent_facilities: Annotated[
        int, typer.Option(help="Facilities whose daily report misstates the episodes sent.", min=0)
    ] = 0,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            help="Serve /metrics (the producer's outbox backlog) on this port. Default: none.",
        ),
    ] = None,
) -> None:
    """Publish a simulated city's examination events (and the facilities' daily reports)."""
    from ehb.commands.simulate import run_simulation
    from simulation.simulator import SimulationConfig

    settings = load_settings()
    config = SimulationConfig(
        events=events,
        seed=seed,
        invalid_share=invalid_share,
        days=days,
        reports=reports,
        silent_facilities=silent_facilities,
        inconsistent_facilities=inconsistent_facilities,
    )
    if xml_out is not None:
        from ehb.commands.xml_export import export_simulation

        out.print_json(json.dumps(export_simulation(config, xml_out, progress=console)))
        return
    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr=settings.metrics_host)
    summary = run_simulation(settings, config, rate=rate, batch_size=batch_size, progress=console)
    out.print_json(json.dumps(summary))


@app.command()
def publish(
    file: Annotated[
        Path,
        typer.Argument(
            help="JSON Lines file, one examination event a line "
            "(or a .xml dossier file, see `ehb gateway`).",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ],
    batch_size: Annotated[int, typer.Option(help="Events per Kafka message.")] = 100,
) -> None:
    """Publish examination events from a JSON Lines file (fields: the schema's field names).

    A bad line is reported with its line number and reason; the good lines are still
    published. Exit code 1 when any line was bad. A .xml file is a GIAMDINHHS dossier:
    published whole or rejected with a reason (exit code 1), never twice.
    """
    from producers.jsonl import publish_jsonl

    settings = load_settings()
    if file.suffix.lower() == ".xml":
        from producers.gateway import publish_dossier_file

        outcome = publish_dossier_file(settings, file)
        if outcome.status == "rejected":
            console.print(
                f"{file}: rejected: {outcome.reason} ({outcome.detail})",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(1)
        out.print(
            f"{outcome.status} {outcome.episodes} episodes from {file}"
            + (f" ({outcome.detail})" if outcome.detail else ""),
            markup=False,
            highlight=False,
        )
        return
    report = publish_jsonl(settings, file, batch_size=batch_size)
    for line_no, reason in report.bad_lines:
        console.print(f"{file}:{line_no}: {reason}", markup=False, highlight=False, soft_wrap=True)
    out.print(
        f"published {report.published} events from {file} ({len(report.bad_lines)} bad lines)"
    )
    if report.bad_lines:
        raise typer.Exit(1)


@app.command()
def demo(
    events: Annotated[
        int | None,
        typer.Option(
            help="Publish exactly this many events, wait until each is persisted or "
            "dead-lettered, print a summary and exit. Unset: run until Ctrl-C."
        ),
    ] = None,
    rate: Annotated[
        float,
        typer.Option(
            help="Events per second (0: as fast as possible). Default: 0 with --events, else 200 "
            "(100 on the durable embedded broker)."
        ),
    ] = -1,
    workers: Annotated[int, typer.Option(help="Stream worker processes.")] = 1,
    seed: Annotated[int, typer.Option(help="Random seed of the simulated city.")] = 79,
    invalid_share: Annotated[float, typer.Option(help="Share of invalid events.")] = 0.01,
    days: Annotated[
        float | None,
        typer.Option(
            help="Simulated days of event time the events span, compressed so that referrals "
            "complete and expire and appointments are reminded, kept and missed. Default: "
            "with --events, 90 (or the city's real pace of 10,400 exams a day when longer); "
            "without, a simulated day a second (at --rate) until the simulated city "
            "reaches today."
        ),
    ] = None,
    fresh: Annotated[
        bool,
        typer.Option(
            "--fresh/--keep",
            help="--keep: continue the last demo on this data directory (database, topics, "
            "outbox, the simulated city's event time); --fresh: start over, everything empty.",
        ),
    ] = False,
) -> None:
    """Run the whole system: broker, PostgreSQL, workers, sink, a simulated city, live counters."""
    from ehb.commands.demo import run_demo

    settings = load_settings()
    code = run_demo(
        settings,
        events=events,
        rate=rate,
        workers=workers,
        seed=seed,
        invalid_share=invalid_share,
        days=days,
        fresh=fresh,
        console=out,
    )
    raise typer.Exit(code)


schemas_app = typer.Typer(
    help="The schema catalog and a Confluent-compatible registry.", no_args_is_help=True
)
app.add_typer(schemas_app, name="schemas")


@schemas_app.command("register")
def schemas_register(
    url: Annotated[
        str | None, typer.Option(help="Registry URL. [env: EHB_SCHEMA_REGISTRY_URL]")
    ] = None,
) -> None:
    """Register every subject/version of the catalog (compatibility BACKWARD_TRANSITIVE)."""
    from schemas.registry import register_catalog, registry_client

    settings = load_settings(schema_registry_url=url)
    if not settings.schema_registry_url:
        raise EhbError("no registry: set EHB_SCHEMA_REGISTRY_URL or pass --url")
    table = Table("subject", "version", "registry version", "id")
    for entry in register_catalog(registry_client(settings.schema_registry_url)):
        table.add_row(
            entry.subject,
            str(entry.catalog_version),
            str(entry.registry_version),
            str(entry.schema_id),
        )
    out.print(table)


@app.command()
def lag() -> None:
    """Consumer lag of the worker, sink and reports groups, per partition (what the sink
    exports as kafka_consumergroup_lag)."""
    from sinks.lag import lag_table

    settings = load_settings()
    table = Table("group", "topic", "partition", "committed", "end", "lag")
    for p in lag_table(settings):
        table.add_row(
            p.group,
            p.topic,
            str(p.partition),
            "-" if p.committed < 0 else str(p.committed),
            str(p.end),
            str(p.lag),
        )
    out.print(table)


@app.command()
def gateway(
    directory: Annotated[
        Path,
        typer.Argument(
            help="Drop directory of the hospital systems' GIAMDINHHS *.xml files.",
            exists=True,
            file_okay=False,
        ),
    ],
    watch: Annotated[bool, typer.Option(help="Keep watching for new files until Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between polls with --watch.")] = 2.0,
    settle: Annotated[
        float, typer.Option(help="A file is complete once unmodified for this many seconds.")
    ] = 2.0,
    max_message_bytes: Annotated[
        int,
        typer.Option(
            help="Largest encoded dossier (one Kafka message); larger files are rejected."
        ),
    ] = 900_000,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            help="Serve /metrics (the producer's outbox backlog) on this port. Default: none.",
        ),
    ] = None,
) -> None:
    """Publish XML dossier files (QĐ 130/4750 GIAMDINHHS envelopes), each whole or not at all.

    Published files move to DIR/done/, malformed ones to DIR/rejected/ with a .reason.txt;
    a ledger under EHB_DATA_DIR makes sure no file content is published twice. Exit code 1
    when a file was rejected.
    """
    from producers.gateway import print_report, run_gateway

    settings = load_settings()
    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr=settings.metrics_host)
    report = run_gateway(
        settings,
        directory,
        watch=watch,
        interval=interval,
        settle_s=settle,
        max_message_bytes=max_message_bytes,
        console=console,
    )
    print_report(report, out)
    if report.count("rejected"):
        raise typer.Exit(1)


LangOption = Annotated[
    Lang,
    typer.Option(
        "--lang",
        help="Language of the reason texts: vi (Vietnamese), en (English) or both "
        "(Vietnamese first).",
    ),
]


@app.command()
def reasons(
    lang: LangOption = Lang.both,
    markdown: Annotated[
        bool,
        typer.Option(
            "--markdown", help="Print docs/reference.md's Markdown table (both languages)."
        ),
    ] = False,
) -> None:
    """Every dead-letter reason code: what it means and what the facility should fix, in
    Vietnamese and English."""
    from ehb.commands.reasons import reasons_table
    from schemas.reasons import reasons_markdown

    if markdown:
        out.print(reasons_markdown(), end="", markup=False, highlight=False, soft_wrap=True)
        return
    out.print(reasons_table(lang))


@app.command()
def rejected(
    facility: Annotated[
        str,
        typer.Option(
            "--facility",
            "-f",
            metavar="MA_CSKCB",
            help="The facility's code (MA_CSKCB, mã cơ sở KCB), e.g. 79001.",
        ),
    ],
    day: Annotated[
        str | None,
        typer.Option(
            metavar="DAY",
            help="One day, Vietnam time: YYYY-MM-DD, today or yesterday. Default: today.",
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(metavar="DAY", help="First day of a range (YYYY-MM-DD, Vietnam time)."),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(metavar="DAY", help="Last day of the range, included (default: today)."),
    ] = None,
    output_format: Annotated[
        RejectedFormat,
        typer.Option("--format", help="table (terminal), csv (spreadsheet) or json."),
    ] = RejectedFormat.table,
    lang: LangOption = Lang.both,
    limit: Annotated[
        int,
        typer.Option(min=0, help="List at most this many dead letters, oldest first (0: all)."),
    ] = DEFAULT_LIMIT,
) -> None:
    """A facility's own rejected episodes (dead letters) of a day or several, in Vietnam time:
    when, the reason code, what it means and what to fix (Vietnamese and English), the source
    position and the event id. Never names, citizen IDs or the original bytes."""
    from ehb.commands.rejected import check_facility, period, print_rejected, today_in_vietnam

    try:
        code = check_facility(facility)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--facility'") from None
    try:
        days = period(day, since, until, today_in_vietnam())
    except ValueError as exc:
        raise EhbError(str(exc)) from None
    print_rejected(
        load_settings(),
        code,
        days,
        output_format=output_format,
        languages=lang.languages,
        limit=limit,
        out=out,
        err=console,
    )


console_app = typer.Typer(
    help="The web console (Department of Health, facilities): `ehb console` serves it on "
    "EHB_CONSOLE_HOST:EHB_CONSOLE_PORT (127.0.0.1:8400); its accounts live in PostgreSQL "
    "(docs/console.md).",
    invoke_without_command=True,
)
app.add_typer(console_app, name="console")


class ConsoleRole(StrEnum):
    operator = "operator"
    facility = "facility"


@console_app.callback()
def console_serve(
    ctx: typer.Context,
    host: Annotated[
        str | None,
        typer.Option(help="Address to bind (loopback by default). [env: EHB_CONSOLE_HOST]"),
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port (default 8400). [env: EHB_CONSOLE_PORT]")
    ] = None,
) -> None:
    """Serve the web console until Ctrl-C (read-only on the pipeline's tables: role
    ehb_console)."""
    if ctx.invoked_subcommand is not None:
        return
    from console.server import serve

    settings = load_settings(console_host=host, console_port=port)
    log.info("console on http://%s:%d", settings.console_host, settings.console_port)
    serve(settings)


def _owner_connection() -> Any:
    """A connection as the database owner (EHB_DATABASE_URL), the console's tables migrated."""
    from ehb.db import connect
    from sinks.migrate import migrate

    conn = connect(load_settings(), application_name="ehb-console-accounts")
    migrate(conn)
    return conn


@console_app.command("add-user")
def console_add_user(
    username: Annotated[
        str, typer.Argument(help="Account name: 3-64 lowercase letters, digits, '.', '_', '-'.")
    ],
    role: Annotated[
        ConsoleRole,
        typer.Option(help="operator (Department of Health: everything) or facility (its own)."),
    ],
    facility: Annotated[
        str | None,
        typer.Option(metavar="MA_CSKCB", help="The facility of a facility account, e.g. 79001."),
    ] = None,
    password_stdin: Annotated[
        bool,
        typer.Option(
            "--password-stdin", help="Read the password from the first line of standard input."
        ),
    ] = False,
    replace: Annotated[
        bool,
        typer.Option(
            "--replace", help="Reset an existing account (role, facility, password, sessions)."
        ),
    ] = False,
) -> None:
    """Create a console account, as the database owner (EHB_DATABASE_URL). The password is
    asked for (or read from stdin), never taken from the command line."""
    from console.accounts import MIN_PASSWORD, Role, add_account

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt(
            f"password (at least {MIN_PASSWORD} characters)",
            hide_input=True,
            confirmation_prompt=True,
        )
    conn = _owner_connection()
    try:
        add_account(conn, username, Role(role.value), password, facility, replace=replace)
    except ValueError as exc:
        raise EhbError(str(exc)) from None
    finally:
        conn.close()
    where = f" of facility {facility}" if facility else ""
    console.print(f"account {username}: {role.value}{where}")


@console_app.command("disable-user")
def console_disable_user(
    username: Annotated[str, typer.Argument(help="The account to disable.")],
) -> None:
    """Disable a console account and end its sessions."""
    from console.accounts import disable_account

    conn = _owner_connection()
    try:
        if not disable_account(conn, username):
            raise EhbError(f"no account {username}")
    finally:
        conn.close()
    console.print(f"account {username} disabled")


@console_app.command("users")
def console_users() -> None:
    """List the console accounts (never their password hashes)."""
    from console.accounts import list_accounts

    conn = _owner_connection()
    try:
        rows = list_accounts(conn)
    finally:
        conn.close()
    table = Table("account", "role", "facility", "created", "last login", "disabled")
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    out.print(table)


state_app = typer.Typer(
    help="The worker's citizens table (docs/state-store.md).",
    no_args_is_help=True,
)
app.add_typer(state_app, name="state")


@state_app.command("migrate-keys")
def state_migrate_keys(
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Only count the citizens still under JSON keys."),
    ] = False,
) -> None:
    """Rewrite the citizens still under JSON keys in the table's changelog under binary keys
    (each: its binary record, then its JSON key's tombstone). With the workers stopped: one
    writing meanwhile could be overwritten. Run again, it finds nothing to do."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from ehb.commands.state_keys import migrate_keys

    settings = load_settings()
    with Progress(
        TextColumn("changelog partition {task.fields[partition]}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        transient=True,
    ) as bar:
        tasks: dict[int, Any] = {}

        def progress(partition: int, read: int, total: int) -> None:
            if partition not in tasks:
                tasks[partition] = bar.add_task("", total=total, partition=partition)
            bar.update(tasks[partition], completed=read)

        try:
            result = migrate_keys(settings, dry_run=dry_run, progress=progress)
        except RuntimeError as exc:
            console.print(f"[red]error:[/] {exc}")
            raise typer.Exit(1) from None
    if dry_run:
        out.print(
            f"{result.records:,} changelog records read: {result.json_citizens:,} citizens "
            f"under JSON keys (by partition: {result.per_partition})",
            soft_wrap=True,
        )
    else:
        out.print(
            f"{result.records:,} changelog records read: {result.json_citizens:,} citizens "
            f"under JSON keys; {result.rewritten:,} written under their binary key, "
            f"{result.tombstoned:,} JSON keys tombstoned",
            soft_wrap=True,
        )


registry_app = typer.Typer(
    help="The facility registry in PostgreSQL. Workers reload it every "
    "EHB_REGISTRY_REFRESH_S seconds: changes apply without restarting them.",
    no_args_is_help=True,
)
app.add_typer(registry_app, name="registry")


@registry_app.command("load")
def registry_load(
    file: Annotated[
        Path,
        typer.Argument(
            help="CSV file with columns code,name,level,district "
            "(the format of schemas/reference/facilities.csv).",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ],
    deactivate_missing: Annotated[
        bool,
        typer.Option(
            "--deactivate-missing",
            help="Deactivate every facility the file does not list (its events are then "
            "dead-lettered facility_unknown).",
        ),
    ] = False,
) -> None:
    """Add or update facilities from a CSV file, in one transaction."""
    from ehb.commands.registry import load_registry_file
    from ehb.db import connect

    settings = load_settings()
    conn = connect(settings, application_name="ehb-registry")
    try:
        upserted, deactivated = load_registry_file(
            conn, file, deactivate_missing=deactivate_missing
        )
    finally:
        conn.close()
    out.print(
        f"{upserted} facilities loaded from {file}, {deactivated} deactivated; workers "
        f"apply it within {settings.registry_refresh_s:g}s (EHB_REGISTRY_REFRESH_S)",
        soft_wrap=True,
    )


@registry_app.command("list")
def registry_list(
    include_inactive: Annotated[
        bool, typer.Option("--all", help="Include inactive facilities.")
    ] = False,
) -> None:
    """List the registry's facilities (active ones unless --all)."""
    from ehb.db import connect
    from ehb.facilities import list_registry

    settings = load_settings()
    conn = connect(settings, application_name="ehb-registry")
    try:
        rows = list_registry(conn, include_inactive=include_inactive)
    finally:
        conn.close()
    table = Table("code", "name", "level", "district", "active")
    for row in rows:
        table.add_row(
            row.code, row.name, row.level, row.district or "", "yes" if row.active else "no"
        )
    out.print(table)
    out.print(f"{len(rows)} facilities")


# -- downstream services: topic contracts, tail, replay -----------------------------------
@app.command()
def asyncapi(
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Write nothing; exit 1 with a diff when the file differs from the "
            "generated document.",
        ),
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option(help="The document's path (default: asyncapi.yaml at the repository root)."),
    ] = None,
) -> None:
    """Generate asyncapi.yaml, the AsyncAPI 3 contract of every topic, from the schemas and
    settings (keys, Avro payloads, partitioning, retention, personal data)."""
    from ehb.commands.asyncapi import DEFAULT_OUTPUT, write
    from ehb.commands.asyncapi import check as check_document

    path = output or DEFAULT_OUTPUT
    if check:
        diff = check_document(path)
        if diff:
            sys.stdout.write("\n".join(diff[:300]) + "\n")
            console.print(f"{path} is out of date: run `ehb asyncapi` and commit it")
            raise typer.Exit(1)
        out.print(f"{path} is up to date")
        return
    out.print(f"{'wrote' if write(path) else 'unchanged:'} {path}")


@app.command()
def tail(
    topic: Annotated[
        str,
        typer.Argument(
            help="Logical topic (examinations, health-book, referrals, appointments, dead-letter, "
            "examinations-by-citizen, citizens-changelog, ...) or a full topic name."
        ),
    ],
    from_beginning: Annotated[
        bool,
        typer.Option("--from-beginning", help="Start at the oldest record of every partition."),
    ] = False,
    from_offset: Annotated[
        int | None,
        typer.Option(
            "--from-offset", help="Start at this offset of every partition (or of --partition)."
        ),
    ] = None,
    from_time: Annotated[
        str | None,
        typer.Option(
            "--from-time",
            help="Start at the first record at or after this ISO 8601 time "
            "(Vietnam time, UTC+7, when it has no offset).",
        ),
    ] = None,
    count: Annotated[
        int | None, typer.Option("--count", "-n", help="Exit after N records.")
    ] = None,
    partition: Annotated[int | None, typer.Option(help="Read only this partition.")] = None,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow/--no-follow", help="Wait for new records (default) or exit at the end."
        ),
    ] = True,
    show_personal_data: Annotated[
        bool,
        typer.Option(
            "--show-personal-data",
            help="Print names, citizen IDs, card numbers... in clear (masked by default).",
        ),
    ] = False,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the broker before giving up.")
    ] = 5.0,
) -> None:
    """Follow a topic and print its records decoded, as JSON Lines (for jq): from the end by
    default; bytes as base64, timestamps ISO 8601; personal data masked."""
    from ehb.commands.tail import start_from, tail_to_stdout

    start = start_from(from_beginning, from_offset, from_time)
    tail_to_stdout(
        load_settings(),
        topic,
        start=start,
        count=count,
        show_personal_data=show_personal_data,
        follow=follow,
        partition=partition,
        connect_timeout=timeout,
    )


@app.command()
def replay(
    from_time: Annotated[
        str,
        typer.Option(
            "--from-time",
            help="Re-process the input messages published at or after this ISO "
            "8601 time (Vietnam time, UTC+7, when it has no offset).",
        ),
    ],
    to_time: Annotated[
        str | None, typer.Option("--to-time", help="... and before this time (default: now).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Read and validate the range, report, send nothing.")
    ] = False,
) -> None:
    """Re-process the input topic from a point in time into the outputs, beside the running
    workers; idempotent: an already-processed range leaves the persisted state unchanged.

    Use it after fixing a validation rule (events dead-lettered by the old rule now reach the
    health book) or to re-emit outputs for a new consumer. See docs/consuming.md, "Replay".
    """
    from ehb.commands.tail import parse_time
    from streams.replay import replay as run_replay

    settings = load_settings()
    start = parse_time(from_time)
    end = parse_time(to_time) if to_time is not None else None
    with console.status("replaying..."):
        summary = run_replay(settings, start, end, dry_run=dry_run)
    out.print_json(json.dumps(summary.as_dict()))


#: click's base exception as typer ships it (typer >= 0.20 vendors its own copy of click)
_CLICK_ERROR: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"
)


def one_line(text: str) -> str:
    """``text`` on one line (a message may quote a multi-line log or library error)."""
    return " | ".join(line.strip() for line in str(text).splitlines() if line.strip())


def report_error(message: str) -> None:
    """A user mistake: ``error: ...`` in one line on stderr, the message never read as markup."""
    console.print(Text.assemble(("error:", "red"), " ", one_line(message)), soft_wrap=True)


def main(args: list[str] | None = None) -> None:
    """The ``ehb`` entry point. A user mistake (an :class:`EhbError`, a bad option or argument)
    is one line on stderr and exit code 2, never a traceback."""
    try:
        code = app(args=args, standalone_mode=False)
    except _CLICK_ERROR as exc:  # unknown option, missing file ...: click's own message
        error: Any = exc
        if type(error).__name__ == "NoArgsIsHelpError":  # `ehb`, `ehb schemas`: the help
            error.show()
        else:
            ctx = getattr(error, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            report_error(error.format_message() + hint)
        sys.exit(error.exit_code)
    except EhbError as exc:
        report_error(str(exc))
        sys.exit(2)
    except (KeyboardInterrupt, typer.Abort):
        console.print("interrupted")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


def _elapsed(start: float) -> str:
    return f"{time.monotonic() - start:.1f}s"
