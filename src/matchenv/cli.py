"""The one ``matchenv`` command line: operator, worker, scraper and CRD generation. (The local dev cluster and the
demo are the dev kit's: ``matchenv-dev``.)"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from matchenv import __version__
from matchenv.dlq.cli import app as dlq_app
from matchenv.overview.cli import status

app = typer.Typer(
    help="matchenv: fan one RabbitMQ match feed out to per-environment queues, workers and databases.",
    no_args_is_help=True,
    add_completion=False,
)
db_app = typer.Typer(help="The environment database.", no_args_is_help=True)
app.add_typer(db_app, name="db")
operator_app = typer.Typer(help="The Kubernetes operator.", no_args_is_help=True)
app.add_typer(operator_app, name="operator")
app.add_typer(dlq_app, name="dlq")
app.command("status")(status)
BROKER_URL_HELP = "AMQP URL, or a cluster's nodes' URLs separated by ';' (env RABBITMQ_URL)."


def _echo_err(message: str) -> None:
    typer.echo(message, err=True)


@app.callback(invoke_without_command=True)
def _main(version: bool = typer.Option(False, "--version", help="Print the version and exit.")) -> None:
    if version:
        typer.echo(__version__)
        raise typer.Exit(0)


@app.command()
def crd(
    root: Path = typer.Option(Path("."), "--root", help="Repository root to write under."),
    check: bool = typer.Option(False, "--check", help="Exit 1 if the files on disk differ from the models."),
) -> None:
    """Generate the MatchEnvironment CRD and its defaulting policy (crds/, manifests/, the chart) from the models."""
    from matchenv.crd import rendered_files

    stale = []
    for name, content in rendered_files().items():
        path = root / name
        if check:
            if not path.exists() or path.read_text() != content:
                stale.append(str(path))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        typer.echo(f"wrote {path}")
    if stale:
        _echo_err(f"out of date with src/matchenv/api.py: {', '.join(stale)} (run `make crds`)")
        raise typer.Exit(1)


@operator_app.command("run")
def operator_run(
    namespace: list[str] = typer.Option([], "--namespace", "-n", help="Namespace to watch (repeat); default: all."),
    resync_seconds: float | None = typer.Option(
        None, help="Seconds between drift checks (env MATCHENV_RESYNC_SECONDS)."
    ),
    broker_secret: str | None = typer.Option(
        None, help="namespace/name of the default broker Secret (env MATCHENV_BROKER_SECRET)."
    ),
    operator_namespace: str | None = typer.Option(None, help="Namespace of the leader Lease (env POD_NAMESPACE)."),
    leader_election: bool | None = typer.Option(None, "--leader-election/--no-leader-election",
                                                help="Run as active/standby through a Lease (default on)."),
    metrics_port: int | None = typer.Option(None, help="Prometheus port, 0 for none (env MATCHENV_METRICS_PORT)."),
    health_port: int | None = typer.Option(None, help="Liveness port, 0 for none (env MATCHENV_HEALTH_PORT)."),
    kubeconfig: str | None = typer.Option(None, help="Kubeconfig outside a cluster (env KUBECONFIG)."),
    log_json: bool = typer.Option(False, "--log-json", help="Structured JSON logs."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Run the operator: converge MatchEnvironments and keep them converged."""
    from pydantic import ValidationError

    from matchenv.operator.main import run
    from matchenv.operator.settings import OperatorSettings

    try:
        settings = OperatorSettings.from_env(
            namespaces=namespace or None, resync_seconds=resync_seconds, broker_secret=broker_secret,
            operator_namespace=operator_namespace, leader_election=leader_election, metrics_port=metrics_port,
            health_port=health_port, kubeconfig=kubeconfig, log_json=log_json or None,
        )
    except ValidationError as exc:
        _echo_err(f"error: invalid operator settings: {exc}")
        raise typer.Exit(2) from exc
    raise typer.Exit(run(settings, verbose=verbose))


