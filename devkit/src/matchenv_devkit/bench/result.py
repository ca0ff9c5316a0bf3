"""What one measure found: figures beside their baseline, and the target it is held to."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Target:
    """``value`` compared with ``bound``: met when ``value >= bound`` (``at_least``) or ``value <= bound``."""

    text: str
    value: float
    bound: float
    at_least: bool = True

    @property
    def met(self) -> bool:
        return self.value >= self.bound if self.at_least else self.value <= self.bound


@dataclass
class Measure:
    name: str
    ours: str
    baseline: str = "—"
    ratio: str = "—"
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    profile: str = ""  # a profile that explains a missed target

    def missed(self, word: str) -> bool:
        """Whether a target whose text names ``word`` (e.g. "CPU", "RSS") was missed."""
        return any(not t.met for t in self.targets if word in t.text)


@dataclass
class Series:
    """Points for a plot: ``label`` → list of (x, y)."""

    title: str
    xlabel: str
    ylabel: str
    lines: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    cdf: bool = False  # lines hold raw samples in y (x unused): plot each as an empirical CDF


@dataclass
class BurstRun:
    """Many environments applied at once by one operator: how many were ready at each second (the last point: all),
    the CPU seconds the operator used until then and its RSS at that moment."""

    progress: list[tuple[float, float]]
    cpu_seconds: float
    rss_mib: float
    late_seconds: float | None = None  # an environment applied 2 s into the burst: its own apply -> ready
    applied: float | None = None  # seconds the burst's applies took
    elsewhere_seconds: float | None = None  # the same as late_seconds, for one applied in another namespace

    @property
    def seconds(self) -> float:
        return self.progress[-1][0]


@dataclass
class OperatorRun:
    """What one operator did in the operator measures: apply -> ready one at a time (seconds each), a deleted
    binding -> back (seconds each; None: not back within the wait), and a burst."""

    latency: list[float]
    drift: list[float | None]
    burst: BurstRun
