"""A headless browser for the dashboard's test: Debian's Chromium and its chromedriver, installed
with apt by ``lakehouse setup browser`` (``make test`` runs it), so a fresh machine and CI have
the same browser. Nothing is downloaded by Selenium itself: it is given both binaries."""

from __future__ import annotations

import os
import shutil

from common.errors import SetupError
from common.progress import run_with_heartbeat

PACKAGES = ("chromium", "chromium-driver")


def binaries() -> tuple[str, str] | None:
    """(chromium, chromedriver) when both are installed."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


def ensure_browser() -> tuple[str, str]:
    """Install Chromium and chromedriver from the system's apt repositories if missing."""
    found = binaries()
    if found:
        return found
    if not shutil.which("apt-get"):
        raise SetupError("the dashboard test needs Chromium and chromedriver; install them with your package "
                         "manager (Debian: apt-get install chromium chromium-driver)")
    sudo = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else None)
    if sudo is None:
        raise SetupError("installing Chromium needs root: run `sudo apt-get install chromium chromium-driver`")
    install = [*sudo, "apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    proc = run_with_heartbeat(install, "installing Chromium (apt)", every=30)
    if proc.returncode != 0:  # stale package lists: refresh them once
        run_with_heartbeat([*sudo, "apt-get", "update", "-q"], "refreshing apt's package lists", every=30)
        proc = run_with_heartbeat(install, "installing Chromium (apt)", every=30)
    found = binaries()
    if proc.returncode != 0 or not found:
        last = ((proc.stderr or "").strip().splitlines() or ["no output"])[-1]
        raise SetupError(f"apt-get could not install {' '.join(PACKAGES)}: {last}")
    return found
