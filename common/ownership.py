"""Which process runs a stage: one ownership record per stage, changed only by conditional writes.

A stage (bronze, silver, gold) writes its tables and checkpoints from one process at a time. Its
record, ``Settings.owner_path(stage)`` (``_lakehouse_owner.json`` beside the stage's checkpoints),
names the process that owns it: holder id, application, host, pid, an *epoch* raised at every
change of owner, and a heartbeat renewed every quarter of LAKEHOUSE_OWNERSHIP_EXPIRY (10 s). An
application takes the records of all its stages, in the pipeline's order, or none.

Every write of the record is conditional, so two processes can never both believe they took it:
on S3 (MinIO, AWS) a PUT with ``If-None-Match: *`` creates it only if absent and a PUT with
``If-Match: <etag>`` replaces it only if nobody wrote it since it was read (HTTP 412 otherwise);
on a local path a compare-and-swap under ``flock``. A record is free when it was released, when its
process is gone (same host: seen at once) or when its heartbeat is older than the expiry (another
host, or a process paused by SIGSTOP).

**Fencing.** An owner that was paused, or cut off, may resume after another took over. Before each
commit (``batches.BatchContext``, the event log's appends, a compaction) the stage's ``fence``
checks that the ownership still holds: a renewal that succeeded within half the expiry, or else a
conditional renewal there and then; a renewal refused (someone else wrote the record) means the
ownership is lost, and the commit is not made (``OwnershipLost``: the query fails, the run stops).

What this cannot do: Delta-Spark commits to S3 with a plain PUT of ``<version>.json``
(``S3SingleDriverLogStore``: no put-if-absent, delta-io/delta#3596 and #4813 still open), so the
fence is checked just before a commit, not inside it. A process paused between its fence and its
PUT for longer than the expiry could still overwrite a commit of the new owner. delta-rs (gold's
open windows, ``common.deltars``) commits with ``If-None-Match`` and cannot. Kafka publication is
fenced by Kafka itself (the transactional producer's epoch, ``gold.publish``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from common.clients import pid_alive
from common.errors import CheckpointError
from common.settings import Settings, interval_seconds, s3_location

log = logging.getLogger("lakehouse.ownership")


class OwnershipLost(CheckpointError):
    """Another process took over a stage this process was running: it stops without committing."""


# ---- one record, compare-and-swap ---------------------------------------------------------------
class _S3Record:
    def __init__(self, settings: Settings, path: str):
        from common.clients import minio_client

        self.path = path
        self._bucket, self._key = s3_location(path)
        self._client = minio_client(settings, bucket=self._bucket)

    def read(self) -> tuple[dict | None, str | None]:
        from minio.error import S3Error

        try:
            response = self._client.get_object(self._bucket, self._key)
        except S3Error as e:
            if e.code in ("NoSuchKey", "NoSuchObject"):
                return None, None
            raise
        try:
            body, etag = response.read(), response.headers.get("etag", "").strip('"')
        finally:
            response.close()
            response.release_conn()
        return _parse(body), etag

    def write(self, record: dict, etag: str | None) -> str | None:
        """Write ``record`` if the object is still at ``etag`` (None: still absent); its new etag,
        or None when another write came first."""
        from minio.error import S3Error

        condition = {"If-Match": f'"{etag}"'} if etag else {"If-None-Match": "*"}
        try:
            # minio-py's put_object passes only user metadata; its _put_object sends headers as given
            result = self._client._put_object(self._bucket, self._key, json.dumps(record).encode(),
                                              {"Content-Type": "application/json", **condition})
        except S3Error as e:
            if e.code in ("PreconditionFailed", "ConditionalRequestConflict"):
                return None
            raise
        return result.etag

    def put(self, record: dict) -> None:
        import io

        body = json.dumps(record).encode()
        self._client.put_object(self._bucket, self._key, io.BytesIO(body), len(body), content_type="application/json")

    def delete(self) -> None:
        self._client.remove_object(self._bucket, self._key)


class _LocalRecord:
    def __init__(self, path: str):
        self.path = path
        self._file = Path(path.removeprefix("file://"))

    def read(self) -> tuple[dict | None, str | None]:
        try:
            body = self._file.read_bytes()
        except FileNotFoundError:
            return None, None
        return _parse(body), hashlib.sha256(body).hexdigest()

    def write(self, record: dict, etag: str | None) -> str | None:
        self._file.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps(record).encode()
        with open(f"{self._file}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.read()[1] != etag:
                return None
            self._replace(body)
        return hashlib.sha256(body).hexdigest()

    def put(self, record: dict) -> None:
        self._file.parent.mkdir(parents=True, exist_ok=True)
        self._replace(json.dumps(record).encode())

    def _replace(self, body: bytes) -> None:
        """The file's content is ``body``, whole (a rename), never half-written."""
        tmp = self._file.with_name(f"{self._file.name}.{os.getpid()}.tmp")
        tmp.write_bytes(body)
        os.replace(tmp, self._file)

    def delete(self) -> None:
        self._file.unlink(missing_ok=True)


