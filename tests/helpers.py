"""Test helpers shared by the stage tests (no sleeps: every wait polls under a deadline)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
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


def start_stage_process(settings: Settings, stage: str, trigger: str, log: Path) -> subprocess.Popen:
    env = {**settings_env(settings), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "common.cli", "run", stage, "--trigger", trigger],
                            env=env, cwd=ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT,
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


__all__ = ["produce_to", "delta_count", "start_stage_process", "kill_hard", "run_stage_to_completion", "wait_until"]


def user_lines(stderr: str) -> list[str]:
    """stderr without Spark's own log4j WARN lines (a loaded machine can add some: heartbeats, GC),
    which are not what these tests are about; errors and traces stay."""
    return [line for line in stderr.strip().splitlines() if not re.match(r"^\d\d:\d\d:\d\d WARN ", line)]
