"""The lakehouse's settings: one frozen dataclass, built from ``LAKEHOUSE_*`` variables.

Sources, later ones winning: built-in defaults, an optional ``KEY=VALUE`` file named by
``LAKEHOUSE_ENV_FILE``, then the process environment. Everything is validated when the
settings are built, so a wrong value stops a job before Spark starts, with one line naming
the variable and what would be valid. Secrets (the S3 keys) are only ever read from the
environment or that file, and ``redacted()`` hides them for printing.

Every table path, checkpoint location and topic name is derived here and nowhere else
(``table_path``, ``checkpoint_path``, ``bronze_table_for``, the ``topic_*`` settings); the tables' own
names are declared by the pipeline's graph (``common.pipeline``) and the stages that write them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from common.errors import SettingsError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("bronze", "silver", "gold")
OPS = "ops"  # the pipeline's own tables: its event log (common.eventlog), the data-quality results
LOG_LEVELS = ("INFO", "DEBUG")
# Kafka clients by what they may do (the local stack's ACLs, devstack.kafka_acls): admin = the
# super user; producer writes the input topics; bronze reads them; gold writes the enriched topic
# (transactions); reader reads every topic.
KAFKA_ROLES = ("admin", "producer", "bronze", "gold", "reader")
# The lake's layout: everything in the bucket of LAKEHOUSE_LAKE_ROOT (single), or one bucket per
# zone, ``<bucket>-<zone>`` (bucket-per-layer): S3A takes credentials per bucket, not per prefix, so
# that is the layout in which each process holds only its role's key (S3_RIGHTS).
LAKE_LAYOUTS = ("single", "bucket-per-layer")
ZONES = LAYERS + (OPS,)
# S3 identities by what they may do in each zone of the lake (the local stack's MinIO policies,
# devstack.stack.s3_policy): write = read, write and delete (a stage's commits, checkpoints,
# compaction and log clean-up); customers = silver's customer table only; read = read and list.
# A stage's event log (ops.pipeline_events_<stage>) lives in the stage's own zone; the ops zone
# holds what the quality role writes (ops.dq_results).
S3_RIGHTS = {
    "admin": {zone: "write" for zone in ZONES},       # refresh, reset, replay, maintain, set-up
    "bronze": {"bronze": "write"},
    "silver": {"bronze": "read", "silver": "write"},
    "gold": {"silver": "read", "gold": "write"},
    "customers": {"silver": "customers"},              # lakehouse customers load
    "quality": {**{layer: "read" for layer in LAYERS}, OPS: "write"},  # lakehouse dq
    "reader": {zone: "read" for zone in ZONES},        # sql, the SQL server, the dashboard, trace, status
}
S3_ROLES = tuple(S3_RIGHTS)
_RANK = {None: 0, "read": 1, "customers": 2, "write": 3}
KAFKA_SECURITY_PROTOCOLS = ("PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL")
KAFKA_SASL_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")
_INTERVAL = re.compile(
    r"^\s*(\d+(\.\d+)?)\s*(ms|millisecond|milliseconds|s|sec|second|seconds|min|minute|minutes|"
    r"h|hour|hours)\s*$", re.I)
VALID_TRIGGERS = "processingTime=<interval>, availableNow, once, continuous=<interval>"


@dataclass(frozen=True)
class Trigger:
    """A parsed trigger: kind is processingTime | availableNow | once | continuous."""

    kind: str
    interval: str | None = None

    @classmethod
    def parse(cls, text: str, *, variable: str = "--trigger") -> "Trigger":
        raw = (text or "").strip()
        name, _, value = raw.partition("=")
        key = name.strip().lower().replace("_", "").replace("-", "")
        if key == "availablenow" and not value:
            return cls("availableNow")
        if key == "once" and not value:
            return cls("once")
        if key in ("processingtime", "continuous") and value:
            if not _INTERVAL.match(value):
                raise SettingsError(
                    f"{variable}={raw!r}: interval {value.strip()!r} is not valid; "
                    "use e.g. '10 seconds', '500 ms', '1 minute'")
            return cls("processingTime" if key == "processingtime" else "continuous", value.strip())
        raise SettingsError(f"{variable}={raw!r} is not a trigger; valid: {VALID_TRIGGERS}")

    def __str__(self) -> str:
        return f"{self.kind}={self.interval}" if self.interval else self.kind


def interval_seconds(text: str) -> float:
    m = _INTERVAL.match(text)
    if not m:
        raise SettingsError(f"{text!r} is not an interval (e.g. '5 minutes', '30 seconds')")
    n, unit = float(m.group(1)), m.group(3).lower()
    if unit.startswith("ms") or unit.startswith("milli"):
        return n / 1000
    if unit.startswith("h"):
        return n * 3600
    if unit.startswith("m"):
        return n * 60
    return n


SOURCE_KINDS = ("orders", "logs", "metrics")


@dataclass(frozen=True)
class Source:
    """One source of the pipeline: a Kafka topic read into its bronze table, parsed into silver."""

    kind: str          # orders | logs | metrics (its silver table)
    topic: str         # LAKEHOUSE_TOPIC_<KIND>
    watermark: str     # LAKEHOUSE_WATERMARK_<KIND>: silver's event-time delay; a key is deduped for 2x it
    bronze_table: str  # the bronze table's name (the topic, with - and . as _)
    evolution: str = "rescue"  # LAKEHOUSE_SCHEMA_EVOLUTION_<KIND>: what silver does with fields it does not know


SCHEMA_EVOLUTION_MODES = ("rescue", "addNewColumns", "fail")


@dataclass(frozen=True)
class Settings:
    # storage
    lake_root: str = "s3a://lakehouse"
    checkpoint_root: str = ""  # default: <lake_root>/_checkpoints
    s3_endpoint: str = "http://127.0.0.1:9000"
    s3_access_key: str = field(default="", repr=False)
    s3_secret_key: str = field(default="", repr=False)
    # One S3 identity per role (S3_RIGHTS): a role without its own key uses the two above.
    s3_access_key_admin: str = field(default="", repr=False)
    s3_secret_key_admin: str = field(default="", repr=False)
    s3_access_key_bronze: str = field(default="", repr=False)
    s3_secret_key_bronze: str = field(default="", repr=False)
    s3_access_key_silver: str = field(default="", repr=False)
    s3_secret_key_silver: str = field(default="", repr=False)
    s3_access_key_gold: str = field(default="", repr=False)
    s3_secret_key_gold: str = field(default="", repr=False)
    s3_access_key_customers: str = field(default="", repr=False)
    s3_secret_key_customers: str = field(default="", repr=False)
    s3_access_key_quality: str = field(default="", repr=False)
    s3_secret_key_quality: str = field(default="", repr=False)
    s3_access_key_reader: str = field(default="", repr=False)
    s3_secret_key_reader: str = field(default="", repr=False)
    lake_layout: str = "single"  # LAKE_LAYOUTS
    s3_path_style: bool = True
    s3_region: str = "us-east-1"
    # kafka
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    # Kafka's client security: PLAINTEXT (no authentication: a broker of your own on loopback only),
    # SASL_PLAINTEXT (loopback only: passwords are hashed by SCRAM, the records are not encrypted)
    # or SASL_SSL. Each client authenticates as the identity of its role (KAFKA_ROLES): a role
    # without one of its own uses kafka_user / kafka_password.
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = "SCRAM-SHA-512"
    kafka_user: str = ""
    kafka_password: str = field(default="", repr=False)
    kafka_user_admin: str = ""      # the stack's super user: topics, SCRAM users, ACLs
    kafka_password_admin: str = field(default="", repr=False)
    kafka_user_producer: str = ""   # writes the three input topics (the generator, your producers)
    kafka_password_producer: str = field(default="", repr=False)
    kafka_user_bronze: str = ""     # reads the input topics
    kafka_password_bronze: str = field(default="", repr=False)
    kafka_user_gold: str = ""       # writes the enriched topic, in transactions
    kafka_password_gold: str = field(default="", repr=False)
    kafka_user_reader: str = ""     # reads every topic (trace, refresh, your consumers)
    kafka_password_reader: str = field(default="", repr=False)
    topic_orders: str = "commandes-json"
    topic_logs: str = "logs-application"
    topic_metrics: str = "metrics"
    topic_enriched: str = "commandes-enrichies"
    topic_partitions: int = 3
    starting_offsets: str = "earliest"
    fail_on_data_loss: bool = True
    # Micro-batch bounds: a backlog (a backfill, a restart after hours) is read in bounded batches
    # rather than one that must fit in memory at once (300,000 orders in one silver batch ran the
    # driver out of heap). Live batches are far below both.
    max_offsets_per_trigger: int = 100_000  # Kafka records per bronze micro-batch, all topics; 0 = unlimited
    max_bytes_per_trigger: str = "4m"       # Delta files read per silver/gold micro-batch and source (soft: >= 1 file)
    # streaming
    trigger: str = "processingTime=1 second"
    kpi_trigger: str = "processingTime=30 seconds"  # gold_kpis when the run is live (KPIs need not follow every batch)
    watermark_orders: str = "5 minutes"
    watermark_logs: str = "2 minutes"
    watermark_metrics: str = "1 minute"
    max_event_time_ahead: str = "5 minutes"  # an event time further ahead of its Kafka timestamp is quarantined
    late_warn_pct: int = 10  # a silver batch sending more than this % of a source's records to the late ledger warns
    # schema drift, per source (silver): rescue = unknown fields kept in the row's _rescued_data;
    # addNewColumns = a new top-level field becomes a (string) column of the silver table;
    # fail = the stage stops before writing the batch that brought a new field or lost a required one
    schema_evolution_orders: str = "rescue"
    schema_evolution_logs: str = "rescue"
    schema_evolution_metrics: str = "rescue"
    rescued_max_pct: int = 5  # data quality: at most this % of a silver table's rows with _rescued_data
    event_log_interval: str = "30 seconds"  # how often an app appends its buffered rows to ops.pipeline_events
    compact_every: int = 100  # commits to a table between its writing app's compactions (OPTIMIZE); 0 = never
    # a stage's owner that stops renewing its ownership (common.ownership) loses it after this long;
    # an owner whose process is gone on this host loses it at once
    ownership_expiry: str = "10 seconds"
    # gold windows
    kpi_window: str = "2 minutes"         # customer_order_kpis: sliding window ...
    kpi_slide: str = "1 minute"           # ... and its slide
    minute_window: str = "1 minute"       # customer_minute_totals, product_sales, log_level_counts, module_stats
    host_window: str = "30 seconds"       # host_metrics
    # spark
    spark_master: str = "local[*]"
    shuffle_partitions: int = 2
    driver_memory: str = "2g"  # the driver JVM's heap; in local mode it runs the executors too
    spark_ui: bool = False
    spark_event_log_dir: str = ""  # e.g. s3a://lakehouse/_spark-events: event logs for the history server
    # output
    log_level: str = "INFO"  # DEBUG (= --verbose): every Spark and library log line, full stack traces
    # dashboard (lakehouse dashboard)
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = 8501
    dashboard_refresh: str = "10 seconds"  # how often the page reloads its data by itself
    # local stack
    stack_dir: str = str(PROJECT_ROOT / ".stack")
    kafka_controller_port: int = 9093
    minio_console_port: int = 9001
    # the S3 roles this process acts as (``acting_as``): not a setting, the command decides
    roles: tuple[str, ...] = field(default=("admin",), metadata={"env": False})

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        env = dict(os.environ if environ is None else environ)
        values: dict[str, str] = {}
        env_file = env.get("LAKEHOUSE_ENV_FILE")
        if env_file:
            values.update(read_env_file(env_file))
        values.update({k: v for k, v in env.items() if k.startswith("LAKEHOUSE_")})
        kwargs = {}
        for f in env_fields(cls):
            var = env_var(f.name)
            if var in values:
                kwargs[f.name] = _convert(var, values[var], f.type)
        unknown = sorted(set(values) - {env_var(f.name) for f in env_fields(cls)}
                         - {"LAKEHOUSE_ENV_FILE"} - set(TOOLING_VARIABLES))
        if unknown:
            raise SettingsError(f"unknown setting {unknown[0]}; known: "
                                + ", ".join(env_var(f.name) for f in env_fields(cls)))
        settings = cls(**kwargs)
        settings.validate()
        return settings

    def with_overrides(self, **changes) -> "Settings":
        new = dataclasses.replace(self, **changes)
        new.validate()
        return new

    def validate(self) -> None:
        root = self.lake_root
        if not root:
            raise SettingsError("LAKEHOUSE_LAKE_ROOT is empty; use s3a://<bucket>[/prefix] or a local path")
        if "://" in root:
            if not re.match(r"^s3a://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\s]*)?$", root):
                raise SettingsError(
                    f"LAKEHOUSE_LAKE_ROOT={root!r} is not valid; use s3a://<bucket>[/prefix] "
                    "(bucket: 3-63 lowercase letters, digits, dots, hyphens) or an absolute local path")
            # (the keys a command needs are checked when it takes its roles: ``acting_as``; a
            # process that only runs Kafka, the compose broker, holds none)
            if bool(self.s3_access_key) != bool(self.s3_secret_key):
                raise SettingsError("LAKEHOUSE_S3_ACCESS_KEY and LAKEHOUSE_S3_SECRET_KEY go together: set both or neither")
            if (self.lake_layout != "single" and self.checkpoint_root.startswith("s3a://")
                    and s3_location(self.checkpoint_root)[0] != self.bucket):
                raise SettingsError(
                    f"LAKEHOUSE_CHECKPOINT_ROOT={self.checkpoint_root!r}: with LAKEHOUSE_LAKE_LAYOUT=bucket-per-layer "
                    f"use a path in s3a://{self.bucket}/ (each stage's checkpoints go under it in the stage's "
                    f"bucket, {self.bucket}-<layer>, where its key writes)")
            longest = max(len(f"{self.bucket}-{zone}") for zone in ZONES)
            if self.lake_layout == "bucket-per-layer" and longest > 63:
                raise SettingsError(f"LAKEHOUSE_LAKE_ROOT={root!r}: with LAKEHOUSE_LAKE_LAYOUT=bucket-per-layer the "
                                    f"bucket's name is the base of {len(ZONES)} buckets (<bucket>-silver ...): use "
                                    f"a name of at most {63 - longest + len(self.bucket)} characters")
            if not re.match(r"^https?://[^\s/]+(:\d+)?/?$", self.s3_endpoint):
                raise SettingsError(
                    f"LAKEHOUSE_S3_ENDPOINT={self.s3_endpoint!r} is not valid; use http(s)://host:port")
        elif not os.path.isabs(root):
            raise SettingsError(f"LAKEHOUSE_LAKE_ROOT={root!r} must be s3a://<bucket>[/prefix] or an absolute path")
        if self.lake_layout not in LAKE_LAYOUTS:
            raise SettingsError(f"LAKEHOUSE_LAKE_LAYOUT={self.lake_layout!r}; valid: {', '.join(LAKE_LAYOUTS)}")
        if self.lake_layout != "single" and not self.is_s3:
            raise SettingsError(f"LAKEHOUSE_LAKE_LAYOUT={self.lake_layout} needs an s3a:// LAKEHOUSE_LAKE_ROOT "
                                "(a bucket per zone); a local lake is single")
        for role in S3_ROLES:
            if bool(getattr(self, f"s3_access_key_{role}")) != bool(getattr(self, f"s3_secret_key_{role}")):
                raise SettingsError(f"LAKEHOUSE_S3_ACCESS_KEY_{role.upper()} and LAKEHOUSE_S3_SECRET_KEY_{role.upper()} "
                                    "go together: set both or neither")
        unknown_roles = [r for r in self.roles if r not in S3_RIGHTS]
        if unknown_roles or not self.roles:
            raise SettingsError(f"unknown S3 role {unknown_roles[0] if unknown_roles else '(none)'!r}; valid: "
                                + ", ".join(S3_ROLES))
        for server in self.kafka_bootstrap_servers.split(","):
            if not re.match(r"^[\w.-]+:\d{1,5}$", server.strip()):
                raise SettingsError(
                    f"LAKEHOUSE_KAFKA_BOOTSTRAP_SERVERS={self.kafka_bootstrap_servers!r} is not valid; "
                    "use host:port[,host:port]")
        if self.kafka_security_protocol not in KAFKA_SECURITY_PROTOCOLS:
            raise SettingsError(f"LAKEHOUSE_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol!r}; valid: "
                                + ", ".join(KAFKA_SECURITY_PROTOCOLS))
        if self.kafka_sasl_mechanism not in KAFKA_SASL_MECHANISMS:
            raise SettingsError(f"LAKEHOUSE_KAFKA_SASL_MECHANISM={self.kafka_sasl_mechanism!r}; valid: "
                                + ", ".join(KAFKA_SASL_MECHANISMS))
        for suffix in ("",) + tuple(f"_{role}" for role in KAFKA_ROLES):
            user, password = getattr(self, f"kafka_user{suffix}"), getattr(self, f"kafka_password{suffix}")
            if bool(user) != bool(password):
                raise SettingsError(f"LAKEHOUSE_KAFKA_USER{suffix.upper()} and LAKEHOUSE_KAFKA_PASSWORD{suffix.upper()} "
                                    "go together: set both or neither")
        Trigger.parse(self.trigger, variable="LAKEHOUSE_TRIGGER")
        if Trigger.parse(self.kpi_trigger, variable="LAKEHOUSE_KPI_TRIGGER").kind != "processingTime":
            raise SettingsError(f"LAKEHOUSE_KPI_TRIGGER={self.kpi_trigger!r}: use processingTime=<interval> (a run "
                                "with --trigger availableNow drains the KPIs too)")
        for name in ("watermark_orders", "watermark_logs", "watermark_metrics", "max_event_time_ahead", "kpi_window",
                     "kpi_slide", "minute_window", "host_window", "event_log_interval", "dashboard_refresh",
                     "ownership_expiry"):
            try:
                interval_seconds(getattr(self, name))
            except SettingsError:
                raise SettingsError(f"{env_var(name)}={getattr(self, name)!r} is not an interval; "
                                    "use e.g. '5 minutes', '30 seconds'") from None
        for name in ("event_log_interval", "dashboard_refresh", "ownership_expiry"):
            if interval_seconds(getattr(self, name)) <= 0:
                raise SettingsError(f"{env_var(name)}={getattr(self, name)!r} must be more than 0 seconds")
        if not 0 < self.dashboard_port < 65536:
            raise SettingsError(f"LAKEHOUSE_DASHBOARD_PORT={self.dashboard_port} is not a port; use 1-65535")
        if interval_seconds(self.kpi_slide) > interval_seconds(self.kpi_window):
            raise SettingsError(f"LAKEHOUSE_KPI_SLIDE={self.kpi_slide!r} must not exceed "
                                f"LAKEHOUSE_KPI_WINDOW={self.kpi_window!r}")
        if self.starting_offsets not in ("earliest", "latest") and not self.starting_offsets.startswith("{"):
            raise SettingsError(f"LAKEHOUSE_STARTING_OFFSETS={self.starting_offsets!r}; valid: earliest, "
                                "latest, or a JSON offsets object")
        for name in ("topic_partitions", "shuffle_partitions"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{env_var(name)} must be >= 1")
        for kind in SOURCE_KINDS:
            mode = getattr(self, f"schema_evolution_{kind}")
            if mode not in SCHEMA_EVOLUTION_MODES:
                raise SettingsError(f"LAKEHOUSE_SCHEMA_EVOLUTION_{kind.upper()}={mode!r}; valid: "
                                    + ", ".join(SCHEMA_EVOLUTION_MODES))
        if not 0 <= self.rescued_max_pct <= 100:
            raise SettingsError(f"LAKEHOUSE_RESCUED_MAX_PCT={self.rescued_max_pct} must be between 0 and 100")
        if not 0 <= self.late_warn_pct <= 100:
            raise SettingsError(f"LAKEHOUSE_LATE_WARN_PCT={self.late_warn_pct} must be between 0 and 100")
        if self.compact_every < 0:
            raise SettingsError(f"LAKEHOUSE_COMPACT_EVERY={self.compact_every} must be >= 0 (0 = no in-app compaction)")
        if self.max_offsets_per_trigger < 0:
            raise SettingsError("LAKEHOUSE_MAX_OFFSETS_PER_TRIGGER must be >= 0 (0 = unlimited)")
        for name in ("max_bytes_per_trigger", "driver_memory"):
            if not re.fullmatch(r"[1-9][0-9]*[kmg]", getattr(self, name)):
                raise SettingsError(f"{env_var(name)}={getattr(self, name)!r} is not a size; use e.g. 512m, 4m, 2g")
        if self.log_level not in LOG_LEVELS:
            raise SettingsError(f"LAKEHOUSE_LOG_LEVEL={self.log_level!r}; valid: {', '.join(LOG_LEVELS)}")
        topics = self.source_topics + (self.topic_enriched,)
        for t in topics:
            if not re.match(r"^[A-Za-z0-9._-]{1,249}$", t):
                raise SettingsError(f"topic name {t!r} is not valid for Kafka")

    # ---- derived names: the only place they are spelled -------------------------------
    @property
    def is_s3(self) -> bool:
        return self.lake_root.startswith("s3a://")

    @property
    def bucket(self) -> str | None:
        return self.lake_root[len("s3a://"):].split("/", 1)[0] if self.is_s3 else None

    def with_topic_scope(self, scope: str, **changes) -> "Settings":
        """These settings with topics of their own, ``<topic>.<scope>`` (a test's, a benchmark's,
        set-up's scratch run), and ``changes``. The suffix keeps each name under its configured one:
        the local stack's ACLs grant each role its topics by that prefix."""
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,100}", scope):
            raise SettingsError(f"topic scope {scope!r}: use letters, digits, '.', '_' or '-'")
        topics = {f: f"{getattr(self, f)}.{scope}" for f in ("topic_orders", "topic_logs", "topic_metrics",
                                                              "topic_enriched")}
        return self.with_overrides(**{**topics, **changes})

    @property
    def source_topics(self) -> tuple[str, ...]:
        return tuple(src.topic for src in self.sources)

    @property
    def sources(self) -> tuple["Source", ...]:
        """The three sources, in ``SOURCE_KINDS`` order: each its topic, watermark delay, bronze table."""
        return tuple(self.source(kind) for kind in SOURCE_KINDS)

    @property
    def dedup_horizon(self) -> str:
        """The longest watermark delay of the sources: silver's dedup operators all evict by it
        (``silver.transforms.dedupe``)."""
        return max((src.watermark for src in self.sources), key=interval_seconds)

    def source(self, kind: str) -> "Source":
        """Source ``kind`` (orders | logs | metrics) and its settings, typed."""
        fields = {"orders": (self.topic_orders, self.watermark_orders),
                  "logs": (self.topic_logs, self.watermark_logs),
                  "metrics": (self.topic_metrics, self.watermark_metrics)}
        if kind not in fields:
            raise SettingsError(f"unknown source {kind!r}; valid: {', '.join(SOURCE_KINDS)}")
        topic, watermark = fields[kind]
        return Source(kind, topic, watermark, self.bronze_table_for(topic), getattr(self, f"schema_evolution_{kind}"))

    def source_of_topic(self, topic: str) -> "Source | None":
        """The source whose Kafka topic is ``topic`` (None: not a source topic)."""
        return next((src for src in self.sources if src.topic == topic), None)

    @property
    def checkpoints(self) -> str:
        """Where checkpoints go when no stage is named (a benchmark's scratch query): the ops zone."""
        return self._in_zone(self._checkpoint_root, OPS)

    @property
    def _checkpoint_root(self) -> str:
        return (self.checkpoint_root or f"{self.lake_root.rstrip('/')}/_checkpoints").rstrip("/")

    def _in_zone(self, path: str, zone: str) -> str:
        """``path`` (under the lake's bucket) in zone ``zone``'s bucket: the same path in the single layout."""
        if self.lake_layout == "single" or not path.startswith("s3a://") or s3_location(path)[0] != self.bucket:
            return path
        return f"s3a://{self.zone_bucket(zone)}{path[len(f's3a://{self.bucket}'):]}"

    @property
    def buckets(self) -> tuple[str, ...]:
        """Every bucket of the lake: one, or one per zone (empty for a local lake)."""
        return tuple(dict.fromkeys(self.zone_bucket(zone) for zone in ZONES)) if self.is_s3 else ()

    def zone_bucket(self, zone: str) -> str:
        return f"{self.bucket}-{zone}" if self.lake_layout == "bucket-per-layer" else self.bucket

    def zone_root(self, zone: str) -> str:
        """The root of zone ``zone`` (ZONES): the lake root, or, a bucket per layer, the same prefix
        in bucket ``<bucket>-<zone>``."""
        if zone not in ZONES:
            raise SettingsError(f"unknown zone {zone!r}; valid: {', '.join(ZONES)}")
        return self._in_zone(self.lake_root.rstrip("/"), zone)

    @staticmethod
    def zone_of(layer: str, table: str = "") -> str:
        """The zone a table is stored in: its layer's; an ops table in the zone of the stage that
        writes it (a stage's event log, ``pipeline_events_<stage>``, beside the stage's data, so the
        stage's key covers it), the ops zone otherwise."""
        stage = table.removeprefix("pipeline_events_")
        return layer if layer in LAYERS else stage if stage in LAYERS and stage != table else OPS

    @staticmethod
    def bronze_table_for(topic: str) -> str:
        return topic.replace("-", "_").replace(".", "_")

    def table_path(self, layer: str, table: str) -> str:
        if layer not in LAYERS and layer not in (OPS, "_system"):
            raise SettingsError(f"unknown layer {layer!r}; valid: {', '.join(LAYERS)}")
        return f"{self.zone_root(self.zone_of(layer, table))}/{layer}/{table}"

    def checkpoint_path(self, layer: str, query: str) -> str:
        """A query's checkpoint: in the zone of the layer it writes (its role's key covers both)."""
        return f"{self._in_zone(self._checkpoint_root, layer)}/{layer}/{query}"

    def owner_path(self, stage: str) -> str:
        """The ownership record of a stage (``common.ownership``): beside its queries' checkpoints."""
        return f"{self._in_zone(self._checkpoint_root, stage)}/{stage}/_lakehouse_owner.json"

    # ---- S3 identities ------------------------------------------------------------------
    def acting_as(self, *roles: str) -> "Settings":
        """These settings for a process of S3 roles ``roles`` (S3_RIGHTS): its Spark session, its
        delta-rs and MinIO clients hold those roles' keys and no other (each role must have one)."""
        acting = self.with_overrides(roles=tuple(dict.fromkeys(roles)))
        for role in acting.roles if acting.is_s3 else ():
            acting.s3_identity(role)
        return acting

    def s3_identity(self, role: str) -> tuple[str, str]:
        """(access key, secret key) of S3 role ``role``: its own, or LAKEHOUSE_S3_ACCESS_KEY's."""
        if role not in S3_RIGHTS:
            raise SettingsError(f"unknown S3 role {role!r}; valid: {', '.join(S3_ROLES)}")
        own = getattr(self, f"s3_access_key_{role}")
        if own:
            return own, getattr(self, f"s3_secret_key_{role}")
        if not self.s3_access_key:
            raise SettingsError(f"an s3a:// lake root needs a key: S3 role {role} has none: set "
                                f"LAKEHOUSE_S3_ACCESS_KEY_{role.upper()} and LAKEHOUSE_S3_SECRET_KEY_{role.upper()}, or "
                                "LAKEHOUSE_S3_ACCESS_KEY and LAKEHOUSE_S3_SECRET_KEY for every role (for the local "
                                "stack: LAKEHOUSE_ENV_FILE=local.env)")
        return self.s3_access_key, self.s3_secret_key

    def s3_role_for(self, zone: str) -> str | None:
        """Which of this process's roles acts in zone ``zone``: the one with the most rights there
        (the first on a tie); None when none may even read it. With one bucket for every zone S3A
        takes one key: the roles must share it."""
        if self.lake_layout == "single" or not self.is_s3:
            keys = {self.s3_identity(role) for role in self.roles} if self.is_s3 else set()
            if len(keys) > 1:
                raise SettingsError(
                    f"this command acts as S3 roles {', '.join(self.roles)}, whose keys differ, and "
                    "LAKEHOUSE_LAKE_LAYOUT=single keeps the lake in one bucket, for which S3A takes one key: "
                    "set LAKEHOUSE_LAKE_LAYOUT=bucket-per-layer, or give these roles one key")
            return self.roles[0]
        best = max(self.roles, key=lambda role: _RANK[S3_RIGHTS[role].get(zone)])
        return best if S3_RIGHTS[best].get(zone) else None

    def s3_role_for_bucket(self, bucket: str) -> str | None:
        """``s3_role_for`` the zone stored in ``bucket``; a bucket outside the lake gets what S3A
        gives it, the default key (the first role's)."""
        zone = next((zone for zone in ZONES if self.zone_bucket(zone) == bucket), None)
        return self.s3_role_for(zone) if zone else self.roles[0]

    def s3_key_for(self, bucket: str) -> tuple[str, str] | None:
        """The (access, secret) key this process uses for ``bucket`` (None: it has no rights there)."""
        role = self.s3_role_for_bucket(bucket)
        return self.s3_identity(role) if role else None

    @property
    def s3_identities(self) -> str:
        """How the lake's S3 keys are split, for ``lakehouse config`` (never a secret)."""
        own = [role for role in S3_ROLES if getattr(self, f"s3_access_key_{role}")]
        mode = ("one key per role" if len(own) == len(S3_ROLES) else "one key for every role" if not own else
                f"own keys for {', '.join(own)}; LAKEHOUSE_S3_ACCESS_KEY for the rest")
        return f"{self.lake_layout} layout ({', '.join(self.buckets) or 'local'}), {mode}"

    @property
    def kafka_sasl(self) -> bool:
        return self.kafka_security_protocol.startswith("SASL_")

    def kafka_identity(self, role: str) -> tuple[str, str] | None:
        """The (user, password) Kafka clients of ``role`` authenticate with; None without SASL.
        A role without an identity of its own uses LAKEHOUSE_KAFKA_USER / LAKEHOUSE_KAFKA_PASSWORD."""
        if role not in KAFKA_ROLES:
            raise SettingsError(f"unknown Kafka role {role!r}; valid: {', '.join(KAFKA_ROLES)}")
        if not self.kafka_sasl:
            return None
        user = getattr(self, f"kafka_user_{role}") or self.kafka_user
        password = getattr(self, f"kafka_password_{role}") or self.kafka_password
        if not user:
            raise SettingsError(
                f"LAKEHOUSE_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs an identity for the {role} "
                f"role: set LAKEHOUSE_KAFKA_USER_{role.upper()} and LAKEHOUSE_KAFKA_PASSWORD_{role.upper()} "
                "(or LAKEHOUSE_KAFKA_USER and LAKEHOUSE_KAFKA_PASSWORD for every role)")
        return user, password

    @property
    def kafka_identities(self) -> str:
        """How Kafka clients authenticate, for ``lakehouse config`` (never a secret)."""
        if not self.kafka_sasl:
            return f"{self.kafka_security_protocol} (no authentication)"
        own = [role for role in KAFKA_ROLES if getattr(self, f"kafka_user_{role}")]
        mode = ("one identity per role" if len(own) == len(KAFKA_ROLES) else
                "one identity for every role" if not own else
                f"own identities for {', '.join(own)}; LAKEHOUSE_KAFKA_USER for the rest")
        return f"{self.kafka_security_protocol} with {self.kafka_sasl_mechanism}, {mode}"

    @property
    def kafka_port(self) -> int:
        return int(self.kafka_bootstrap_servers.split(",")[0].rsplit(":", 1)[1])

    @property
    def s3_port(self) -> int:
        tail = self.s3_endpoint.rstrip("/").rsplit(":", 1)
        return int(tail[1]) if len(tail) == 2 and tail[1].isdigit() else (443 if self.s3_endpoint.startswith("https") else 80)

    @property
    def trigger_spec(self) -> Trigger:
        return Trigger.parse(self.trigger, variable="LAKEHOUSE_TRIGGER")

    def redacted(self) -> dict[str, object]:
        out = {}
        for f in env_fields(self):
            value = getattr(self, f.name)
            if f.name in SECRET_FIELDS:
                value = "****" if value else "(unset)"
            out[env_var(f.name)] = value
        return out


