"""Guards on a query's checkpoint, checked before the query starts.

Spark refuses a second run of a checkpoint only inside one application; two applications (two
``spark-submit``s, or ``run silver`` next to ``run all``) would both write its offset log. And a
restart with a different window, slide, watermark or dedup key on an old checkpoint is not
always detected by Spark (the state schema can stay the same), which yields silently wrong
numbers. So every query's checkpoint folder holds a small file of ours:

* ``_lakehouse_query.json`` - the *signature* of the query (the settings its state depends on),
  written at first start. A restart with a different signature fails before anything runs,
  naming the setting that changed.

The files are written through Hadoop's FileSystem API, so they work on s3a:// and file:// alike.
That a single process runs a stage's queries is the stage's ownership (``common.ownership``: one
record per stage, conditional writes, a fence before every commit), taken before its queries start.
"""

from __future__ import annotations

import json
import logging

from common.errors import CheckpointError
from common.fs import Fs

log = logging.getLogger("lakehouse.checkpoints")
SIGNATURE_FILE = "_lakehouse_query.json"
RESET_HINT = ("rebuild the stage from the layer below with `lakehouse reset <stage>` (it deletes the stage's and "
              "the later stages' tables and checkpoints), or put the setting back")


def is_new(spark, checkpoint: str) -> bool:
    """No micro-batch was ever planned on this checkpoint (Spark writes ``offsets/<n>`` first)."""
    return not Fs(spark).has_children(f"{checkpoint}/offsets")


def query_id(spark, checkpoint: str) -> str:
    """The checkpoint's own query id (Spark's ``metadata`` file): stable across restarts of the
    checkpoint, new with a new checkpoint. Exactly-once writes key their commit tags to it."""
    meta = Fs(spark).read_json(f"{checkpoint}/metadata")
    if not meta or "id" not in meta:
        raise CheckpointError(f"checkpoint {checkpoint} has no readable metadata file (Spark writes it when the "
                              "query starts); was the folder changed by hand?")
    return meta["id"]


def check_not_orphaned(spark, checkpoint: str, query: str, tables: dict[str, str], stage: str) -> None:
    """A query on a new checkpoint must not write tables that already hold another checkpoint's
    results: its batch ids would restart at 0 and its rows would be written a second time."""
    from common.tables import has_data

    if not is_new(spark, checkpoint):
        return
    filled = [name for name, path in tables.items() if has_data(spark, path)]
    if filled:
        raise CheckpointError(
            f"query {query} has a new checkpoint ({checkpoint}) but {filled[0]} already holds rows written under "
            f"another one; rebuild with `lakehouse reset {stage}` (deletes {stage} and what follows it, then "
            f"recomputes from the layer below) or point LAKEHOUSE_CHECKPOINT_ROOT back at the old checkpoints")


def check_signature(spark, checkpoint: str, query: str, signature: dict) -> None:
    """Record ``signature`` at first start; afterwards refuse to start with a different one."""
    fs = Fs(spark)
    path = f"{checkpoint}/{SIGNATURE_FILE}"
    signature = {k: (list(v) if isinstance(v, tuple) else v) for k, v in signature.items()}
    recorded = fs.read_json(path)
    if recorded is None:
        fs.write_json(path, signature)
        return
    changed = sorted(k for k in set(recorded) | set(signature) if recorded.get(k) != signature.get(k))
    if changed:
        what = "; ".join(f"{k} was {recorded.get(k)!r}, now {signature.get(k)!r}" for k in changed)
        raise CheckpointError(f"query {query} cannot restart on checkpoint {checkpoint}: its state was built with "
                              f"other settings ({what}); {RESET_HINT}")


def claim(spark, checkpoint: str, query: str, signature: dict) -> None:
    """Before a query starts: its settings match the checkpoint and the files a restart reads are
    whole (that no other copy runs it: the stage's ownership, ``common.ownership``, taken before)."""
    check_signature(spark, checkpoint, query, signature)
    check_readable(spark, checkpoint, query)