def _parse(body: bytes) -> dict:
    try:
        record = json.loads(body)
    except ValueError:
        record = None
    return record if isinstance(record, dict) else {"unreadable": True}


def _record_store(settings: Settings, stage: str, name: str | None = None):
    path = settings.owner_path(stage)
    if name:
        path = f"{path.rsplit('/', 1)[0]}/{name}"
    return _S3Record(settings, path) if path.startswith("s3a://") else _LocalRecord(path)


# ---- a standby's record (``app.standby``): what status shows, never a condition of ownership ----
STANDBY_FILE = "_lakehouse_standby.json"


def write_standby(settings: Settings, stage: str, record: dict) -> None:
    _record_store(settings, stage, STANDBY_FILE).put(record)


def clear_standby(settings: Settings, stage: str) -> None:
    _record_store(settings, stage, STANDBY_FILE).delete()


def read_standby(settings: Settings, stage: str) -> dict | None:
    """The standby waiting for ``stage`` (its record, heartbeat within its expiry), or None."""
    try:
        record = _record_store(settings, stage, STANDBY_FILE).read()[0]
    except Exception as e:  # noqa: BLE001 - unreadable: none known
        log.debug("standby record of %s not read: %s", stage, e)
        return None
    return record if is_live(record) else None


# ---- what a record says -------------------------------------------------------------------------
def is_live(record: dict | None, expiry: float | None = None) -> bool:
    """The record names a process that still owns its stage: not released, its process alive (on
    this host), its heartbeat younger than its expiry."""
    if not record or record.get("released") or record.get("unreadable"):
        return False
    if record.get("host") == socket.gethostname() and isinstance(record.get("pid"), int) and not pid_alive(record["pid"]):
        return False
    expiry = float(record.get("expiry", expiry or 10.0))
    return time.time() - float(record.get("heartbeat", 0)) < expiry


def read_owner(settings: Settings, stage: str) -> dict | None:
    """The stage's ownership record (None: there is none, or it cannot be read)."""
    try:
        return _record_store(settings, stage).read()[0]
    except Exception as e:  # noqa: BLE001 - unreadable storage: nobody is known to own it
        log.debug("ownership record of %s not read: %s", stage, e)
        return None


def live_owner(settings: Settings, stage: str) -> dict | None:
    record = read_owner(settings, stage)
    return record if is_live(record) else None


def describe(record: dict) -> str:
    app = record.get("app_id") or record.get("app") or "?"
    age = time.time() - float(record.get("heartbeat", 0))
    return f"application {app} (pid {record.get('pid')} on {record.get('host')}, heartbeat {age:.0f} s ago)"


def refuse_if_running(settings: Settings, flows, command: str) -> None:
    """Stop a command that rewrites what one of ``flows`` writes while its stage runs."""
    for stage in dict.fromkeys(f.stage for f in flows):
        owner = live_owner(settings, stage)
        if owner:
            name = next(f.name for f in flows if f.stage == stage)
            raise CheckpointError(f"query {name} is running ({describe(owner)}); stop it before `lakehouse {command}`")


