"""Entries of the user's cache (``Tooling.cache_dir``, every clone's): filled beside their place
and renamed into it, so a reader sees a whole entry or none."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def publish(target: Path, fill: Callable[[Path], None], complete: Callable[[], bool]) -> Path:
    """Fill a new folder beside ``target`` (``fill(folder)``) and rename it to ``target``. An entry
    ``complete()`` finds whole (another clone filled it meanwhile) is kept as it is, never deleted
    under a process using it; one that is not (a file missing) is replaced; a failed fill leaves
    nothing behind."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    fresh.chmod(0o755)
    try:
        fill(fresh)
        if complete():
            return target
        try:
            os.replace(fresh, target)  # (refused while target is a folder with files in it)
        except OSError:
            if complete():  # another clone renamed its copy into place first: theirs is kept, maybe in use
                return target
            # a partial entry (a killed fill or delete): moved aside first, so no reader sees it half gone
            aside = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-old-"))
            os.replace(target, aside / "entry")
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(fresh, target)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)  # (gone already when renamed into place)
    return target
