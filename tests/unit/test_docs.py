"""The docs name only what exists: every repository path, `make` target and `matchenv`/`matchenv-dev` command in
README.md and docs/, the README short enough to read first, and docs/design.md naming every module."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer.main

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "benchmarks.md")]
# where a path in the docs may be read from: the repository, and the trees the docs speak from inside
BASES = [ROOT, ROOT / "devkit", ROOT / "devkit/src", ROOT / "src/matchenv", ROOT / "charts/matchenv"]
TOP = ("src", "manifests", "charts", "docs", "tests", "devkit", "crds", "scripts", ".ci", ".github", "operator",
       "topology", "workers", "scraper", "dlq", "matchenv_devkit")
PATH = re.compile(r"(?<![\w/.:-])((?:" + "|".join(re.escape(t) for t in TOP) + r")/[\w./{}<>*,|-]*)")


def _code(text: str) -> list[str]:
    """Backticked spans and the lines of shell blocks (```sh, ```console: what a reader runs)."""
    fenced = re.findall(r"(?ms)^```(?:sh|console|bash)\n(.*?)^```", text)
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"(?ms)^```[^\n]*\n.*?^```", "", text))
    return [line for block in fenced for line in block.splitlines()] + inline


def _exists(path: str) -> bool:
    """A path, the part of it before a placeholder, a module named with its attribute (``dlq/target.check_owner``),
    or a file the user fills from a committed ``.example``."""
    cut = re.split(r"[<{*|]", path)[0].rstrip(",")
    candidates = {cut, cut.rstrip("/"), re.sub(r"\.\w+$", ".py", cut), f"{cut}.example"}
    return any((base / c).exists() for base in BASES for c in candidates if c)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_path_the_docs_name_exists(page: Path) -> None:
    text = page.read_text()
    named = {m.rstrip(".,;:)") for m in PATH.findall(text)}
    named |= {target for target in re.findall(r"\]\(([^)#]+)\)", text) if "://" not in target}
    missing = sorted(p for p in named if not _exists(p) and not (page.parent / p).exists())
    assert missing == []


def _commands(app_module: str) -> dict[str, set[str]]:
    module = __import__(app_module, fromlist=["app"])
    command = typer.main.get_command(module.app)
    return {name: set(getattr(sub, "commands", {})) for name, sub in command.commands.items()}  # type: ignore[attr-defined]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_the_docs_name_exists(page: Path) -> None:
    targets = set(re.findall(r"(?m)^([a-z][\w-]*):", (ROOT / "Makefile").read_text()))
    tools = {"matchenv": _commands("matchenv.cli"), "matchenv-dev": _commands("matchenv_devkit.cli")}
    unknown: list[str] = []
    for code in _code(page.read_text()):
        unknown += [f"make {t}" for t in re.findall(r"(?<![\w-])make ([a-z][\w-]*)", code) if t not in targets]
        for found in re.finditer(r"(?<![\w./-])(matchenv(?:-dev)?) ((?:[a-z][\w-]*\|?)+(?: [a-z][\w|-]*)?)", code):
            if code[:found.start()].rstrip().endswith(("helm install", "helm upgrade")):
                continue  # `helm install matchenv charts/matchenv`: a release's name
            tool, words = found.groups()
            first, _, second = words.partition(" ")
            for name in first.split("|"):
                if name and name not in tools[tool]:
                    unknown.append(f"{tool} {name}")
                elif name and tools[tool][name] and second:
                    unknown += [f"{tool} {name} {s}" for s in second.split("|") if s and s not in tools[tool][name]]
    assert unknown == []


def test_the_readme_is_what_a_user_reads_first() -> None:
    assert len((ROOT / "README.md").read_bytes()) < 12_000
    for page in PAGES[1:]:
        if page.name != "design.md":
            assert f"docs/{page.name}" in (ROOT / "README.md").read_text(), f"README does not lead to {page.name}"


def test_the_design_names_every_module() -> None:
    design = (ROOT / "docs/design.md").read_text()
    modules = [p for p in (ROOT / "src/matchenv").rglob("*.py") if p.name != "__init__.py"]
    assert [str(p.relative_to(ROOT)) for p in modules if p.name not in design] == []


def test_a_missing_path_or_command_is_caught() -> None:
    assert not _exists("manifests/no-such-thing")
    assert _exists("manifests/environments/<env>/database.env")
    assert _code("see `make nothing` and\n```sh\nmatchenv scrape --x\n```\n") == ["matchenv scrape --x", "make nothing"]
