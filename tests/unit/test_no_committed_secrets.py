"""No password, token or key is committed in manifests/ or the chart: Secrets come from files the user fills
(git-ignored; only their *.env.example is committed, with empty values) or from the operator."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TREES = (ROOT / "manifests", ROOT / "charts")
# names of values that are credentials (not ``MATCHENV_BROKER_SECRET``: that one names a Secret)
SENSITIVE = re.compile(r"(?i)(pass(word|wd)?|token|key|credentials?)$")
URL_WITH_CREDENTIALS = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:[^@\s/'\"]+@")


def _files() -> list[Path]:
    """The committed files (a developer's filled-in, git-ignored ``*.env`` are theirs)."""
    listed = subprocess.run(["git", "ls-files", "-z", *map(str, TREES)], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode == 0 and listed.stdout:
        return sorted(ROOT / name for name in listed.stdout.split("\0") if name)
    return sorted(p for tree in TREES for p in tree.rglob("*") if p.is_file() and not p.name.endswith(".env"))


def _documents(path: Path) -> list[Any]:
    if path.suffix not in (".yaml", ".yml") or "templates" in path.parts:
        return []  # chart templates are checked as rendered by `helm template` in the chart's tests
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _env_values(node: Any) -> list[tuple[str, Any]]:
    """Every (name, value) of container env entries anywhere in a document."""
    found: list[tuple[str, Any]] = []
    if isinstance(node, dict):
        if isinstance(node.get("env"), list):
            found += [(e.get("name", ""), e.get("value")) for e in node["env"] if isinstance(e, dict)]
        for value in node.values():
            found += _env_values(value)
    elif isinstance(node, list):
        for value in node:
            found += _env_values(value)
    return found


def problems(path: Path) -> list[str]:
    """What in one file looks like a committed credential."""
    text = path.read_text()
    found = [f"URL with credentials: {m.group(0)}" for m in URL_WITH_CREDENTIALS.finditer(text)]
    if path.name.endswith(".env") or path.name.endswith(".env.example"):
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep and not line.lstrip().startswith("#") and SENSITIVE.search(key.strip()) and value.strip():
                found.append(f"{key}= has a value")
    for doc in _documents(path):
        if doc.get("kind") == "Secret" and (doc.get("data") or doc.get("stringData")):
            found.append(f"Secret {doc['metadata']['name']} has literal data")
        found += [f"env {name} has a literal value" for name, value in _env_values(doc)
                  if value and SENSITIVE.search(name)]
    return found


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_nothing_secret_is_committed(path: Path) -> None:
    assert problems(path) == []


def test_the_check_finds_what_it_looks_for(tmp_path: Path) -> None:
    (tmp_path / "db.env.example").write_text("DATABASE_URL=postgresql://postgres@db/x\nPGPASSWORD=hunter2\n")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump_all([
        {"kind": "Secret", "metadata": {"name": "s"}, "stringData": {"password": "x"}},
        {"kind": "Deployment", "spec": {"template": {"spec": {"containers": [
            {"env": [{"name": "API_TOKEN", "value": "abc"}, {"name": "URL", "value": "amqp://u:p@h/"}]}]}}}},
    ]))
    assert problems(tmp_path / "db.env.example") == ["PGPASSWORD= has a value"]
    assert sorted(problems(tmp_path / "s.yaml")) == sorted([
        "URL with credentials: amqp://u:p@", "Secret s has literal data", "env API_TOKEN has a literal value"])
