"""Measurements the benchmark takes from what the pipeline wrote (no instrumentation in the jobs).

* ``first_visible`` - for every row of an append-only Delta table, the commit that made it
  visible: the Delta log's ``add`` actions with ``dataChange=true`` name the files a commit
  added, and ``commitInfo.timestamp`` is when it committed. The files are read directly, so
  rows later moved by auto-compaction or OPTIMIZE (``dataChange=false``) keep their first commit.
* ``percentiles`` - p50/p99 of a list.
* ``table_files`` - data files in the current snapshot, and files the stream ever added.
* ``peak_rss_mib`` - the kernel's high-water mark of resident memory (VmHWM) of a process tree.
* ``cpu_seconds`` - user + system CPU seconds of a process tree.
"""

from __future__ import annotations

import os
from pathlib import Path


def _log(spark, path: str):
    from pyspark.sql import functions as F

    return (spark.read.json(f"{path}/_delta_log/*.json")
            .withColumn("version", F.regexp_extract(F.input_file_name(), r"(\d+)\.json$", 1).cast("long")))


def first_visible(spark, path: str, columns: list[str]):
    """``columns`` of every row ever appended to the Delta table at ``path``, with ``commit_ms``."""
    from pyspark.sql import functions as F

    def none():  # no file added yet (a table just created): no rows, the same columns
        return (spark.read.format("delta").load(path).select(*columns).limit(0)
                .withColumn("commit_ms", F.lit(None).cast("long")))

    log = _log(spark, path)
    if "add" not in log.columns:
        return none()
    commits = log.where("commitInfo IS NOT NULL").select("version", F.col("commitInfo.timestamp").alias("commit_ms"))
    adds = (log.where("add IS NOT NULL AND add.dataChange").select("version", F.col("add.path").alias("file"))
            .join(commits, "version"))
    files = {r.file: r.commit_ms for r in adds.collect()}
    if not files:
        return none()
    from urllib.parse import unquote

    full = [f"{path}/{unquote(f)}" for f in files]
    by_name = spark.createDataFrame([(unquote(f).rsplit("/", 1)[-1], ms) for f, ms in files.items()],
                                    "file_name string, commit_ms long")
    rows = (spark.read.parquet(*full)
            .select(*columns, F.regexp_extract(F.col("_metadata.file_path"), r"([^/]+)$", 1).alias("file_name")))
    return rows.join(F.broadcast(by_name), "file_name").drop("file_name")


def epoch_s(ts) -> float:
    """Seconds since the epoch of a timestamp read from the lake (naive ones are UTC)."""
    from datetime import timezone

    return (ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)).timestamp()


def percentiles(values: list[float], ps=(50, 99)) -> dict[str, float | None]:
    if not values:
        return {f"p{p}": None for p in ps}
    s = sorted(values)
    return {f"p{p}": round(s[min(len(s) - 1, max(0, int(round(p / 100 * len(s) + 0.5)) - 1))], 3) for p in ps}


def table_files(spark, path: str) -> dict[str, int]:
    """Files in the current snapshot, and data files the writers added in total."""
    detail = spark.sql(f"DESCRIBE DETAIL delta.`{path}`").collect()[0]
    log = _log(spark, path)
    added = log.where("add IS NOT NULL AND add.dataChange").count() if "add" in log.columns else 0
    return {"files_now": int(detail.numFiles), "files_written": int(added)}


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process tree (from /proc): each living process's own and
    those of its children that ended and were waited for (``cutime``, ``cstime``), so that a
    child's end (a PySpark worker, a warm-up's helper) does not take its CPU out of the total
    (a standby's cost over 10 s once came out at -14 % of a core, 2026-12-07)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for p in _descendants(pid):  # (the process itself included)
        try:
            fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            total += sum(int(f) for f in fields[11:15]) / tick  # utime, stime, cutime, cstime
        except (OSError, IndexError, ValueError):
            pass
    return total


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far (``/proc/stat``, all cores): the app,
    its load generator, the broker, MinIO and the bench's own gold count every 3 s together. Busy is
    user + nice + system + irq + softirq."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    tick = os.sysconf("SC_CLK_TCK")
    return (fields[0] + fields[1] + fields[2] + fields[5] + fields[6]) / tick, sum(fields) / tick


def machine_cores_busy(start: tuple[float, float], end: tuple[float, float]) -> float:
    """Cores busy on average between two ``machine_cpu()`` readings."""
    busy, total = end[0] - start[0], end[1] - start[1]
    return round((os.cpu_count() or 1) * busy / total, 2) if total > 0 else 0.0


def _memory_mib(pid: int | None, field: str) -> float | None:
    """Sum of a /proc status memory ``field`` (VmHWM, VmRSS) over a process and its descendants."""
    if not pid or not os.path.exists(f"/proc/{pid}"):
        return None
    total = 0
    for p in _descendants(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return round(total / 1024, 1)


def peak_rss_mib(pid: int | None) -> float | None:
    """Sum of VmHWM over the process and its descendants (a JVM under a Python driver, ...)."""
    return _memory_mib(pid, "VmHWM")


def rss_mib(pid: int | None) -> float | None:
    """Resident memory now (VmRSS) of a process tree."""
    return _memory_mib(pid, "VmRSS")
