"""Programs the project builds from source with ``go install`` (MinIO for the local stack,
actionlint for the workflow's test), kept in the user's cache under their version, as pip's and
Maven's caches keep theirs: a fresh clone (CI) finds them built, a changed pin builds anew beside
the old one, and two clones never fight over one file."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from common import versions
from common.errors import SetupError
from common.progress import run_with_heartbeat
from common.settings import Tooling, child_env

# name -> (Go module, pinned version, what the build is for)
TOOLS: dict[str, tuple[str, str, str]] = {
    "minio": (versions.MINIO_MODULE, versions.MINIO_VERSION, "the local stack's S3"),
    "actionlint": (versions.ACTIONLINT_MODULE, versions.ACTIONLINT_VERSION, "the GitHub workflow's test"),
}


def path(name: str) -> Path:
    """Where the built ``name`` lives: ``<user cache>/bin/<name>-<version>``."""
    _, version, _ = TOOLS[name]
    return Tooling.from_env().cache_dir / "bin" / f"{name}-{version}"


def ensure(name: str, quiet: bool = False) -> Path:
    """The built tool, built first if this version is not in the cache yet (a few minutes for
    MinIO on a machine whose Go caches are empty)."""
    target = path(name)
    if target.exists():
        return target
    module, version, _ = TOOLS[name]
    if shutil.which("go") is None:
        raise SetupError(f"Go is not on PATH: install Go >= 1.24 to build {name} (go install {module}@{version})")
    target.parent.mkdir(parents=True, exist_ok=True)
    if not quiet:
        print(f"building {name} from source ({module}@{version}; cached in {target.parent}); "
              "the first build takes a few minutes", flush=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-") as gobin:
        proc = run_with_heartbeat(["go", "install", f"{module}@{version}"], f"building {name}",
                                  every=30 if not quiet else 1e9, env=child_env(GOBIN=gobin, CGO_ENABLED="0"))
        built = Path(gobin) / Path(module).name
        if proc.returncode != 0 or not built.exists():
            last = ((proc.stderr or "").strip().splitlines() or ["no output"])[-1]
            raise SetupError(f"building {name} failed ({last}); check Go and access to the Go module proxy")
        os.replace(built, target)  # whole or not at all, also with another clone building it too
    return target
