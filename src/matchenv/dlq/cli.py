"""``matchenv dlq``: list, show, redrive and purge one environment's dead letters (also ``kubectl matchenv dlq``).

Exit codes: 0 done; 1 the broker or the Kubernetes API failed (the message says which); 2 bad input (an unknown
environment or reason, a purge without ``--yes``).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from matchenv.dlq.letters import KNOWN_REASONS
from matchenv.dlq.queue import DeadLetterError, DeadLetterQueue, Tally
from matchenv.dlq.target import Target, TargetError, resolve

app = typer.Typer(help="Dead letters of one MatchEnvironment: list, show, redrive, purge.", no_args_is_help=True)

Env = Annotated[str, typer.Argument(help="The MatchEnvironment's name.", show_default=False)]
Namespace = Annotated[str | None, typer.Option("--namespace", "-n",
                                               help="Its namespace (default: the kubeconfig context's).")]
Kubeconfig = Annotated[str | None, typer.Option("--kubeconfig", envvar="KUBECONFIG", help="Kubeconfig file.")]
Context = Annotated[str | None, typer.Option("--context", help="Kubeconfig context.")]
BrokerSecret = Annotated[str | None, typer.Option(
    "--broker-secret", help="namespace/name of the operator's broker Secret, for environments without "
    "spec.broker.connectionSecretRef (env MATCHENV_BROKER_SECRET; default matchenv-system/matchenv-broker).")]
BrokerUrl = Annotated[str | None, typer.Option(
    "--broker-url", envvar="MATCHENV_BROKER_URL",
    help="AMQP URL to reach the broker at from here (e.g. amqp://127.0.0.1:5672 through kubectl port-forward); "
    "the credentials stay the Secret's.")]
Reason = Annotated[str | None, typer.Option("--reason", help=f"Only this reason ({', '.join(KNOWN_REASONS)}).")]
Output = Annotated[str, typer.Option("--output", "-o", help="text or json.")]
Timeout = Annotated[float, typer.Option("--timeout", min=1, help="Seconds each call to the broker or API may take.")]


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _target(env: str, namespace: str | None, kubeconfig: str | None, context: str | None, broker_secret: str | None,
            broker_url: str | None, timeout: float) -> Target:
    if broker_secret is not None and broker_secret.count("/") != 1:
        raise _fail(f"--broker-secret {broker_secret!r} must be namespace/name", 2)
    try:
        return resolve(env, namespace, kubeconfig, context, broker_secret, broker_url, timeout)
    except TargetError as exc:
        raise _fail(str(exc), 2 if exc.usage else 1) from exc


def _output(output: str) -> str:
    if output not in ("text", "json"):
        raise _fail(f"--output {output!r}: use text or json", 2)
    return output


def _check_reason(reason: str | None, dlq: DeadLetterQueue) -> None:
    """A reason matchenv or the broker gives, or one found in the queue; else a clear error."""
    if reason is None or reason in KNOWN_REASONS:
        return
    tally, _ = dlq.read(10_000)
    if reason not in tally.seen:
        present = ", ".join(f"{r} ({n})" for r, n in tally.seen.most_common()) or "none"
        raise _fail(f"unknown reason {reason!r}: reasons are {', '.join(KNOWN_REASONS)}; in {dlq.dlq} now: "
                    f"{present}", 2)


def _counts(counter: Any) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in counter.most_common()) or "none"


@app.command("list")
def list_(env: Env, namespace: Namespace = None, kubeconfig: Kubeconfig = None, context: Context = None,
          broker_secret: BrokerSecret = None, broker_url: BrokerUrl = None, output: Output = "text",
          limit: Annotated[int, typer.Option("--limit", min=1, help="Most messages to count.")] = 10_000,
          timeout: Timeout = 10.0) -> None:
    """Count the dead letters by reason (the queue keeps them all, in order)."""
    output = _output(output)
    target = _target(env, namespace, kubeconfig, context, broker_secret, broker_url, timeout)
    try:
        with DeadLetterQueue(target.url, target.queue, target.dead_letter_queue, timeout) as dlq:
            tally, _ = dlq.read(limit)
    except DeadLetterError as exc:
        raise _fail(str(exc), 1) from exc
    if output == "json":
        typer.echo(json.dumps({"environment": f"{target.namespace}/{target.name}", "queue": target.dead_letter_queue,
                               "messages": tally.depth, "complete": tally.complete,
                               "reasons": [{"reason": r, "messages": n, "lastDeadLetteredAt": tally.last_at.get(r)}
                                           for r, n in tally.seen.most_common()]}, indent=2))
        return
    counted = "" if tally.complete else f" (counted the first {sum(tally.seen.values())})"
    typer.echo(f"{target.where}: {target.dead_letter_queue} holds {tally.depth} messages{counted}")
    if tally.seen:
        typer.echo(f"{'REASON':<16}{'MESSAGES':>9}  LAST DEAD-LETTERED")
        for reason, n in tally.seen.most_common():
            typer.echo(f"{reason:<16}{n:>9}  {tally.last_at.get(reason) or '-'}")


@app.command()
def show(env: Env, namespace: Namespace = None, kubeconfig: Kubeconfig = None, context: Context = None,
         broker_secret: BrokerSecret = None, broker_url: BrokerUrl = None, reason: Reason = None,
         limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="Most messages to show.")] = 20,
         max_chars: Annotated[int, typer.Option("--max-chars", min=20, max=100_000,
                                                help="Longest error and body shown.")] = 300,
         output: Output = "text", timeout: Timeout = 10.0) -> None:
    """Show dead letters, oldest first: reason, when, task and match, error and body (cut short; credentials
    taken out). The queue keeps them."""
    output = _output(output)
    target = _target(env, namespace, kubeconfig, context, broker_secret, broker_url, timeout)
    try:
        with DeadLetterQueue(target.url, target.queue, target.dead_letter_queue, timeout) as dlq:
            _check_reason(reason, dlq)
            _tally, letters = dlq.read(10_000, reason)
    except DeadLetterError as exc:
        raise _fail(str(exc), 1) from exc
    shown = [letter.summary(max_chars) for letter in letters[:limit]]
    if output == "json":
        typer.echo(json.dumps(shown, indent=2))
        return
    of = f" of {reason}" if reason else ""
    typer.echo(f"{target.where}: {target.dead_letter_queue}, {len(shown)} of {len(letters)} messages{of} shown")
    for i, s in enumerate(shown, 1):
        ids = "  ".join(p for p in (f"task {s['taskId']}" if s["taskId"] else "",
                                    f"match {s['matchId']}" if s["matchId"] else "") if p)
        typer.echo(f"#{i} {s['reason']}  {s['deadLetteredAt'] or '-'}  {ids}".rstrip())
        if s["error"]:
            typer.echo(f"   error: {s['error']}")
        typer.echo(f"   body:  {s['body']}")


@app.command()
def redrive(env: Env, namespace: Namespace = None, kubeconfig: Kubeconfig = None, context: Context = None,
            broker_secret: BrokerSecret = None, broker_url: BrokerUrl = None, reason: Reason = None,
            rate: Annotated[float, typer.Option("--rate", min=0, help="Most messages a second (0: no limit).")] = 50,
            limit: Annotated[int | None, typer.Option("--limit", min=1, help="Most messages to move.")] = None,
            timeout: Timeout = 10.0) -> None:
    """Send dead letters back to the environment's own queue (only there), each confirmed by the broker before
    its dead-letter copy is removed; the workers store them again (an upsert: never twice)."""
    target = _target(env, namespace, kubeconfig, context, broker_secret, broker_url, timeout)
    try:
        with DeadLetterQueue(target.url, target.queue, target.dead_letter_queue, timeout) as dlq:
            _check_reason(reason, dlq)
            tally = dlq.redrive(reason, rate, limit)
    except DeadLetterError as exc:
        raise _fail(str(exc), 1) from exc
    _summary("moved", tally, target, reason, f" to {target.queue}")


@app.command()
def purge(env: Env, namespace: Namespace = None, kubeconfig: Kubeconfig = None, context: Context = None,
          broker_secret: BrokerSecret = None, broker_url: BrokerUrl = None, reason: Reason = None,
          yes: Annotated[bool, typer.Option("--yes", help="Really delete them.")] = False,
          timeout: Timeout = 10.0) -> None:
    """Delete dead letters for good (all, or those of --reason). Needs --yes."""
    target = _target(env, namespace, kubeconfig, context, broker_secret, broker_url, timeout)
    try:
        with DeadLetterQueue(target.url, target.queue, target.dead_letter_queue, timeout) as dlq:
            _check_reason(reason, dlq)
            if not yes:
                tally, letters = dlq.read(10_000, reason)
                count = len(letters) if reason else tally.depth
                of = f" {reason}" if reason else ""
                raise _fail(f"refusing to delete {count}{of} messages from {target.dead_letter_queue} without "
                            "--yes (they cannot be brought back)", 2)
            tally = dlq.purge(reason)
    except DeadLetterError as exc:
        raise _fail(str(exc), 1) from exc
    _summary("deleted", tally, target, reason, "")


def _summary(verb: str, tally: Tally, target: Target, reason: str | None, where: str) -> None:
    moved = sum(tally.moved.values())
    left = tally.seen - tally.moved
    by_reason = f" ({_counts(tally.moved)})" if reason is None and moved and "" not in tally.moved else ""
    of = f" {reason}" if reason else ""
    typer.echo(f"{target.where}: {verb} {moved}{of} messages from {target.dead_letter_queue}{where}{by_reason}")
    if sum(left.values()):
        typer.echo(f"left in {target.dead_letter_queue}: {sum(left.values())} ({_counts(left)})")