# ---- the process's own ownership ----------------------------------------------------------------
class Ownership:
    """The stages one run of the pipeline owns (``common.run.RunContext``): taken all together or
    not at all (``acquire``, or ``wait`` for a standby), renewed by one thread, checked before every
    commit (``fence``), given back when the run ends (``release``)."""

    def __init__(self, settings: Settings, stages, app: str = "lakehouse"):
        self.settings = settings
        from common.pipeline import STAGES

        self.stages = tuple(s for s in STAGES if s in stages)  # the pipeline's order: two runs never wait in a cycle
        self.holder = uuid.uuid4().hex
        self.app, self.app_id = app, None  # app_id: the Spark application's, once it started
        self.expiry = interval_seconds(settings.ownership_expiry)
        self._stores = {s: _record_store(settings, s) for s in self.stages}
        self._held: dict[str, tuple[str, int]] = {}  # stage -> (etag, epoch)
        self._renewed: dict[str, float] = {}         # stage -> monotonic start of its last renewal that succeeded
        self._lost: dict[str, dict] = {}             # stage -> the record that replaced ours
        self._lock = threading.Lock()
        # one write of a record at a time: renewals race from the heartbeat, every fence (a batch's
        # parallel writes, two queries, the event log) and the release; with the tag each read
        # before the other's write, all but one would be refused, and the refused ones taken for a loss
        self._writing = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.taken_over: list[dict] = []             # the records this process took over (not free ones)
        self._since: dict[str, float] = {}           # stage -> when this process took it
        self._took: dict[str, dict] = {}             # stage -> whom it took it from (a takeover)

    def _record(self, stage: str, epoch: int) -> dict:
        return {"holder": self.holder, "app": self.app, "app_id": self.app_id, "host": socket.gethostname(),
                "pid": os.getpid(), "stages": list(self.stages), "epoch": epoch, "heartbeat": time.time(),
                "expiry": self.expiry, "since": self._since.get(stage, time.time()), "took_over": self._took.get(stage)}

    # -- taking it ------------------------------------------------------------------------------
    def try_acquire(self) -> dict | None:
        """Take every stage's record; None when done, else the live record in the way (nothing
        taken then)."""
        taken, seen = [], {}
        for stage in self.stages:  # all read first: nothing is written while one of them is live
            record, etag = seen[stage] = self._stores[stage].read()
            if record and record.get("holder") != self.holder and is_live(record, self.expiry):
                return record
        for stage in self.stages:
            store = self._stores[stage]
            record, etag = seen[stage]
            epoch = int((record or {}).get("epoch", 0)) + 1
            started = time.monotonic()
            self._since[stage] = time.time()
            takeover = bool(record) and not record.get("released") and record.get("holder") != self.holder
            self._took[stage] = ({"pid": record.get("pid"), "host": record.get("host"), "app_id": record.get("app_id"),
                                  "heartbeat": record.get("heartbeat"), "at": time.time()}
                                 if takeover else (record or {}).get("took_over"))
            new = store.write(self._record(stage, epoch), etag)
            if new is None:  # written by someone else between the read and the write
                self._give_back(taken)
                return store.read()[0] or {"host": "?", "pid": None, "heartbeat": time.time()}
            if takeover:
                gone = record.get("host") == socket.gethostname() and not pid_alive(int(record.get("pid") or 0))
                log.warning("stage %s: taking over from %s (%s)", stage, describe(record),
                            "its process is gone" if gone else "its heartbeat expired")
                self.taken_over.append({**record, "stage": stage, "taken_at": time.time()})
            with self._lock:
                self._held[stage], self._renewed[stage] = (new, epoch), started
                self._lost.pop(stage, None)
            taken.append(stage)
        self._start_heartbeat()
        return None

    def acquire(self) -> None:
        """Take the stages now, or stop with one line naming the process that runs one of them."""
        blocker = self.try_acquire()
        if blocker:
            stage = next(s for s in self.stages if s in (blocker.get("stages") or self.stages))
            raise CheckpointError(f"stage {stage} is in use by {describe(blocker)}; stop that copy first (its "
                                  f"ownership expires {self.expiry:.0f} s after its last heartbeat), or start this "
                                  "one with --standby to take over when it stops")

    def wait(self, poll: float = 0.2, waiting=None) -> None:
        """Take the stages as soon as they are free (a standby): at once after their owner's process
        ends on this host, after its expiry otherwise. ``waiting(record)`` is called at each poll."""
        while True:
            blocker = self.try_acquire()
            if blocker is None:
                return
            if waiting:
                waiting(blocker)
            time.sleep(poll)

    # -- holding it -----------------------------------------------------------------------------
    def _start_heartbeat(self) -> None:
        with self._lock:
            if self._thread is None:
                self._stop = threading.Event()
                self._thread = threading.Thread(target=self._beat, args=(self._stop,), name="ownership", daemon=True)
                self._thread.start()

    def _beat(self, stop: threading.Event) -> None:
        while not stop.wait(self.expiry / 4):
            for stage in list(self._held):
                try:
                    self._renew(stage)
                except OwnershipLost as e:
                    log.error("%s", e)
                except Exception as e:  # noqa: BLE001 - storage briefly down: the fence decides at the next commit
                    log.debug("ownership renewal of %s failed: %s", stage, e)

    def _renew(self, stage: str) -> None:
        with self._writing:
            with self._lock:
                if stage in self._lost:
                    raise OwnershipLost(self._lost_message(stage))
                if stage not in self._held:
                    return
                etag, epoch = self._held[stage]
            started = time.monotonic()
            if started - self._renewed.get(stage, started) > self.expiry / 2:
                log.warning("stage %s: ownership last renewed %.1f s ago (expiry %.0f s): was the process paused or "
                            "starved?", stage, started - self._renewed[stage], self.expiry)
            new = self._write_ours(stage, self._record(stage, epoch), etag)
            with self._lock:
                if stage not in self._held:  # released meanwhile
                    return
                if new is None:
                    self._lost[stage] = self._stores[stage].read()[0] or {}
                    self._held.pop(stage, None)
                    raise OwnershipLost(self._lost_message(stage))
                self._held[stage], self._renewed[stage] = (new, epoch), started

    def _write_ours(self, stage: str, record: dict, etag, tries: int = 3):
        """Write ``record`` as ``stage``'s record if the stored one still has tag ``etag``; refused,
        re-read it and try again with its tag while it is still this process's (a renewal written
        without our knowing its tag), never over another holder's. The new tag, or None (taken by
        another process, or still refused). Called under ``_writing``."""
        store = self._stores[stage]
        for _ in range(tries):
            new = store.write(record, etag)
            if new is not None:
                return new
            current, etag = store.read()
            if not current or current.get("holder") != self.holder or etag is None:
                return None
        return None

    def _lost_message(self, stage: str) -> str:
        other = self._lost.get(stage) or {}
        who = describe(other) if other.get("pid") else "another process"
        return (f"stage {stage}: ownership lost to {who} (epoch {other.get('epoch', '?')}); this process stops "
                "without committing again")

    def fence(self, stage: str | None = None) -> None:
        """Before a commit of ``stage`` (None: of any of the run's stages): raise ``OwnershipLost``
        unless this process still owns it."""
        if stage is None:
            for s in self.stages:
                self.fence(s)
            return
        with self._lock:
            if stage in self._lost:
                raise OwnershipLost(self._lost_message(stage))
            if stage not in self._held:
                return  # a stage this run does not hold (a test's writer, a scratch table): nothing to fence
            fresh = time.monotonic() - self._renewed.get(stage, 0.0) < self.expiry / 2
        if fresh:
            return
        try:
            self._renew(stage)
        except OwnershipLost:
            raise
        except Exception as e:  # noqa: BLE001 - cannot confirm: refuse once the ownership may have expired
            if time.monotonic() - self._renewed.get(stage, 0.0) >= self.expiry:
                raise OwnershipLost(f"stage {stage}: ownership not confirmed for {self.expiry:.0f} s ({e}); this "
                                    "process stops without committing again") from None

    def epoch(self, stage: str) -> int | None:
        """The epoch of this process's ownership of ``stage`` (None: not held)."""
        held = self._held.get(stage)
        return held[1] if held else None

    def check(self, confirm: bool = False) -> None:
        """Raise ``OwnershipLost`` if a stage was lost (the runner's watch, between batches); with
        ``confirm``, after a renewal of every stage there and then (a query failed: was it because
        another process took its stage over, e.g. Spark's "concurrent update to the log"?)."""
        if confirm:
            for stage in list(self._held):
                try:
                    self._renew(stage)
                except OwnershipLost:
                    break
                except Exception as e:  # noqa: BLE001 - storage down: the query's own error is the news
                    log.debug("ownership of %s not confirmed: %s", stage, e)
        with self._lock:
            lost = next(iter(self._lost), None)
        if lost is not None:
            raise OwnershipLost(self._lost_message(lost))

    # -- giving it back -------------------------------------------------------------------------
    def _give_back(self, stages) -> None:
        for stage in stages:
            with self._writing:
                with self._lock:
                    held = self._held.pop(stage, None)
                    self._renewed.pop(stage, None)
                if held is None:
                    continue
                try:
                    self._write_ours(stage, {**self._record(stage, held[1]), "released": True}, held[0])
                except Exception as e:  # noqa: BLE001 - it expires anyway
                    log.debug("ownership of %s not given back: %s", stage, e)

    def release(self) -> None:
        """Give every stage back (the run ends): marked released, so a standby takes it at once."""
        self._stop.set()
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self.expiry)  # a renewal in flight ends before the record is given back
        self._give_back(list(self._held))
