"""The one Spark session factory of the project.

``configure(builder, settings)`` takes a ``SparkSession.Builder`` and returns it configured
(the style of delta's ``configure_spark_with_delta_pip``): Delta extension and catalog, S3A
for MinIO or S3, the cached jars, the RocksDB state store with changelog checkpointing, and
small local defaults. ``get_spark()`` builds (or returns) the session. Nothing here runs at
import time.

Under ``spark-submit`` the JVM is already running when Python starts, so the jars must be on
its command line: ``lakehouse setup jars`` writes ``.cache/spark-conf/spark-defaults.conf``;
export ``SPARK_CONF_DIR`` to that folder (the Makefile does) and plain ``spark-submit``,
``spark-sql`` and the Thrift server all get the same jars and static settings.
"""

from __future__ import annotations

import os
from pathlib import Path

from common import jars
from common.errors import SettingsError, SetupError
from common.settings import ZONES, Settings, get_settings, project_cache, under_spark_submit

# The driver JVM's JIT compiles a method after 4x the usual invocations. A driver runs short-lived
# code a lot (each micro-batch plans its queries anew, Janino's generated classes, py4j calls): on
# 2 cores the C1/C2 compiler threads took ~half of its CPU, compiling much that ran a few times
# only. Measured (bench/README.md, 2026-12-06): one-shot runs in a warm session (`bench.runcost`,
# alternating rounds) -13 % wall, -19 % of the JVM's CPU; a cold `lakehouse run all` no slower.
DRIVER_JIT = "-XX:CompileThresholdScaling=4"

# Static SQL settings: must be fixed before the JVM starts, identical for every entry point.
STATIC_CONF: dict[str, str] = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
    "spark.sql.session.timeZone": "UTC",
    "spark.hadoop.fs.s3a.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
    "spark.sql.streaming.stateStore.providerClass":
        "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider",
    "spark.sql.streaming.stateStore.rocksdb.changelogCheckpointing.enabled": "true",
    # A stage started twice on one checkpoint: the second copy fails fast.
    "spark.sql.streaming.stopActiveRunOnRestart": "false",
    "spark.sql.adaptive.enabled": "true",
    # A stage runs several queries in one app: share the cores fairly between them (each query
    # gets its own scheduler pool, common.streams.start) instead of first come, first served.
    "spark.scheduler.mode": "FAIR",
    # ... with the pools of common/fairscheduler.xml: the latency path (bronze, silver, gold_orders)
    # first, gold_kpis and the compactor on what it leaves.
    "spark.scheduler.allocation.file": str(Path(__file__).resolve().parent / "fairscheduler.xml"),
    # No extra micro-batch only to advance the watermark: such a batch would only evict silver's
    # dedup state (done by the next data batch anyway) at the cost of a full batch per query.
    "spark.sql.streaming.noDataMicroBatches.enabled": "false",
    "spark.databricks.delta.schema.autoMerge.enabled": "false",
    # Silver's dedup operators (one per source, in one query) all follow processing time
    # (silver.transforms.dedupe): the query's watermark is their greatest, so a source that has
    # sent nothing since a restart does not hold the others' state (with "min" it pins it at 0).
    # Spark keeps the policy a checkpoint started with.
    "spark.sql.streaming.multipleWatermarkPolicy": "max",
    # Delta's defaults are sized for big clusters; on a streaming hot path every commit pays them.
    # One task per log replay (default 50: measured p99 61 s -> 14 s on a three-hop chain here).
    "spark.databricks.delta.snapshotPartitions": "1",
    # A log checkpoint every 100 commits rather than 10: a streaming table commits every few
    # seconds, and writing a checkpoint (a Parquet file of the whole state) stalls that commit.
    "spark.databricks.delta.properties.defaults.checkpointInterval": "100",
    # Every micro-batch re-plans its queries; keep all their generated classes compiled (default
    # 100 entries, fewer than the pipeline's distinct plans: Janino recompiled them per batch).
    "spark.sql.codegen.cache.maxEntries": "2000",
    # No optimizeWrite/autoCompact on hot streaming writes (a shuffle and an OPTIMIZE check per
    # commit); the writing app compacts every LAKEHOUSE_COMPACT_EVERY commits (tables.Compactor).
    # A file of 32 MB or more is not small: a compaction rewrites the recent small files, not the
    # whole table (Delta's default, 1 GB, rewrote everything a table holds below that each time).
    "spark.databricks.delta.optimize.minFileSize": str(32 * 1024 * 1024),
    "spark.driver.extraJavaOptions": f"-Dlog4j2.level=WARN {DRIVER_JIT}",
}


