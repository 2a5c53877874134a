"""``make setup``: everything the project installs, side by side, with one progress display.

    python3 -m devstack.bootstrap

Runs with the standard library alone (the Makefile calls it with the machine's python3, found
before the virtualenv is put on PATH). Three things
take the time on a fresh machine and need nothing of each other: the virtualenv's pip install,
the jars from Maven Central and MinIO's ``go install`` (the longest, ~2 minutes with empty Go
caches). They run at once: the MinIO build and the Kafka jars from the start, the Spark jars
as soon as pyspark is installed (the set leaves out the jars pyspark ships). Every 15 s one line
says what is still running; each step says when it is done and how long it took. Each step is a
no-op when its result is current (the virtualenv against ``pyproject.toml``, the jars and MinIO
against their pinned versions in the user's cache), so a second ``make setup`` takes seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
STAMP = VENV / ".installed"


class Steps:
    """Named steps on threads; ``report()`` prints what is still running every ``every`` seconds."""

    def __init__(self, every: float = 15.0):
        self.every, self.t0 = every, time.monotonic()
        self.running: dict[str, float] = {}
        self.failed: list[str] = []
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    def say(self, text: str) -> None:
        with self.lock:
            print(f"[{time.monotonic() - self.t0:5.0f} s] {text}", flush=True)

    def start(self, name: str, work, after: tuple[threading.Thread, ...] = ()) -> threading.Thread:
        def body():
            if after:
                for step in after:
                    step.join()
                if self.failed:
                    return  # what it needs failed: reported there
            with self.lock:
                self.running[name] = time.monotonic()
            try:
                detail = work()
            except Exception as e:  # noqa: BLE001 - reported as the step's one line
                with self.lock:
                    self.failed.append(f"{name}: {e}")
                    self.running.pop(name, None)
                self.say(f"FAILED {name}: {e}")
                return
            with self.lock:
                took = time.monotonic() - self.running.pop(name)
            self.say(f"done    {name} ({took:.0f} s){': ' + detail if detail else ''}")

        thread = threading.Thread(target=body, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)
        return thread

    def wait(self) -> bool:
        while any(t.is_alive() for t in self.threads):
            for t in self.threads:
                t.join(timeout=self.every)
                if not t.is_alive():
                    continue
                now = time.monotonic()
                with self.lock:
                    running = ", ".join(f"{n} ({now - s:.0f} s)" for n, s in self.running.items())
                if running:
                    self.say(f"running {running}")
                break
        return not self.failed


def _run(cmd: list[str], what: str, **kw) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        last = [line for line in (proc.stderr or proc.stdout or "").strip().splitlines() if line.strip()]
        raise RuntimeError(f"{what} failed: {(last or ['no output'])[-1][:300]}")
    return proc.stdout


def venv_is_current() -> bool:
    return STAMP.exists() and STAMP.stat().st_mtime >= (ROOT / "pyproject.toml").stat().st_mtime


def install_venv() -> str:
    if venv_is_current():
        return "up to date"
    _run([sys.executable, "-m", "venv", str(VENV)], "creating the virtualenv")
    # --no-compile: no bytecode for the ~8,000 modules installed, most never imported; Python writes
    # it for those it imports, on first import (pip's compile was 14 s of a 40-s install, 2026-12-07)
    # --compression=stored: pyspark is an sdist, built into a wheel by a pip >= 23.1 whose cache holds none;
    # its ~450 MB are jars, zips already, so deflating them again is CPU for nothing (building the wheel
    # 24.4 -> 13.2 s, installing it 2.8 -> 1.5 s; the wheel 456 -> 498 MB; 2026-12-08). An older pip
    # without `wheel` runs pyspark's setup.py install instead, which the setting leaves alone.
    _run([str(VENV / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", "--no-compile",
          "--config-settings=--build-option=--compression=stored", "-e", ".[test]"],
         "pip install of the pinned packages", cwd=ROOT)
    STAMP.touch()
    return f"pinned packages in {VENV}"


def in_venv(code: str, what: str) -> str:
    """Python ``code`` run by the virtualenv's interpreter (which has pyspark)."""
    return _run([str(VENV / "bin" / "python"), "-c", code], what, cwd=ROOT).strip()


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from common import jars  # the standard library only, like what follows
    from devstack import gotools

    steps = Steps()
    steps.say("set-up: pip install, jars from Maven Central and the MinIO build, side by side "
              "(a few minutes on a fresh machine, seconds once done)")
    venv = steps.start("pip install", install_venv)
    steps.start("minio build", lambda: str(gotools.ensure("minio", quiet=True)))
    kafka = steps.start("kafka jars", lambda: f"{len(jars.fetch('kafka', quiet=True))} in {jars.jar_dir('kafka')}")
    # the Spark set leaves out what pyspark ships, so it waits for pip; one Maven at a time
    steps.start("spark jars", lambda: in_venv(
        "from common import jars; from common.spark import write_spark_defaults\n"
        "found = jars.fetch('spark', quiet=True); conf = write_spark_defaults()\n"
        "print(f'{len(found)} in {jars.jar_dir(\"spark\")}; {conf}')", "the spark jars"),
        after=(venv, kafka))
    ok = steps.wait()
    steps.say("set-up done" if ok else "set-up failed: " + "; ".join(steps.failed))
    return 0 if ok else 1


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
