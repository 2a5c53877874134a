"""``lakehouse setup jvm``: the class-data archive that every later lakehouse JVM maps at start.

A child process runs the pipeline once, small, on a scratch lake and scratch topics of the local
stack (customers, bronze -> silver -> gold, the demo's queries) with a JVM that writes the classes
it loaded to an archive when it exits (``-XX:ArchiveClassesAtExit``); the scratch lake and topics
are deleted afterwards. ``common.spark.class_archive`` names the file after the JDK and the jars,
so a new jar or JDK needs a new run, and an old archive is never mapped by the wrong JVM.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from common.clients import pid_alive
from common.errors import SetupError
from common.progress import run_with_heartbeat
from common.settings import Settings, child_env, env_var, get_settings

log = logging.getLogger("lakehouse.setup")

_SCRATCH = "lakehouse-setup-jvm"


_TOPICS = ("topic_orders", "topic_logs", "topic_metrics", "topic_enriched")
_SCRATCH_FIELDS = ("lake_root", "checkpoint_root") + _TOPICS  # what the child's environment overrides


def _scratch(settings: Settings) -> Settings:
    """The child's settings: its own lake root and topics, the rest as configured."""
    return settings.with_topic_scope(_SCRATCH, lake_root=f"s3a://{settings.bucket}/{_SCRATCH}", checkpoint_root="")


def build_class_archive(settings: Settings, force: bool = False) -> tuple[Path, float | None]:
    """Write the archive unless it exists; (its path, seconds taken or None when it was there)."""
    from common.clients import check_reachable
    from common.jars import spark_home
    from common.spark import class_archive

    home = spark_home()  # (the archive is named after its jars)
    target = class_archive()
    if target.exists() and not force:
        _prune(target, home)
        return target, None
    if not settings.is_s3:
        raise SetupError("`lakehouse setup jvm` runs the pipeline on the local stack: LAKEHOUSE_LAKE_ROOT "
                         "must be an s3a:// lake (the stack's MinIO)")
    check_reachable(settings, kafka="admin")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.stem}.{os.getpid()}.tmp")
    t0 = time.monotonic()
    scratch = _scratch(settings)
    print("writing the JVM's class archive: the pipeline once, on a scratch lake of the local stack "
          "(about 2 minutes, once)", file=sys.stderr, flush=True)
    try:
        proc = run_with_heartbeat([sys.executable, "-m", "app.jvm", str(tmp)], "writing the JVM's class archive",
                                  env=child_env(**{env_var(f): str(getattr(scratch, f)) for f in _SCRATCH_FIELDS}))
        if proc.returncode != 0 or not tmp.exists() or tmp.stat().st_size == 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise SetupError(f"the JVM's class archive was not written (exit {proc.returncode}):\n{tail}")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
        try:
            _drop_scratch(scratch)
        except Exception as e:  # noqa: BLE001 - leftovers of a scratch run are no reason to fail
            log.warning("the scratch lake or topics of `lakehouse setup jvm` (%s*) are left: %s",
                        _SCRATCH, str(e).splitlines()[0] if str(e) else type(e).__name__)
    _prune(target, home)
    return target, time.monotonic() - t0


# An archive or Spark home of the user's cache that no launch has used in this long belongs to pins
# or a JDK no clone uses any more (clones at other pins keep theirs meanwhile).
_UNUSED_DAYS = 14


def _prune(target: Path, home: Path) -> None:
    """Delete the archives and Spark homes of the user's cache that no launch has used for
    ``_UNUSED_DAYS`` days (``common.spark._archive_launch`` marks them) but ``target`` and its ``home``,
    what a killed run left (an archive's file, a home's unfinished folder), and the clone's own
    archive of the versions before the shared one."""
    import contextlib
    import shutil

    from common.jars import _MANIFEST
    from common.settings import project_cache

    unused_since = time.time() - _UNUSED_DAYS * 86400

    def unused(path: Path) -> bool:
        try:
            return path.stat().st_mtime < unused_since
        except OSError:  # gone meanwhile (another clone's prune), or never finished
            return False

    for old in target.parent.glob("classes-*"):
        writer = re.search(r"\.(\d+)\.tmp$", old.name)
        if writer:  # a run's unfinished file: left by a run no longer alive
            stale = not pid_alive(int(writer.group(1)))
        else:
            stale = old != target and old.suffix == ".jsa" and unused(old)
        if stale:
            old.unlink(missing_ok=True)
    for old in home.parent.iterdir():
        if old != home and unused(old if old.name.startswith(".") else old / _MANIFEST):
            aside = home.parent / f".{old.name.lstrip('.')}-old-{os.getpid()}"
            with contextlib.suppress(OSError):  # moved aside first: no launch finds it half deleted
                os.replace(old, aside)
                shutil.rmtree(aside, ignore_errors=True)
    shutil.rmtree(project_cache() / "jvm", ignore_errors=True)


def _drop_scratch(settings: Settings) -> None:
    from common.clients import kafka_admin, remove_lake

    remove_lake(settings)
    admin = kafka_admin(settings)
    try:
        topics = sorted(set(admin.list_topics()) & {*settings.source_topics, settings.topic_enriched})
        if topics:
            admin.delete_topics(topics)
    finally:
        admin.close()


def _train(archive: Path) -> None:
    """The child: the pipeline once, small, in a JVM that writes ``archive`` when it exits."""
    from pyspark import SparkContext

    from silver import customers
    from serving.catalog import register_tables
    from app.runner import STAGES, run
    from common.spark import get_spark
    from app.demo import queries
    from devstack.generator import GenOptions, produce
    from devstack.stack import Stack

    settings = get_settings()
    Stack(settings).ensure_topics()
    with tempfile.TemporaryDirectory() as d:
        produce(settings, GenOptions(topics=settings.source_topics, count=200, seed=1, duplicate_pct=5,
                                     malformed_pct=3, ledger=Path(d) / "ledger.jsonl", progress=False))
    spark = get_spark(settings, app_name="lakehouse-setup-jvm", write_class_archive=archive)
    customers.load(spark, settings)
    run(STAGES, settings, "availableNow", spark=spark)
    register_tables(spark, settings)
    for _, query in queries(settings):
        spark.sql(query).collect()
    spark.stop()
    # the JVM writes the archive as it exits: close its stdin (it exits then) and wait for it
    jvm = SparkContext._gateway.proc
    jvm.stdin.close()
    jvm.wait(timeout=300)


if __name__ == "__main__":
    _train(Path(sys.argv[1]))