def runtime_conf(settings: Settings) -> dict[str, str]:
    """Settings-dependent configuration (S3A endpoint and credentials, parallelism, UI)."""
    conf = {
        "spark.sql.shuffle.partitions": str(settings.shuffle_partitions),
        "spark.default.parallelism": str(max(2, settings.shuffle_partitions)),
        "spark.ui.enabled": str(settings.spark_ui).lower(),
        "spark.ui.showConsoleProgress": "false",
    }
    if settings.spark_event_log_dir:  # Spark redacts *secret*/*password*/*token* values in event logs
        conf.update({"spark.eventLog.enabled": "true", "spark.eventLog.dir": settings.spark_event_log_dir})
    if settings.is_s3:
        conf.update({
            "spark.hadoop.fs.s3a.endpoint": settings.s3_endpoint,
            "spark.hadoop.fs.s3a.endpoint.region": settings.s3_region,
            "spark.hadoop.fs.s3a.path.style.access": str(settings.s3_path_style).lower(),
            "spark.hadoop.fs.s3a.connection.ssl.enabled": str(settings.s3_endpoint.startswith("https")).lower(),
            "spark.hadoop.fs.s3a.aws.credentials.provider":
                "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider",
            # Fail fast when the endpoint is down instead of retrying for minutes.
            "spark.hadoop.fs.s3a.attempts.maximum": "3",
            "spark.hadoop.fs.s3a.retry.limit": "3",
            "spark.hadoop.fs.s3a.connection.establish.timeout": "5s",
            "spark.hadoop.fs.s3a.connection.timeout": "30s",
            "spark.hadoop.fs.s3a.fast.upload": "true",
        })
        conf.update(s3_keys(settings))
    return conf


def s3_keys(settings: Settings) -> dict[str, str]:
    """The S3 keys of the process's roles (``Settings.acting_as``): its first role's as S3A's
    default, and, a bucket per layer, each zone's bucket the key of the role that acts there
    (``fs.s3a.bucket.<bucket>.*``, S3A's per-bucket configuration); a bucket none of its roles may
    touch gets no key of its own. Spark's redaction regex hides *secret* / *access.key* values in
    the UI and the event log; ``_launch_gateway`` keeps them off the JVM's command line."""
    access, secret = settings.s3_identity(settings.roles[0])
    conf = {"spark.hadoop.fs.s3a.access.key": access, "spark.hadoop.fs.s3a.secret.key": secret}
    for zone in ZONES:
        role = settings.s3_role_for(zone)  # (one bucket: always the first role, or one line if keys differ)
        if role in (None, settings.roles[0]):
            continue
        access, secret = settings.s3_identity(role)
        bucket = settings.zone_bucket(zone)
        conf.update({f"spark.hadoop.fs.s3a.bucket.{bucket}.access.key": access,
                     f"spark.hadoop.fs.s3a.bucket.{bucket}.secret.key": secret})
    return conf


def spark_conf_dir() -> Path:
    return project_cache() / "spark-conf"


def is_local(master: str) -> bool:
    """A master whose executor runs inside the driver's JVM (local-cluster[...] runs executor JVMs)."""
    return master == "local" or master.startswith("local[")


