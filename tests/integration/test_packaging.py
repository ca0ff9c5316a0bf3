"""What users install: the matchenv wheel holds the product only (no dev kit, no PKI dependency)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_holds_no_dev_kit_and_needs_no_cryptography(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path), str(ROOT)],
                   check=True, timeout=300)
    wheel = next(tmp_path.glob("matchenv-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert any(n == "matchenv/operator/reconciler.py" for n in names)
    assert [n for n in names if "devcluster" in n or "devservices" in n or "devkit" in n] == []
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert requires
    assert not any(r.lower().startswith("cryptography") for r in requires), requires
