"""Debian's Chromium, headless, for the pages the project ships or uses (Flower): the page as the browser built it,
and a screenshot. Run as root here, hence without Chromium's sandbox."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

# no sandbox (root here); nothing of its own on the network (it would keep trying to reach the internet); scripts
# get 5 s of the page's time before it is read
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
         "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--virtual-time-budget=5000")


def chromium_binary() -> str:
    found = shutil.which("chromium")
    if found is None:
        raise FileNotFoundError("chromium is not installed: make system-deps installs Debian's")
    return found


def chromium(*args: str, timeout: float = 60) -> str:
    """What Chromium printed for ``args`` (``--dump-dom <url>``: the page after its scripts ran)."""
    with tempfile.TemporaryDirectory(prefix="matchenv-chromium-") as profile:  # an empty profile each time
        result = subprocess.run([chromium_binary(), *FLAGS, f"--user-data-dir={profile}", *args],
                                capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"chromium {' '.join(args)} exited with {result.returncode}: {result.stderr[-2000:]}")
    return result.stdout


def screenshot(url: str, path: Path, width: int = 1280, height: int = 520) -> Path:
    chromium(f"--screenshot={path}", f"--window-size={width},{height}", url)
    return path


def table_rows(dom: str) -> list[tuple[str, ...]]:
    """The text of each body row's cells (``<td>``) of the page's tables."""
    rows = []
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", dom, re.S):
        cells = tuple(re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S))
        if cells:
            rows.append(cells)
    return rows


def flower_workers(url: str) -> list[tuple[str, ...]]:
    """Flower's workers page (``<flower>/workers``) as a user sees it: per worker its name, status, active,
    processed, failed, succeeded and load average."""
    return table_rows(chromium("--dump-dom", url))


def count(cell: str) -> int:
    """A count as a page shows it (Flower writes 1,001)."""
    return int(cell.replace(",", "") or 0)
