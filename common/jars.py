"""Resolve the project's JVM jars from Maven Central once, into the user's cache.

Two jar sets are kept under ``<cache>/jars/<name>-<fingerprint>/`` (``~/.cache/lakehouse`` unless
``LAKEHOUSE_CACHE_DIR`` says otherwise; the fingerprint is that of the pinned coordinates, so
clones at other pins keep their own set beside it):

* ``spark`` - Delta, the Kafka connector and hadoop-aws (with their runtime dependencies),
  minus every jar pyspark already ships, put on Spark's classpath (``common.spark.jar_conf``);
* ``kafka`` - the Apache Kafka broker and a log4j2 backend, for the local stack.

Resolution uses Maven's ``dependency:copy-dependencies`` on a generated POM; Maven's own
repository (``~/.m2`` unless ``LAKEHOUSE_MAVEN_REPO`` says otherwise) makes a second clone
resolve without the network. Each set records the coordinates it was built from in a
manifest, so a changed pin is noticed instead of silently running old jars.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from common import versions
from common.cache import publish
from common.errors import SetupError
from common.progress import run_with_heartbeat
from common.settings import Tooling

PROJECT_ROOT = Path(__file__).resolve().parent.parent
JAR_SETS: dict[str, tuple[str, ...]] = {
    "spark": versions.SPARK_PACKAGES,
    "kafka": versions.KAFKA_PACKAGES,
}
OVERRIDES: dict[str, dict[str, str]] = {"spark": versions.SPARK_PACKAGE_OVERRIDES, "kafka": {}}
_MANIFEST = "manifest.json"


def cache_root() -> Path:
    return Tooling.from_env().cache_dir


def jar_dir(name: str) -> Path:
    return cache_root() / "jars" / f"{name}-{_fingerprint(name)}"


def _coordinates(name: str) -> list[str]:
    return [*JAR_SETS[name], *(f"{ga}:{v} (managed)" for ga, v in OVERRIDES[name].items())]


def _fingerprint(name: str) -> str:
    return hashlib.sha256("\n".join(_coordinates(name)).encode()).hexdigest()[:16]


def _dependency(coord: str) -> str:
    group, artifact, version = coord.split(":")
    return (f"<dependency><groupId>{group}</groupId><artifactId>{artifact}</artifactId>"
            f"<version>{version}</version></dependency>")


def _pom(name: str) -> str:
    deps = "".join(_dependency(c) for c in JAR_SETS[name])
    managed = "".join(_dependency(f"{ga}:{v}") for ga, v in OVERRIDES[name].items())
    return (
        '<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>'
        "<groupId>lakehouse</groupId><artifactId>jar-cache</artifactId><version>0</version>"
        f"<packaging>pom</packaging><dependencyManagement><dependencies>{managed}"
        f"</dependencies></dependencyManagement><dependencies>{deps}</dependencies></project>"
    )


def _settings() -> str:
    # Some upstream POMs (Spark's parent) declare extra repositories that are not reachable
    # everywhere; route every repository through one Maven Central URL instead.
    url = Tooling.from_env().maven_url
    return (
        "<settings><mirrors><mirror><id>lakehouse-central</id><mirrorOf>*</mirrorOf>"
        f"<url>{url}</url></mirror></mirrors></settings>"
    )


def _artifact_name(jar: str) -> str:
    """'jackson-core-2.18.2.jar' -> 'jackson-core' (the name without its version)."""
    return re.sub(r"-\d[^-]*(-[A-Za-z0-9.]+)*\.jar$", "", jar)


def pyspark_jars_dir() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent / "jars"


# What a Spark home in the cache holds: pyspark's launch scripts, its jars (the JVM's classpath) and
# the Python side its Python workers import when they are not the driver's interpreter
# (``$SPARK_HOME/python/lib``, which Spark puts on their PYTHONPATH). Another layout is another entry.
_HOME_PARTS = ("bin", "jars", "python/lib")


def spark_home(create: bool = True) -> Path:
    """pyspark's launch layout (``_HOME_PARTS``) in the user's cache, one per pyspark build: the
    Spark home of the local JVMs that map the class archive (``common.spark.class_archive``).
    JDK 17 maps an archive only under the classpath it was written with, path for path, with each
    jar's size and mtime (an archive cannot move before JDK 20, JDK-8279366), and each clone's
    virtualenv holds its own pyspark under its own path with its own mtimes; from here every clone
    launches with one classpath and maps one archive, written once per machine. Files are hard
    links to the first clone's where the file system allows (copies elsewhere), so the entry
    outlives that clone and costs no space while it lives. ``create=False``: its path only."""
    import pyspark

    src = pyspark_jars_dir().parent
    files = sorted(f for part in _HOME_PARTS[1:] for f in (src / part).glob("*") if f.is_file())
    key = hashlib.sha256("\n".join([repr(_HOME_PARTS)] + [f"{f.relative_to(src)}:{f.stat().st_size}" for f in files])
                         .encode()).hexdigest()[:16]
    home = cache_root() / "spark-home" / f"pyspark-{pyspark.__version__}-{key}"
    marker = home / _MANIFEST

    def fill(folder: Path) -> None:
        shutil.copytree(src / "bin", folder / "bin")  # (modes kept: the launch scripts stay executable)
        for f in files:
            (folder / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(f, folder / f.relative_to(src))
            except OSError:  # another file system
                shutil.copy2(f, folder / f.relative_to(src))
        (folder / _MANIFEST).write_text(json.dumps({"pyspark": pyspark.__version__, "from": str(src),
                                                    "files": len(files)}) + "\n")

    if create and not marker.exists():
        publish(home, fill, marker.exists)
    return home


def fetch(name: str, *, quiet: bool = False) -> list[Path]:
    """Resolve jar set ``name`` with Maven into the cache (no-op when already current)."""
    target = jar_dir(name)
    if _is_current(name):
        return jars(name)
    if shutil.which("mvn") is None:
        raise SetupError("Maven (mvn) is not on PATH: install it (apt-get install maven) to fetch the jars")
    with tempfile.TemporaryDirectory() as tmp:
        pom = Path(tmp) / "pom.xml"
        pom.write_text(_pom(name))
        settings = Path(tmp) / "settings.xml"
        settings.write_text(_settings())
        out = Path(tmp) / "jars"
        cmd = [
            "mvn", "-B", "-s", str(settings), "-f", str(pom), "dependency:copy-dependencies",
            f"-DoutputDirectory={out}", "-DincludeScope=runtime",
        ]
        if not quiet:
            cmd.insert(1, "-ntp")
        else:
            cmd.insert(1, "-q")
        repo = Tooling.from_env().maven_repo
        if repo:
            cmd.append(f"-Dmaven.repo.local={repo}")
        if not quiet:
            print(f"fetching the {name} jars from Maven Central (once; cached in {jar_dir(name)})", file=sys.stderr,
                  flush=True)
        proc = run_with_heartbeat(cmd, f"fetching the {name} jars", every=30 if not quiet else 1e9)
        if proc.returncode != 0:
            tail = " | ".join(line for line in proc.stdout.splitlines() if "ERROR" in line)[:400]
            raise SetupError(f"Maven could not resolve the {name} jars ({tail or 'see mvn output'}); "
                             "check access to Maven Central and retry `lakehouse setup jars`")
        skip = set()
        if name == "spark":
            # Spark already has these on its classpath; a second copy can only conflict.
            skip = {_artifact_name(p.name) for p in pyspark_jars_dir().glob("*.jar")}

        def fill(folder: Path) -> None:
            kept = []
            for jar in sorted(out.glob("*.jar")):
                if _artifact_name(jar.name) not in skip:
                    shutil.move(jar, folder / jar.name)
                    kept.append(jar.name)
            (folder / _MANIFEST).write_text(json.dumps(
                {"coordinates": _coordinates(name), "fingerprint": _fingerprint(name), "jars": kept}, indent=1))

        publish(target, fill, lambda: _is_current(name))
    return jars(name)


def _is_current(name: str) -> bool:
    manifest = jar_dir(name) / _MANIFEST
    if not manifest.exists():
        return False
    data = json.loads(manifest.read_text())
    return data.get("fingerprint") == _fingerprint(name) and all(
        (jar_dir(name) / j).exists() for j in data.get("jars", []))


def jars(name: str) -> list[Path]:
    """The cached jars of set ``name``; a clear error when the cache is missing or stale."""
    if not _is_current(name):
        raise SetupError(
            f"the {name} jar cache at {jar_dir(name)} is missing or out of date: "
            "run `lakehouse setup jars` (or `make setup`) once to fetch it from Maven Central")
    data = json.loads((jar_dir(name) / _MANIFEST).read_text())
    return [jar_dir(name) / j for j in data["jars"]]
