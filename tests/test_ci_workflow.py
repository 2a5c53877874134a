"""The GitHub Actions workflow cannot run here: lint it with actionlint (built from the Go module
proxy, like MinIO, by `lakehouse setup tests`) and check it calls the same Makefile targets as `.ci/run`."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from tests.conftest import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"


@pytest.fixture(scope="module")
def actionlint():
    """Built by the tests' set-up (`lakehouse setup tests`, which make test runs) into the user's
    cache; built here only when a test is run without it."""
    from devstack import gotools

    return gotools.ensure("actionlint")


def test_workflow_passes_actionlint(actionlint):
    proc = subprocess.run([str(actionlint), "-no-color", str(WORKFLOW)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_catches_a_broken_workflow(actionlint, tmp_path):
    broken = tmp_path / ".github" / "workflows" / "ci.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text(WORKFLOW.read_text().replace("runs-on: ubuntu-latest", "runs-on: [ubuntu-latest"))
    proc = subprocess.run([str(actionlint), "-no-color", str(broken)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode != 0 and "ci.yml" in proc.stdout


def test_workflow_runs_the_ci_targets_then_data_quality_and_keeps_reports():
    job = yaml.safe_load(WORKFLOW.read_text())["jobs"]["test"]
    steps = job["steps"]
    assert job["env"]["LAKEHOUSE_ENV_FILE"].endswith("/local.env")  # what the Makefile exports for make
    runs = "\n".join(s.get("run", "") for s in steps)
    ci_targets = re.findall(r"^\s*make (\S+)", (ROOT / ".ci" / "run").read_text(), re.M)
    assert "test" in ci_targets
    assert all(f"make {t}" in runs for t in ci_targets)
    assert runs.index("make test") < runs.index("lakehouse dq")
    uploads = [s["with"]["path"] for s in steps if s.get("uses", "").startswith("actions/upload-artifact")]
    from data_quality.runner import docs_index

    docs = docs_index().parent.relative_to(ROOT).as_posix()
    assert any(docs.startswith(u.rstrip("/")) or u.rstrip("/").startswith(docs) for u in uploads), uploads
    assert "reports/" in uploads
