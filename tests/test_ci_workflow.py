"""The GitHub Actions workflow cannot run here: lint it with actionlint (built from the Go module
proxy, like MinIO) and check it calls the same Makefile targets as `.ci/run`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
import yaml

from common import versions
from tests.conftest import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"


@pytest.fixture(scope="module")
def actionlint(tmp_path_factory):
    assert shutil.which("go"), "Go is needed to build actionlint (as for MinIO)"
    cached = ROOT / ".stack" / "bin" / f"actionlint-{versions.ACTIONLINT_VERSION}"
    if not cached.exists():
        gobin = tmp_path_factory.mktemp("gobin")
        proc = subprocess.run(["go", "install", f"{versions.ACTIONLINT_MODULE}@{versions.ACTIONLINT_VERSION}"],
                              env={**os.environ, "GOBIN": str(gobin), "CGO_ENABLED": "0"},
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-2000:]
        cached.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(gobin / "actionlint", cached)
    return cached


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
    ci_targets = re.findall(r"^make (\S+)", (ROOT / ".ci" / "run").read_text(), re.M)
    assert "test" in ci_targets
    assert all(f"make {t}" in runs for t in ci_targets)
    assert runs.index("make test") < runs.index("lakehouse dq")
    uploads = [s["with"]["path"] for s in steps if s.get("uses", "").startswith("actions/upload-artifact")]
    from data_quality.runner import docs_index

    docs = docs_index().parent.relative_to(ROOT).as_posix()
    assert any(docs.startswith(u.rstrip("/")) or u.rstrip("/").startswith(docs) for u in uploads), uploads
    assert "reports/" in uploads