def jar_conf(master: str | None = None) -> dict[str, str]:
    """How the cached jars reach the JVMs.

    Not through ``spark.jars`` when the executors can read the cache: an application copies every
    ``spark.jars`` entry into its temporary folder at its first task (680 MB here, 640 MB of it the
    AWS SDK bundle hadoop-aws needs), which cost ~2 s per start and, left behind by every killed
    application, filled the disk. A local master runs its executor in the driver, so the driver's
    classpath is enough. ``master=None`` is spark-defaults.conf, used by ``spark-submit`` with any
    master: the driver's and the executors' classpath, at the cache's path, which holds on this
    machine and in the docker-compose image (``/opt/lakehouse``). A cluster whose workers lack the
    cache (or a ``LAKEHOUSE_SPARK_MASTER`` that is not local) gets the jars shipped by ``spark.jars``.
    """
    paths = [str(j) for j in jars.jars("spark")]
    if master is None:
        return {"spark.driver.extraClassPath": ":".join(paths), "spark.executor.extraClassPath": ":".join(paths)}
    if is_local(master):
        return {"spark.driver.extraClassPath": ":".join(paths)}
    return {"spark.jars": ",".join(paths)}


def spark_properties(settings: Settings | None = None) -> dict[str, str]:
    """The cached jars and the static conf, plus the runtime conf of ``settings`` when given
    (that part holds the S3 credentials: only ever written to a private temporary file)."""
    props = {**jar_conf(settings.spark_master if settings else None), **STATIC_CONF}
    return {**props, **runtime_conf(settings)} if settings else props


