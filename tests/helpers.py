"""Test helpers shared by the stage tests (no sleeps: every wait polls under a deadline)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from devstack.generator import GenOptions, produce, read_ledger
from common.settings import Settings
from devstack.stack import wait_until
from tests.conftest import ROOT, settings_env


def produce_to(settings: Settings, ledger: Path, count: int, seed: int = 7, topics=None, **faults) -> list[dict]:
    produce(settings, GenOptions(topics=tuple(topics or settings.source_topics), count=count, seed=seed,
                                 ledger=ledger, progress=False, **faults))
    return read_ledger(ledger)


def delta_count(spark, path: str) -> int:
    try:
        return spark.read.format("delta").load(path).count()
    except Exception:  # table not created yet
        return 0


def committed_rows(settings: Settings, path: str) -> int:
    """The rows of the Delta table at ``path`` (0 before it exists), read by delta-rs from the
    Parquet footers: for polling while another process writes, where a Spark count every quarter
    second would take CPU from the very process a test waits for (2 cores)."""
    from deltalake import DeltaTable

    from common.deltars import storage_options, uri

    try:
        return DeltaTable(uri(path), storage_options=storage_options(settings, path)).to_pyarrow_dataset().count_rows()
    except Exception:  # noqa: BLE001 - not created yet, or a read while it commits: the poll asks again
        return 0


def start_stage_process(settings: Settings, stage: str, trigger: str, log: Path,
                        submit: bool = False, extra: tuple[str, ...] = ()) -> subprocess.Popen:
    """``lakehouse run <stage>`` in a process group of its own; with ``submit``, the production
    path instead: ``spark-submit app/submit.py <stage>`` (spark-submit's JVM runs the Python driver);
    ``extra``: more options (``--standby``)."""
    env = {**settings_env(settings), "PYTHONUNBUFFERED": "1"}
    if submit:
        cmd = [str(Path(sys.executable).parent / "spark-submit"), "app/submit.py", stage, "--trigger", trigger]
        env["PYSPARK_PYTHON"] = env["PYSPARK_DRIVER_PYTHON"] = sys.executable
    else:
        cmd = [sys.executable, "-m", "app.cli", "run", stage, "--trigger", trigger]
    cmd += list(extra)
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def kill_hard(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def run_stage_to_completion(settings: Settings, stage: str, log: Path, timeout: float = 600) -> None:
    proc = start_stage_process(settings, stage, "availableNow", log)
    try:
        rc = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            kill_hard(proc)
    assert rc == 0, log.read_text()[-3000:]


def command_lines_with(text: str) -> list[int]:
    """The pids of the processes whose command line holds ``text`` (``ps -eo args`` shows command
    lines to every user of the machine)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:  # a process that just ended
            pass
    return found


def read_topic(settings: Settings, topic: str, timeout: float = 60, committed: bool = True) -> list:
    """Every record of ``topic`` now in Kafka, read up to the partitions' end offsets taken at the
    start (no idle timeout to wait out: the read ends when the last offset is in); as a
    ``read_committed`` consumer (``committed=False``: ``read_uncommitted``, aborted records too)."""
    from kafka import TopicPartition

    from common.clients import kafka_consumer

    consumer = kafka_consumer(settings, "tests-read-topic",
                              isolation_level="read_committed" if committed else "read_uncommitted")
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        assert parts, f"topic {topic} has no partitions"
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        end = consumer.end_offsets(parts)
        records: list = []
        wait_until(lambda: records.extend(r for batch in consumer.poll(timeout_ms=500).values() for r in batch)
                   or all(consumer.position(tp) >= end[tp] for tp in parts), timeout, f"the records of {topic}")
        return records
    finally:
        consumer.close()


@dataclass(frozen=True)
class CliResult:
    returncode: int
    stdout: str
    stderr: str


@contextlib.contextmanager
def _as_a_process_would(stdin: str):
    """What a fresh ``python -m app.cli`` has that a test does not: Python's default warning
    filters, its warnings printed on stderr (pytest records them instead), a root logger without
    pytest's handlers (so the command's own logging set-up writes to stderr, as it would), and a
    standard input that is not a terminal (here: ``stdin``'s text). All restored afterwards."""
    import logging

    from app.runner import _QUIET_LOGGERS

    def show(message, category, filename, lineno, file=None, line=None):
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    root = logging.getLogger()
    saved_root = (root.handlers[:], root.level)
    saved_levels = {n: logging.getLogger(n).level for n in (*_QUIET_LOGGERS, "py4j")}
    saved_stdin = sys.stdin
    with warnings.catch_warnings():
        warnings.resetwarnings()
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.simplefilter("ignore", category)
        warnings.showwarning = show
        sys.stdin = io.StringIO(stdin)
        root.handlers = []
        try:
            yield
        finally:
            sys.stdin = saved_stdin
            root.handlers, root.level = saved_root
            for name, level in saved_levels.items():
                logging.getLogger(name).setLevel(level)


def lakehouse(settings: Settings, *args: str, capfd, env: dict[str, str] | None = None, stdin: str = "") -> CliResult:
    """``lakehouse <args>`` run in this process (``app.cli.main``) with ``settings`` (and ``env``)
    as its environment, its output captured at the file descriptors (the JVM's forwarded stderr
    included): the command's own code, parsing and output, served by the test session's Spark
    instead of a JVM of its own (12-18 s each here). Tests about the process itself (its start-up
    output, an exit under a signal, spark-submit) start a real one (``lakehouse_process``)."""
    from common import settings as settings_module
    from app.cli import main

    values = {k: v for k, v in settings_env(settings).items() if k.startswith("LAKEHOUSE_")}
    values.update(env or {})
    log_level = os.environ.get("LAKEHOUSE_LOG_LEVEL")  # --verbose sets it for the process
    capfd.readouterr()  # what ran before is not this command's output
    settings_module._cached = None
    try:
        with settings_module.environment(**values), _as_a_process_would(stdin):
            code = main(list(args))
    except SystemExit as e:  # argparse's usage errors
        code = e.code if isinstance(e.code, int) else 2
    finally:
        if log_level is None:
            os.environ.pop("LAKEHOUSE_LOG_LEVEL", None)
        else:
            os.environ["LAKEHOUSE_LOG_LEVEL"] = log_level
        settings_module._cached = None
    out, err = capfd.readouterr()
    return CliResult(code, out, err)


def lakehouse_process(settings: Settings, *args: str, env: dict[str, str] | None = None,
                      timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """``lakehouse <args>`` as a user's shell runs it: a process of its own (and a JVM of its own)."""
    return subprocess.run([sys.executable, "-m", "app.cli", *args], env={**settings_env(settings), **(env or {})},
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kw)


__all__ = ["produce_to", "delta_count", "start_stage_process", "kill_hard", "run_stage_to_completion", "wait_until",
           "lakehouse", "lakehouse_process", "CliResult", "read_topic", "command_lines_with"]


def user_lines(stderr: str) -> list[str]:
    """stderr without Spark's own log4j WARN lines (a loaded machine can add some: heartbeats, GC),
    which are not what these tests are about; errors and traces stay."""
    return [line for line in stderr.strip().splitlines() if not re.match(r"^\d\d:\d\d:\d\d WARN ", line)]
