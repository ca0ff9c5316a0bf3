"""``matchenv status`` (also ``kubectl matchenv status``). Exit codes: 0 printed; 1 the Kubernetes API failed;
2 bad input."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer

from matchenv.kubeconfig import KubeconfigError, api_client
from matchenv.overview.lines import overview, render
from matchenv.overview.reader import ReadError, environments, newest_by_environment


def status(
    namespace: Annotated[str | None, typer.Option("--namespace", "-n",
                                                  help="Only this namespace (default: the kubeconfig context's).")
                         ] = None,
    all_namespaces: Annotated[bool, typer.Option("--all-namespaces", "-A", help="Every namespace.")] = False,
    kubeconfig: Annotated[str | None, typer.Option("--kubeconfig", envvar="KUBECONFIG", help="Kubeconfig file.")
                          ] = None,
    context: Annotated[str | None, typer.Option("--context", help="Kubeconfig context.")] = None,
    output: Annotated[str, typer.Option("--output", "-o", help="text or json.")] = "text",
    timeout: Annotated[float, typer.Option("--timeout", min=1, help="Seconds the whole read may take.")] = 15.0,
) -> None:
    """One line per MatchEnvironment: phase, backlog, dead letters, the newest match its workers stored, and how
    far it is behind the most advanced environment of its feed (messages, and time). Reads the environments'
    status and, through the API server's pod proxy, their running workers' metrics: no broker or database
    credentials are needed (your kubeconfig needs get on pods/proxy in their namespaces for NEWEST-STORED)."""
    if output not in ("text", "json"):
        typer.echo(f"error: --output {output!r}: use text or json", err=True)
        raise typer.Exit(2)
    try:
        api, default_namespace = api_client(kubeconfig, context)
    except KubeconfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        items = environments(api, None if all_namespaces else namespace or default_namespace, timeout)
    except ReadError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    lines = overview(items, newest_by_environment(api, items, timeout))
    if output == "json":
        typer.echo(json.dumps([line.as_json() for line in lines], indent=2))
    elif not lines:
        where = "any namespace" if all_namespaces else f"namespace {namespace or default_namespace!r}"
        typer.echo(f"No MatchEnvironments in {where}.")
    else:
        typer.echo(render(lines, time.time()))