def _log_problem(text: str, min_lines: int = 2) -> str | None:
    """What is wrong with one file of Spark's offset or commit log (``v1``, then one JSON value
    per line, ``-`` for a source with no offset yet; an offset file has the batch's metadata and
    at least one source), or None."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith("v") or not lines[0][1:].isdigit():
        return "no version line"
    for i, line in enumerate(lines[1:], start=2):
        if line == "-":
            continue
        try:
            json.loads(line)
        except ValueError:
            return f"line {i} is not JSON"
    if len(lines) < min_lines:
        return f"{len(lines)} lines, at least {min_lines} expected"
    return None


def _batch_numbers(fs: Fs, checkpoint: str, folder: str) -> list[int]:
    """The batch numbers of Spark's ``offsets/`` or ``commits/`` log of ``checkpoint``, ascending."""
    return sorted(int(n) for n in fs.list_names(f"{checkpoint}/{folder}") if n.isdigit())


def check_readable(spark, checkpoint: str, query: str) -> None:
    """The offset and commit log files a restart reads (the last of each, and the offsets before
    the last) are whole. A truncated one (a crash on a file system without atomic writes, a copy
    by hand) makes Spark fail with a parse error deep in its restart; this names the file and the
    way out instead."""
    fs = Fs(spark)
    for folder, last_n, min_lines in (("offsets", 2, 3), ("commits", 1, 2)):
        for n in _batch_numbers(fs, checkpoint, folder)[-last_n:]:
            path = f"{checkpoint}/{folder}/{n}"
            problem = _log_problem(fs.read_text(path) or "", min_lines)
            if problem:
                stage = query.split("_", 1)[0]
                way_out = ("move the checkpoint folder aside: bronze's next run starts a new checkpoint and resumes "
                           "after the offsets its tables hold" if stage == "bronze" else
                           f"rebuild {stage} and the stages after it from the layer below with "
                           f"`lakehouse refresh {stage}` (the old table versions stay readable)")
                raise CheckpointError(f"query {query} cannot restart: {path} is truncated or corrupt ({problem}); "
                                      f"{way_out}")


def committed_end_offsets(spark, checkpoint: str) -> dict | None:
    """Where the last committed micro-batch of ``checkpoint`` ended in its first source (Spark's
    ``offsets/<n>`` for the highest ``commits/<n>``: line 3 holds the first source's offsets), or
    None when no batch was committed. A restart of the query reads on from there."""
    fs = Fs(spark)
    done = _batch_numbers(fs, checkpoint, "commits")
    if not done:
        return None
    lines = (fs.read_text(f"{checkpoint}/offsets/{max(done)}") or "").splitlines()
    try:
        return json.loads(lines[2])
    except (IndexError, ValueError):
        raise CheckpointError(f"checkpoint {checkpoint}: offsets/{max(done)} is not Spark's offset log "
                              "(v1, metadata, one line per source); was it changed by hand?") from None


def restored_watermark_ms(spark, checkpoint: str) -> int:
    """The event-time watermark Spark restores when ``checkpoint``'s query restarts: the last
    commit's ``nextBatchWatermarkMs`` or the last planned batch's ``batchWatermarkMs``
    (``offsets/<n>``), the greater; 0 for a new checkpoint, and for an unreadable file (which
    ``claim`` refuses, naming it)."""
    fs = Fs(spark)
    found = [0]
    for folder, field in (("commits", "nextBatchWatermarkMs"), ("offsets", "batchWatermarkMs")):
        numbers = _batch_numbers(fs, checkpoint, folder)
        if not numbers:
            continue
        try:
            meta = json.loads((fs.read_text(f"{checkpoint}/{folder}/{max(numbers)}") or "").splitlines()[1])
            found.append(int(meta.get(field, 0)))
        except (IndexError, ValueError, AttributeError, TypeError):
            pass
    return max(found)


def last_planned_batch_ms(spark, checkpoint: str) -> int | None:
    """The batch time (epoch ms) of the last micro-batch planned on ``checkpoint`` (``offsets/<n>``;
    a restart replays an uncommitted one with that same time); None for none or an unreadable file."""
    fs = Fs(spark)
    numbers = _batch_numbers(fs, checkpoint, "offsets")
    if not numbers:
        return None
    try:
        return int(json.loads((fs.read_text(f"{checkpoint}/offsets/{numbers[-1]}") or "").splitlines()[1])
                   ["batchTimestampMs"])
    except (IndexError, ValueError, KeyError, TypeError):
        return None


def delete_tree(spark, path: str) -> bool:
    return Fs(spark).delete(path, recursive=True)


def move_tree(spark, path: str, target: str) -> bool:
    return Fs(spark).move(path, target)
