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


@dataclass
class Series:
    """Points for a plot: ``label`` → list of (x, y)."""

    title: str
    xlabel: str
    ylabel: str
    lines: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    cdf: bool = False  # lines hold raw samples in y (x unused): plot each as an empirical CDF
