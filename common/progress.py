"""Progress of a long step: a tqdm bar on a terminal, a plain line every few seconds otherwise
(CI logs, pipes), so the same code reads well in both places."""

from __future__ import annotations

import sys
import time


class Progress:
    """``update(n)`` as work is done; ``close()`` at the end. ``total=None``: no known end."""

    def __init__(self, desc: str, total: int | None = None, unit: str = "records", out=None,
                 every: float = 5.0, enabled: bool = True):
        out = sys.stderr if out is None else out
        self.desc, self.total, self.unit, self.out, self.every = desc, total, unit, out, every
        self.enabled, self.done = enabled, 0
        self.t0 = self._last = time.monotonic()
        self._bar = None
        if enabled and getattr(out, "isatty", lambda: False)():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=f" {unit}", unit_scale=True, file=out,
                             dynamic_ncols=True, leave=False)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if self.enabled and now - self._last >= self.every:
            self._last = now
            of = f"/{self.total}" if self.total else ""
            print(f"{self.desc}: {self.done}{of} {self.unit} ({self.done / (now - self.t0):.0f}/s)",
                  file=self.out, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def run_with_heartbeat(cmd: list[str], what: str, env: dict | None = None, every: float = 30.0, out=None):
    """Run a long, quiet subprocess (a build, a download), its output captured for the error message,
    saying every ``every`` seconds that ``what`` is still going. Returns the CompletedProcess."""
    import subprocess
    import threading

    out = sys.stderr if out is None else out
    done = threading.Event()
    t0 = time.monotonic()

    def beat():
        while not done.wait(every):
            print(f"  ... still {what} ({time.monotonic() - t0:.0f} s)", file=out, flush=True)

    threading.Thread(target=beat, daemon=True).start()
    try:
        return subprocess.run(cmd, env=env, capture_output=True, text=True)
    finally:
        done.set()