@app.command()
def worker(
    queue: str | None = typer.Option(None, "--queue", "-Q", help="Queue to consume (env MATCHENV_QUEUE)."),
    concurrency: int | None = typer.Option(None, "--concurrency", "-c", min=1, max=64,
                                           help="Tasks at once (env MATCHENV_CONCURRENCY, default 1)."),
    loglevel: str = typer.Option("INFO", "--loglevel", "-l", help="DEBUG, INFO, WARNING, ERROR."),
    log_json: bool = typer.Option(False, "--log-json", help="One JSON object per log line (env MATCHENV_LOG_JSON)."),
) -> None:
    """Consume one environment's queue and upsert each match into its database."""
    import logging

    from pydantic import ValidationError

    from matchenv import logs
    from matchenv.contracts import ENV_ENVIRONMENT, owner_namespace
    from matchenv.workers.app import create_app, worker_argv
    from matchenv.workers.config import WorkerConfig, WorkerConfigError
    from matchenv.workers.metrics import serve

    try:
        config = WorkerConfig.from_env(os.environ, queue=queue, concurrency=concurrency)
    except (WorkerConfigError, ValidationError) as exc:
        _echo_err(f"error: {exc}")
        raise typer.Exit(2) from exc
    as_json = logs.json_wanted(log_json, os.environ)
    logs.configure(loglevel, as_json,
                   {"namespace": owner_namespace(config.owner),
                    "environment": os.environ.get(ENV_ENVIRONMENT), "queue": config.queue})
    log = logging.getLogger("matchenv.worker")
    log.info("worker for queue %s writing to %s", config.queue, config.database.describe())
    if config.database.kind == "postgres" and config.database.migrate:
        from matchenv.workers.migrate import migrate

        try:  # idempotent and advisory-locked, so every worker may do it; if the database is not up yet, the first
            # message that finds the schema missing migrates it
            applied = migrate(config.database.url.get_secret_value())
            log.info("schema %s", f"migrated: {', '.join(applied)}" if applied else "up to date")
        except Exception as exc:
            log.warning("could not migrate the schema now (%s); the first message migrates it once the database "
                        "answers", exc)
    if config.metrics_port:
        serve(config.metrics_port)
    create_app(config).worker_main(worker_argv(config, loglevel.upper(), quiet=as_json))


@app.command()
def flower(
    port: int = typer.Option(5555, "--port", min=1, max=65535, envvar="FLOWER_PORT",
                             help="Port Flower serves its pages on."),
    address: str = typer.Option("0.0.0.0", "--address", help="Address to listen on."),
    url_prefix: str = typer.Option("", "--url-prefix", help="Serve under this path (behind a proxy)."),
) -> None:
    """Serve Flower on one environment's task events (spec.workers.taskEvents), with its Secret <env>-events: the
    broker URL in CELERY_BROKER_URL (key url), the exchange in MATCHENV_EVENTS_EXCHANGE (key events-exchange)."""
    from matchenv.contracts import ENV_BROKER_URL, ENV_EVENTS_EXCHANGE
    from matchenv.flower import flower_app, flower_argv

    missing = [name for name in (ENV_BROKER_URL, ENV_EVENTS_EXCHANGE) if not os.environ.get(name)]
    if missing:
        _echo_err(f"error: {' and '.join(missing)} not set: take them from the environment's Secret <env>-events "
                  "(keys url and events-exchange), which the operator writes when spec.workers.taskEvents is true")
        raise typer.Exit(2)
    app = flower_app(os.environ[ENV_BROKER_URL], os.environ[ENV_EVENTS_EXCHANGE])
    app.start(flower_argv(port, address, url_prefix))


@db_app.command("migrate")
def db_migrate(
    database_url: str | None = typer.Option(None, help="PostgreSQL URL (env DATABASE_URL)."),
) -> None:
    """Create or update the matches table and the upsert function."""
    from matchenv.workers.migrate import migrate

    url = database_url or os.environ.get("DATABASE_URL")
    if not url:
        _echo_err("error: no database: pass --database-url or set DATABASE_URL")
        raise typer.Exit(2)
    try:
        applied = migrate(url)
    except Exception as exc:
        _echo_err(f"error: migration failed: {exc}")
        raise typer.Exit(1) from exc
    typer.echo(f"applied {', '.join(applied)}" if applied else "up to date")


@db_app.command("sql")
def db_sql() -> None:
    """Print the schema SQL (for Supabase: paste it into the SQL editor once)."""
    from matchenv.workers.migrate import migrations

    for version, text in migrations():
        typer.echo(f"-- {version}\n{text}")


