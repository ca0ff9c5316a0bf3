"""docs/benchmarks.md and its plot, from the measures of one run."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from matchenv_devkit.bench.result import Measure, Series

ANCHORS = Path(__file__).with_name("anchors.md")  # the tools this replaces, their documented defaults


def _versions(rabbit: str) -> str:
    """The versions the run used: ``rabbit`` is what the bench's broker said it runs."""

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "-"

    try:
        postgres = subprocess.run(["psql", "--version"], capture_output=True, text=True, timeout=10).stdout.split()[2]
    except (OSError, subprocess.SubprocessError, IndexError):
        postgres = "-"
    return (f"Python {platform.python_version()}, RabbitMQ {rabbit}, PostgreSQL {postgres}, pika {version('pika')}, "
            f"celery {version('celery')}, kombu {version('kombu')}, psycopg {version('psycopg')}, "
            f"kopf {version('kopf')}, matchenv {version('matchenv')}")


def _machine() -> str:
    memory = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {memory} memory, {platform.system()} {platform.release()}"


def render(measures: list[Measure], plots: list[str], seconds: float, rabbit: str = "-") -> str:
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (never part of `make test`; nothing here is a timed assertion). Each measure runs "
        "beside its baseline in the same run, on this machine's own broker, database and control plane; ratios are "
        "what to compare across machines.",
        "",
        f"- when: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {seconds / 60:.1f} minutes",
        f"- machine: {_machine()}",
        f"- versions: {_versions(rabbit)}",
        "",
        "| what | matchenv | baseline, same run | ratio |",
        "|---|---|---|---|",
    ]
    lines += [f"| {m.name} | {m.ours} | {m.baseline} | {m.ratio} |" for m in measures]
    lines += ["", "## Targets", "", "| target | measured | |", "|---|---|---|"]
    for m in measures:
        for t in m.targets:
            lines.append(f"| {t.text} | {t.value:.3g} | {'met' if t.met else '**missed**'} |")
    notes = [(m.name, n) for m in measures for n in m.notes]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {name}: {note}" for name, note in notes]
    profiles = [m for m in measures if m.profile]
    if profiles:
        lines += ["", "## Profiles of missed targets", ""]
        for m in profiles:
            lines += [f"### {m.name}", "", "```", m.profile.strip(), "```", ""]
    if plots:
        lines += [""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    lines += ["", ANCHORS.read_text()]
    return "\n".join(lines).rstrip() + "\n"


def plot(series: list[Series], path: Path) -> Path | None:
    """One figure, a panel per series (CDFs for latency samples)."""
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(series), figsize=(6 * len(series), 4.2), squeeze=False)
    for ax, s in zip(axes[0], series, strict=True):
        for label, points in s.lines.items():
            if s.cdf:
                ys = sorted(y for _, y in points)
                ax.step(ys, [(i + 1) / len(ys) for i in range(len(ys))], where="post", label=label)
            else:
                ax.plot([x for x, _ in points], [y for _, y in points], marker="o", label=label)
        ax.set_title(s.title)
        ax.set_xlabel(s.xlabel)
        ax.set_ylabel(s.ylabel)
        if s.cdf:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
