"""The README's GitHub Actions example: its `audit` commands run as written against a small model."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path


from tests.audit.conftest import REGION, planted_images, write_manifest
from tests.audit.planted import region_means

README = Path(__file__).resolve().parents[2] / "README.md"


def _block(lang: str, marker: str) -> str:
    for body in re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S):
        if marker in body:
            return body
    raise AssertionError(f"README has no {lang} block containing {marker!r}")


def test_workflow_commands_run_and_gate(tmp_path, planted):
    workflow = _block("yaml", ".github/workflows/robustness.yml")
    commands = [line.split("- run:", 1)[1].strip() for line in workflow.splitlines() if "- run: audit " in line]
    assert [c.split()[1] for c in commands] == ["run", "gate"]
    images = planted_images(10, spread_hu=5.0)
    manifest = write_manifest(tmp_path / "data", images, (region_means(images, REGION) >= 0).astype(int))
    (tmp_path / "audit.toml").write_text(f'[model]\npath = "{planted}"\nname = "planted"\n[data]\nmanifest = "{manifest}"\n'
                                         '[noise]\nlevels = [50, 100]\ndraws = 6\n')
    policy = _block("toml", "# policy.toml").replace('class = "malignant"', 'class = "above"').replace("level = 100", "level = 100")
    # The README's policy names levels 50 and 100, then a clean-AUC rule (the planted model has no meaningful
    # AUC) and a baseline rule; the example job runs without --baseline.
    policy = policy.split("[[rule]]\nname = \"clean AUC")[0]
    (tmp_path / "policy.toml").write_text(policy.replace("max = 0.5", "max = 1.0").replace("max = 0.25", "max = 1.0"))
    for cmd in commands:
        argv = shlex.split(cmd)
        proc = subprocess.run([sys.executable, "-m", "audit", *argv[1:]], cwd=tmp_path, capture_output=True, text=True)
        assert proc.returncode == 0, (cmd, proc.stdout, proc.stderr)
    assert (tmp_path / "audit-out" / "report.json").is_file()
    xml = (tmp_path / "audit-out" / "gate-junit.xml").read_text()
    assert xml.count("<testcase") == 2 and "<failure" not in xml