SECRET_FIELDS = frozenset({"s3_access_key", "s3_secret_key", "kafka_password"}
                          | {f"kafka_password_{role}" for role in KAFKA_ROLES}
                          | {f"s3_{kind}_key_{role}" for kind in ("access", "secret") for role in S3_ROLES})


def s3_location(path: str) -> tuple[str, str]:
    """``s3a://bucket/key`` -> (bucket, key without a trailing slash)."""
    bucket, _, key = path.removeprefix("s3a://").removeprefix("s3://").partition("/")
    return bucket, key.rstrip("/")


def env_fields(settings_or_class) -> tuple:
    """The fields of Settings read from LAKEHOUSE_* variables (``roles`` is the command's choice)."""
    return tuple(f for f in dataclasses.fields(settings_or_class) if f.metadata.get("env", True))


def env_var(field_name: str) -> str:
    return "LAKEHOUSE_" + field_name.upper()


def _convert(var: str, raw: str, typ) -> object:
    typ = str(typ)
    raw = raw.strip()
    if typ == "bool":
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{var}={raw!r} is not a boolean; use true or false")
    if typ == "int":
        try:
            return int(raw)
        except ValueError:
            raise SettingsError(f"{var}={raw!r} is not an integer") from None
    return raw


def read_env_file(path: str) -> dict[str, str]:
    """Read a ``KEY=VALUE`` file (comments with #, optional quotes, optional ``export``)."""
    p = Path(path)
    if not p.is_absolute() and not p.exists():
        p = PROJECT_ROOT / p
    if not p.exists():
        raise SettingsError(f"LAKEHOUSE_ENV_FILE={path!r}: no such file")
    values = {}
    for n, line in enumerate(p.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        key, sep, value = line.partition("=")
        if not sep:
            raise SettingsError(f"{p}:{n}: expected KEY=VALUE, got {line!r}")
        values[key.strip()] = value.strip().strip("'\"")
    return values


_cached: Settings | None = None


def get_settings() -> Settings:
    """The process's settings, built (and validated) on first use."""
    global _cached
    if _cached is None:
        _cached = Settings.from_env()
    return _cached


# ---- the process environment beyond the pipeline's settings ---------------------------------
# Every environment variable is read in this module; the rest of the code asks these functions.

TOOLING_VARIABLES = ("LAKEHOUSE_CACHE_DIR", "LAKEHOUSE_MAVEN_URL", "LAKEHOUSE_MAVEN_REPO", "LAKEHOUSE_NPM_URL")


@dataclass(frozen=True)
class Tooling:
    """Where the set-up commands keep and fetch what they download or build (jars, Maven's
    repository, the Data Docs' web assets, the Go tools). Read apart from ``Settings``, so
    ``lakehouse setup jars`` works before the lake is configured.

    ``cache_dir`` (``LAKEHOUSE_CACHE_DIR``, default ``$XDG_CACHE_HOME/lakehouse``, i.e.
    ``~/.cache/lakehouse``) is the user's cache, shared by every clone like pip's and Maven's:
    each entry is named after its version, so clones at other pins keep theirs beside it. What is
    generated for one clone (Spark's conf folder, the JVM's class archive) stays in the clone's
    ``.cache/`` (``project_cache``)."""

    cache_dir: Path
    maven_url: str
    maven_repo: str | None
    npm_url: str = "https://registry.npmjs.org"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Tooling":
        env = os.environ if environ is None else environ
        xdg = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME") or Path.home()) / ".cache")
        return cls(cache_dir=Path(env.get("LAKEHOUSE_CACHE_DIR") or Path(xdg) / "lakehouse").resolve(),
                   maven_url=env.get("LAKEHOUSE_MAVEN_URL") or "https://repo.maven.apache.org/maven2",
                   maven_repo=env.get("LAKEHOUSE_MAVEN_REPO") or None,
                   npm_url=env.get("LAKEHOUSE_NPM_URL") or "https://registry.npmjs.org")


def project_cache() -> Path:
    """What is generated for this clone (Spark's conf folder, the JVM's class archive): ``.cache/``."""
    return PROJECT_ROOT / ".cache"


def under_spark_submit() -> bool:
    """Spark started this Python process (spark-submit's PythonRunner starts the JVM first and
    hands Python its gateway port), so the session's JVM options are already fixed."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


@contextlib.contextmanager
def environment(**values: str):
    """Set environment variables for the duration of a block: for a launcher that reads this
    process's environment itself (pyspark's JVM launch), restored afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child process: this process's, with ``extra`` set."""
    return {**os.environ, **extra}