@app.command()
def scrape(
    from_file: Path | None = typer.Option(None, "--from-file", exists=True, dir_okay=False,
                                          envvar="MATCHENV_SCRAPE_FROM_FILE",
                                          help="JSON array or JSON lines of matches, as the scraper writes them."),
    synthetic: int | None = typer.Option(None, "--synthetic", min=1, envvar="MATCHENV_SCRAPE_SYNTHETIC",
                                         help="Publish N synthetic matches."),
    seed: int = typer.Option(2025, envvar="MATCHENV_SCRAPE_SEED",
                             help="Seed of --synthetic (the same seed gives the same matches)."),
    start: int = typer.Option(0, envvar="MATCHENV_SCRAPE_START",
                              help="First index of --synthetic (to continue a series)."),
    queue: str | None = typer.Option(None, "--queue", help="Publish straight to this queue (wins over --exchange)."),
    exchange: str | None = typer.Option(None, "--exchange", envvar="MATCHENV_SCRAPE_EXCHANGE",
                                        help="Publish to this exchange (default matches-fanout)."),
    no_submit_queue: bool = typer.Option(False, "--no-submit-queue", help="Validate and count; publish nothing."),
    broker_url: str | None = typer.Option(None, "--broker-url", help=BROKER_URL_HELP),
    retry_seconds: float = typer.Option(120.0, min=0, envvar="MATCHENV_SCRAPE_RETRY_SECONDS",
                                        help="How long to keep reconnecting to a lost broker."),
    max_blocked: float = typer.Option(900.0, "--max-blocked", min=1, envvar="MATCHENV_SCRAPE_MAX_BLOCKED",
                                      help="How long to wait while the broker blocks publishing (a memory or disk "
                                           "alarm) before giving up."),
    max_rate: float = typer.Option(0.0, "--max-rate", min=0, envvar="MATCHENV_SCRAPE_MAX_RATE",
                                   help="Matches per second at most (0: as fast as the broker confirms)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    log_json: bool = typer.Option(False, "--log-json", help="One JSON object per log line (env MATCHENV_LOG_JSON)."),
) -> None:
    """Publish matches once to the fanout exchange, with confirms; exit 1 if any reached no queue or failed,
    3 if only invalid matches were left out. The options that name an env var may come from the environment (as
    the CronJob's ConfigMap sets them)."""
    import logging
    from itertools import chain

    from matchenv import logs
    from matchenv.scraper.publisher import Publisher, resolve_target
    from matchenv.scraper.sources import RawMatch
    from matchenv.scraper.sources import from_file as read_file
    from matchenv.scraper.sources import synthetic as make_synthetic

    logs.configure(logging.WARNING, logs.json_wanted(log_json, os.environ),
                   {"exchange": exchange, "queue": queue}, text_format="%(levelname)s %(message)s")
    logging.getLogger("pika").setLevel(logging.CRITICAL)  # our own warnings say what happened, once
    if from_file is None and synthetic is None:
        _echo_err("error: give --from-file PATH or --synthetic N")
        raise typer.Exit(2)
    url = broker_url or os.environ.get("RABBITMQ_URL")
    if not url and not no_submit_queue:
        _echo_err("error: no broker: pass --broker-url or set RABBITMQ_URL")
        raise typer.Exit(2)
    sources: list[list[RawMatch]] = []
    if from_file is not None:
        sources.append(list(read_file(from_file)))
    if synthetic is not None:
        sources.append(list(make_synthetic(synthetic, seed=seed, start=start)))
    matches = list(chain.from_iterable(sources))
    target = resolve_target(queue, exchange)
    publisher = Publisher(url or "amqp://localhost", target, retry_seconds=retry_seconds, max_rate=max_rate,
                          max_blocked=max_blocked)
    where = "nowhere (--no-submit-queue)" if no_submit_queue else target.describe()
    _echo_err(f"publishing {len(matches)} matches to {where}")
    show = not quiet and sys.stderr.isatty()
    with typer.progressbar(length=len(matches), label="publishing", file=sys.stderr, hidden=not show) as bar:
        report = publisher.run(matches, submit=not no_submit_queue, progress=bar.update)
    for problem in report.invalid:
        _echo_err(f"invalid {problem.describe()}")
    for error in report.errors:
        _echo_err(f"error: {error}")
    if report.unroutable:
        _echo_err(f"error: {report.unroutable} matches were unroutable: no environment's queue is bound to "
                  f"{target.describe()}")
    typer.echo(report.summary())
    raise typer.Exit(report.exit_code)


@app.command()
def backfill(
    archive: str = typer.Option(..., envvar="MATCHENV_ARCHIVE_QUEUE", help="The archive stream to read."),
    exchange: str = typer.Option(..., envvar="MATCHENV_BACKFILL_EXCHANGE",
                                 help="The exchange bound to the environment's queue only."),
    from_: str = typer.Option(..., "--from", envvar="MATCHENV_BACKFILL_FROM",
                              help="First instant to replay (RFC 3339)."),
    mandatory: bool = typer.Option(True, "--mandatory/--no-mandatory", envvar="MATCHENV_BACKFILL_MANDATORY",
                                   help="Fail on a message the exchange routes nowhere (off for a topic exchange "
                                   "with keys: the others are meant to go nowhere)."),
    broker_url: str | None = typer.Option(None, "--broker-url", help=BROKER_URL_HELP),
    timeout: float = typer.Option(10.0, min=1, help="Seconds each broker call may take."),
    empty_wait: float = typer.Option(30.0, min=0.1, envvar="MATCHENV_BACKFILL_EMPTY_WAIT",
                                     help="Seconds without any message before the archive (from --from on) counts "
                                     "as empty; a slow broker's first delivery may take a while."),
    retry_seconds: float = typer.Option(120.0, min=0, envvar="MATCHENV_BACKFILL_RETRY_SECONDS",
                                        help="How long to keep connecting again (to the next node) after the "
                                        "broker is lost; the replay resumes after the last confirmed offset."),
    log_json: bool = typer.Option(False, "--log-json", help="One JSON object per log line (env MATCHENV_LOG_JSON)."),
) -> None:
    """Replay the archive into one environment's queue (what the operator's backfill Job runs). It ends only at
    the archive's end as it was when it began (exit 0), or fails (exit 1) so that the Job tries again."""
    import datetime as dt
    import logging

    from matchenv import logs
    from matchenv.contracts import ENV_ENVIRONMENT, ENV_OWNER, owner_namespace
    from matchenv.replay import ReplayError, replay, summary, write_termination_message

    logs.configure(logging.INFO, logs.json_wanted(log_json, os.environ),
                   {"namespace": owner_namespace(os.environ.get(ENV_OWNER)),
                    "environment": os.environ.get(ENV_ENVIRONMENT)},
                   text_format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("pika").setLevel(logging.WARNING)
    url = broker_url or os.environ.get("RABBITMQ_URL")
    if not url:
        _echo_err("error: no broker: pass --broker-url or set RABBITMQ_URL")
        raise typer.Exit(2)
    try:
        start = dt.datetime.fromisoformat(from_)
    except ValueError:
        _echo_err(f"error: --from {from_!r} is not an RFC 3339 time")
        raise typer.Exit(2) from None
    if start.tzinfo is None:
        start = start.replace(tzinfo=dt.UTC)
    try:
        report = replay(url, archive, exchange, start, mandatory, timeout=timeout, empty_wait=empty_wait,
                        progress=lambda r: typer.echo(r.progress()), retry_seconds=retry_seconds)
    except ReplayError as exc:
        write_termination_message(summary(None, str(exc)))
        _echo_err(f"error: {exc}")
        raise typer.Exit(1) from exc
    write_termination_message(summary(report))
    typer.echo(report.describe())


@app.command("broker-secret")
def broker_secret(
    url: str = typer.Option(..., help="AMQP URL as the workers reach the broker, e.g. amqp://rabbitmq:5672; a "
                            "cluster's nodes separated by ';' (or its Service)."),
    management_url: str = typer.Option(..., help="Management API URL, e.g. http://rabbitmq:15672; a cluster's "
                                       "nodes separated by ';' (or its Service)."),
    username: str = typer.Option("matchenv-admin", help="Admin user the operator manages the broker as."),
    namespace: str = typer.Option("matchenv-system", help="Namespace of the Secret."),
    name: str = typer.Option("matchenv-broker", help="Name of the Secret."),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the password from standard input "
                                        "instead of generating one."),
) -> None:
    """Print the operator's broker Secret as YAML (pipe it to `kubectl apply -f -`); the password is generated."""
    import secrets as _secrets

    import yaml

    password = sys.stdin.readline().strip() if password_stdin else _secrets.token_urlsafe(24)
    if not password:
        _echo_err("error: empty password on standard input")
        raise typer.Exit(2)
    secret = {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/name": "matchenv"}},
        "stringData": {"url": url, "management-url": management_url, "username": username, "password": password},
    }
    typer.echo(yaml.safe_dump(secret, sort_keys=False), nl=False)


@app.command("crd-ready")
def crd_ready(
    timeout: float = typer.Option(30.0, help="Seconds to wait."),
    namespace: str = typer.Option("default", help="Namespace for the dry-run probe."),
    defaulting: bool = typer.Option(True, "--defaulting/--no-defaulting",
                                    help="Also wait for the queue-name defaulting policy (components/defaulting)."),
) -> None:
    """Wait until the API server serves MatchEnvironments (and applies the queue-name default)."""
    from kubernetes import client, config

    from matchenv.crd import wait_until_served

    config.load_kube_config()
    try:
        wait_until_served(client.CustomObjectsApi(), namespace=namespace, timeout=timeout, defaulting=defaulting)
    except TimeoutError as exc:
        _echo_err(f"error: {exc}")
        raise typer.Exit(1) from exc
    typer.echo("MatchEnvironments are served")


def main() -> None:  # pragma: no cover
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