def write_private(path: Path, text: str) -> Path:
    """Write ``text`` to ``path``, readable by this user only (it may hold a secret)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)  # a file that was there keeps its mode through O_TRUNC
    return path


def write_properties(path: Path, props: dict[str, str]) -> Path:
    return write_private(path, "# generated by lakehouse; do not edit\n" + "".join(f"{k} {v}\n" for k, v in props.items()))


def write_spark_defaults() -> Path:
    """Write spark-defaults.conf with the cached jars and the static conf (no secrets)."""
    target = spark_conf_dir() / "spark-defaults.conf"
    target.parent.mkdir(parents=True, exist_ok=True)
    # spark-submit's driver heap: LAKEHOUSE_DRIVER_MEMORY when this is written (--driver-memory overrides)
    try:
        memory = get_settings().driver_memory
    except SettingsError:  # no lake configured yet: the default
        memory = Settings.driver_memory
    write_properties(target, {**spark_properties(), "spark.driver.memory": memory})
    (target.parent / "log4j2.properties").write_text(LOG4J_QUIET)
    (target.parent / "log4j2-verbose.properties").write_text(LOG4J_VERBOSE)
    return target


_LOG4J_CONSOLE = ("appender.console.type = Console\nappender.console.name = console\n"
                  "appender.console.target = SYSTEM_ERR\nappender.console.layout.type = PatternLayout\n")
_LOG4J_PATTERN = "appender.console.layout.pattern = %d{HH:mm:ss} %p %c{1}: %m%n\n"
# Quiet: a logged exception is its message on the line, never its stack (--verbose shows stacks).
_LOG4J_ONE_LINE = ("appender.console.layout.alwaysWriteExceptions = false\n"
                   "appender.console.layout.pattern = %d{HH:mm:ss} %p %c{1}: %m%notEmpty{ (%throwable{short.message})}%n\n")
# Spark and library warnings that are by design here and say nothing a user can act on, once per query
# or per batch: AQE off in streaming (expected), local checkpoints of foreachBatch frames, commit
# timestamps adjusted by Delta, Kafka's consumer pool, the loopback hostname, Hadoop's native libs,
# long plans shortened in a log line, a checkpoint keeping the watermark policy it started with.
_NOISE = ("adaptive.enabled is not supported in streaming|Disabling AQE|was locally checkpointed|"
          "Found Delta commit .* with a timestamp|Pool exceeds its soft max size|resolves to a loopback|"
          "Set SPARK_LOCAL_IP|Unable to load native-hadoop|Truncated the string representation of a plan|"
          "Updating the value of conf 'spark.sql.streaming.multipleWatermarkPolicy'|Failed to cancel job group")
LOG4J_QUIET = ("rootLogger.level = warn\nrootLogger.appenderRef.stdout.ref = console\n" + _LOG4J_CONSOLE
               + _LOG4J_ONE_LINE
               + "appender.console.filter.noise.type = RegexFilter\n"
               + f"appender.console.filter.noise.regex = (?s).*({_NOISE}).*\n"
               + "appender.console.filter.noise.onMatch = DENY\nappender.console.filter.noise.onMismatch = NEUTRAL\n"
               "logger.kafka.name = org.apache.kafka\nlogger.kafka.level = error\n"
               "logger.s3a.name = org.apache.hadoop.fs.s3a\nlogger.s3a.level = error\n"
               "logger.metrics.name = org.apache.hadoop.metrics2\nlogger.metrics.level = error\n"
               # one pool per query is on purpose (common.streams.start); no warning per pool
               "logger.fair.name = org.apache.spark.scheduler.FairSchedulableBuilder\nlogger.fair.level = error\n"
               # A failed query is reported by the runner in one line, its root cause; Spark's own
               # account of the same failure is a line per task, per stage and per query
               "logger.task.name = org.apache.spark.executor.Executor\nlogger.task.level = fatal\n"
               "logger.taskset.name = org.apache.spark.scheduler.TaskSetManager\nlogger.taskset.level = fatal\n"
               "logger.writer.name = org.apache.spark.sql.execution.datasources.FileFormatWriter\n"
               "logger.writer.level = fatal\n"
               "logger.deltawriter.name = org.apache.spark.sql.delta.files.DeltaFileFormatWriter\n"
               "logger.deltawriter.level = fatal\n"
               "logger.utils.name = org.apache.spark.util.Utils\nlogger.utils.level = fatal\n"
               "logger.query.name = org.apache.spark.sql.execution.streaming.runtime.MicroBatchExecution\n"
               "logger.query.level = fatal\n")
# LAKEHOUSE_LOG_LEVEL=DEBUG / --verbose: everything Spark says at INFO, nothing filtered.
LOG4J_VERBOSE = "rootLogger.level = info\nrootLogger.appenderRef.stdout.ref = console\n" + _LOG4J_CONSOLE + _LOG4J_PATTERN


def configure(builder, settings: Settings | None = None, app_name: str = "lakehouse"):
    """Return ``builder`` configured for the lakehouse."""
    settings = settings or get_settings()
    builder = builder.appName(app_name)
    if not under_spark_submit():
        master = settings.spark_master
        builder = builder.master(master)
        for k, v in jar_conf(master).items():
            builder = builder.config(k, v)
        # only here, before the JVM starts (spark-submit: spark-defaults.conf or --driver-memory)
        builder = builder.config("spark.driver.memory", settings.driver_memory)
        log4j = spark_conf_dir() / ("log4j2-verbose.properties" if settings.log_level == "DEBUG"
                                    else "log4j2.properties")
        if log4j.exists():
            static = {**STATIC_CONF,
                      "spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile={log4j} {DRIVER_JIT}"}
        else:
            static = STATIC_CONF
        for k, v in static.items():
            builder = builder.config(k, v)
    for k, v in runtime_conf(settings).items():
        builder = builder.config(k, v)
    return builder


# Lines the JVM and its libraries print to stderr at start, outside log4j: the module system's note
# on Spark's incubator module, and the AWS SDK's own (relocated) slf4j 1.7 finding no binding.
_JVM_NOISE = (b"WARNING: Using incubator modules", b"SLF4J: ")
# The frames of a stack the JVM prints outside log4j (a thread's uncaught exception): its first line,
# the exception, stays; the frames are for --verbose, which does not filter.
_JVM_STACK = (b"\tat ", b"\t... ", b"Caused by: ", b"\tSuppressed: ")


# Keys never given to the JVM on its command line (``ps`` shows it to every user of the machine):
# they reach it through py4j when the session is created, after the JVM has started.
_OFF_THE_COMMAND_LINE = (".access.key", ".secret.key")  # S3A's keys, the per-bucket ones too


def _launch_gateway(builder, quiet: bool = True) -> None:
    """Start the JVM as pyspark would, but without the credentials on its command line
    (``_OFF_THE_COMMAND_LINE``: ``getOrCreate`` then sets them in the new SparkContext's conf
    through py4j; Spark's redaction hides them in the UI and the event log). ``quiet``: its stderr
    goes through a filter that drops ``_JVM_NOISE`` and stack frames (everything else, log4j's
    console included, goes on to our stderr)."""
    import subprocess
    import sys
    import threading

    from pyspark import SparkConf, SparkContext
    from pyspark.java_gateway import launch_gateway

    with SparkContext._lock:
        if SparkContext._gateway is not None:
            return
        conf = SparkConf(loadDefaults=False)
        for k, v in builder._options.items():
            if not k.endswith(_OFF_THE_COMMAND_LINE):
                conf.set(k, v)
        gateway = launch_gateway(conf, popen_kwargs={"stderr": subprocess.PIPE} if quiet else None)
        SparkContext._gateway, SparkContext._jvm = gateway, gateway.jvm
    if not quiet:
        return

    def forward(stream) -> None:
        # keeps draining the pipe whatever happens to our stderr (closed, a pipe gone): a full pipe
        # would block the JVM at its next log line
        out = getattr(sys.__stderr__, "buffer", None)
        for line in iter(stream.readline, b""):
            if out is None or line.startswith(_JVM_NOISE) or line.startswith(_JVM_STACK):
                continue
            try:
                out.write(line)
                out.flush()
            except (OSError, ValueError):
                out = None

    threading.Thread(target=forward, args=(gateway.proc.stderr,), name="jvm-stderr", daemon=True).start()


def create_session(builder, settings: Settings):
    """``builder.getOrCreate()`` (``builder``: ``configure``'s) with the JVM started by
    ``_launch_gateway``: no credentials on its command line, its stderr quiet unless DEBUG. Under
    spark-submit the JVM is already there, started by the user."""
    if not under_spark_submit():
        _launch_gateway(builder, quiet=settings.log_level != "DEBUG")
    return builder.getOrCreate()


def _leave_sigterm_to_python(jvm) -> None:
    """Make the JVM this process launched ignore SIGTERM, as pyspark's own launch makes it ignore
    SIGINT. A SIGTERM sent to the whole process group (``systemctl stop``, ``kill -- -<pgid>``, a
    supervisor) then stops the app one way only: this process stops the queries and appends the
    event log's last rows (``streams.await_all``), and the JVM exits when its stdin, our pipe,
    closes. Left to itself the JVM ran its shutdown hooks under the stopping queries: stack traces,
    and the event log's last rows lost. Under spark-submit the JVM is the parent process and keeps
    its handler: a container runtime may signal it alone."""
    try:
        jvm.sun.misc.Signal.handle(jvm.sun.misc.Signal("TERM"), jvm.sun.misc.SignalHandler.SIG_IGN)
    except Exception as e:  # noqa: BLE001 - a JVM without sun.misc.Signal keeps its default
        import logging

        logging.getLogger("lakehouse.spark").debug("the JVM keeps its SIGTERM handler: %s", e)


# The JVM's class-data archive (AppCDS). A cold driver JVM spends much of its first 20-30 s loading
# and verifying some 25,000 classes from the jars; a dynamic archive of them, written once by a JVM
# that ran the pipeline (`lakehouse setup jvm`), is mapped instead at every later start. Only for a
# JVM this process launches with a local master: under spark-submit the JVM already runs, and a
# cluster's executors have their own. The JVM checks the archive against its own build and
# classpath and, should they differ, loads the classes as usual, silently (the -Xlog options).
# The archive, and the Spark home and conf folder of the JVMs that map it, live in the user's cache:
# one per machine and pins, not one per clone (JDK 17 compares the classpath's paths; see
# `jars.spark_home`).
_QUIET_CDS = "-Xlog:cds=off -Xlog:cds+dynamic=off"


def class_archive() -> Path:
    """The archive for the current JDK, pyspark jars and cached jars: another of any of them is
    another file (`lakehouse setup jvm` writes it), never a stale one. The JDK counts by its runtime
    image too (``lib/modules``: a patch update of the JDK in place keeps the path of ``java``)."""
    import hashlib
    import shutil

    java = Path(os.path.realpath(shutil.which("java") or "java"))
    h = hashlib.sha256(str(java).encode())
    # (until the Spark home exists, no archive can be named after its jars: `setup jvm` makes it first)
    for f in [java.parent.parent / "lib" / "modules"] + sorted((jars.spark_home(create=False) / "jars").glob("*.jar")) \
            + jars.jars("spark"):
        st = f.stat() if f.exists() else None
        h.update(f"{f}:{st.st_size if st else 0}:{st.st_mtime_ns if st else 0}\n".encode())
    return jars.cache_root() / "jvm" / f"classes-{h.hexdigest()[:16]}.jsa"


def _archive_launch(mapped: Path | None) -> dict[str, str]:
    """The environment of a launch that maps the archive ``mapped`` (or, with None, writes one): the
    Spark home in the user's cache, and an empty conf folder there too - spark-submit puts its conf
    folder on the JVM's classpath, and the JVM maps an archive only with no non-empty folder there
    (this launch sets every setting of spark-defaults.conf itself). The home, and the archive it
    maps, are marked as in use (``lakehouse setup jvm`` deletes those unused for two weeks)."""
    import contextlib

    home = jars.spark_home()
    conf = jars.cache_root() / "jvm" / "conf"
    conf.mkdir(parents=True, exist_ok=True)
    for used in (home / jars._MANIFEST, mapped):
        if used is not None:
            with contextlib.suppress(OSError):
                os.utime(used)
    return {"SPARK_HOME": str(home), "SPARK_CONF_DIR": str(conf)}


def _archive_options(settings: Settings, write_to: Path | None) -> str:
    """The JVM options that use (or, with ``write_to``, write at exit) the class-data archive;
    '' where it does not apply."""
    if under_spark_submit() or not is_local(settings.spark_master):
        return ""
    if write_to is not None:
        return f"-XX:ArchiveClassesAtExit={write_to} {_QUIET_CDS}"
    archive = class_archive()
    return f"-XX:SharedArchiveFile={archive} {_QUIET_CDS}" if archive.exists() else ""


_SESSION_SETTINGS: list[Settings] = []  # the settings the process's session was built with


def session_settings() -> Settings | None:
    """The settings the process's Spark session was created with (its S3 roles), None before one."""
    return _SESSION_SETTINGS[-1] if _SESSION_SETTINGS else None


def get_spark(settings: Settings | None = None, app_name: str = "lakehouse", write_class_archive: Path | None = None):
    """Build (or return the active) SparkSession configured for the lakehouse; ``write_class_archive``:
    its JVM writes the class-data archive there when it exits (``lakehouse setup jvm``)."""
    from contextlib import nullcontext

    from pyspark.sql import SparkSession

    from common.settings import environment

    settings = settings or get_settings()
    builder = configure(SparkSession.builder, settings, app_name)
    archive = _archive_options(settings, write_class_archive)
    launch = nullcontext()
    if archive:
        options = builder._options.get("spark.driver.extraJavaOptions", "")
        builder = builder.config("spark.driver.extraJavaOptions", f"{options} {archive}".strip())
        launch = environment(**_archive_launch(None if write_class_archive is not None else class_archive()))
    with launch:
        spark = create_session(builder, settings)
    if not _SESSION_SETTINGS:  # (a second get_spark returns the first session, whose keys stay)
        _SESSION_SETTINGS.append(settings)
    spark.sparkContext.setLogLevel("INFO" if settings.log_level == "DEBUG" else "WARN")
    jvm = spark.sparkContext._jvm
    if not under_spark_submit():
        _leave_sigterm_to_python(jvm)
    try:
        jvm.java.lang.Class.forName("io.delta.sql.DeltaSparkSessionExtension", True,
                                    jvm.Thread.currentThread().getContextClassLoader())
    except Exception:
        raise SetupError("Delta's jars are not on Spark's classpath: run `lakehouse setup jars` and, for "
                         "spark-submit, export SPARK_CONF_DIR=" + str(spark_conf_dir())) from None
    return spark
