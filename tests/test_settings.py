"""Settings are validated at start: each wrong value gives one line naming the variable."""

from __future__ import annotations

import subprocess
import sys

import pytest

from common.errors import SettingsError
from common.settings import Settings, Trigger, interval_seconds

CREDS = {"LAKEHOUSE_S3_ACCESS_KEY": "a", "LAKEHOUSE_S3_SECRET_KEY": "s3cr3t-value"}


def test_defaults_and_derived_names():
    s = Settings.from_env(CREDS)
    assert s.bucket == "lakehouse"
    assert s.table_path("bronze", s.bronze_table_for(s.topic_orders)) == "s3a://lakehouse/bronze/commandes_json"
    assert s.checkpoint_path("silver", "orders") == "s3a://lakehouse/_checkpoints/silver/orders"
    assert s.trigger_spec == Trigger("processingTime", "1 second")


@pytest.mark.parametrize("text,expected", [
    ("availableNow", Trigger("availableNow")),
    ("once", Trigger("once")),
    ("processingTime=10 seconds", Trigger("processingTime", "10 seconds")),
    ("continuous=1 second", Trigger("continuous", "1 second")),
])
def test_trigger_parse(text, expected):
    assert Trigger.parse(text) == expected


@pytest.mark.parametrize("env,fragment", [
    ({"LAKEHOUSE_TRIGGER": "sometimes"}, "LAKEHOUSE_TRIGGER='sometimes' is not a trigger; valid:"),
    ({"LAKEHOUSE_TRIGGER": "processingTime=soon"}, "interval 'soon' is not valid"),
    ({"LAKEHOUSE_LAKE_ROOT": "s3a://Bad_Bucket"}, "LAKEHOUSE_LAKE_ROOT='s3a://Bad_Bucket' is not valid"),
    ({"LAKEHOUSE_LAKE_ROOT": "relative/path"}, "must be s3a://<bucket>[/prefix] or an absolute path"),
    ({"LAKEHOUSE_S3_ENDPOINT": "minio:9000"}, "LAKEHOUSE_S3_ENDPOINT='minio:9000' is not valid"),
    ({"LAKEHOUSE_KAFKA_BOOTSTRAP_SERVERS": "localhost"}, "LAKEHOUSE_KAFKA_BOOTSTRAP_SERVERS='localhost'"),
    ({"LAKEHOUSE_TOPIC_PARTITIONS": "three"}, "LAKEHOUSE_TOPIC_PARTITIONS='three' is not an integer"),
    ({"LAKEHOUSE_WATERMARK_ORDERS": "5 lightyears"}, "LAKEHOUSE_WATERMARK_ORDERS"),
    ({"LAKEHOUSE_STARTING_OFFSETS": "beginning"}, "valid: earliest, latest"),
    ({"LAKEHOUSE_TRIGGR": "once"}, "unknown setting LAKEHOUSE_TRIGGR"),
    ({"LAKEHOUSE_KAFKA_SECURITY_PROTOCOL": "SSL"}, "valid: PLAINTEXT, SASL_PLAINTEXT, SASL_SSL"),
    ({"LAKEHOUSE_KAFKA_SASL_MECHANISM": "GSSAPI"}, "valid: SCRAM-SHA-512, SCRAM-SHA-256, PLAIN"),
    ({"LAKEHOUSE_KAFKA_USER_GOLD": "gold"}, "LAKEHOUSE_KAFKA_USER_GOLD and LAKEHOUSE_KAFKA_PASSWORD_GOLD go together"),
    ({"LAKEHOUSE_LAKE_LAYOUT": "per-table"}, "LAKEHOUSE_LAKE_LAYOUT='per-table'; valid: single, bucket-per-layer"),
    ({"LAKEHOUSE_LAKE_LAYOUT": "bucket-per-layer", "LAKEHOUSE_LAKE_ROOT": "/data/lake"}, "needs an s3a://"),
    ({"LAKEHOUSE_LAKE_LAYOUT": "bucket-per-layer", "LAKEHOUSE_LAKE_ROOT": "s3a://" + "b" * 60},
     "use a name of at most 56 characters"),
    ({"LAKEHOUSE_S3_ACCESS_KEY_SILVER": "silver"},
     "LAKEHOUSE_S3_ACCESS_KEY_SILVER and LAKEHOUSE_S3_SECRET_KEY_SILVER go together"),
])
def test_bad_settings_name_the_variable(env, fragment):
    with pytest.raises(SettingsError) as e:
        Settings.from_env({**CREDS, **env})
    assert fragment in str(e.value)
    assert "\n" not in str(e.value)


def test_s3_root_requires_credentials():
    """A command that reads or writes the lake needs a key for each of its roles (checked before
    anything starts); settings without any are still valid for a process that does not touch S3
    (docker-compose's Kafka broker)."""
    for env, role in (({}, "admin"), ({"LAKEHOUSE_S3_ACCESS_KEY_READER": "r", "LAKEHOUSE_S3_SECRET_KEY_READER": "rs"},
                                      "bronze")):
        with pytest.raises(SettingsError, match=f"S3 role {role} has none: set LAKEHOUSE_S3_ACCESS_KEY_{role.upper()} "
                                                "and LAKEHOUSE_S3_SECRET_KEY_.*, or LAKEHOUSE_S3_ACCESS_KEY"):
            Settings.from_env(env).acting_as(role)
    assert Settings.from_env({"LAKEHOUSE_S3_ACCESS_KEY_READER": "r", "LAKEHOUSE_S3_SECRET_KEY_READER": "rs"}
                             ).acting_as("reader").s3_identity("reader") == ("r", "rs")
    assert Settings.from_env({"LAKEHOUSE_LAKE_ROOT": "/data/lake"}).is_s3 is False


def test_env_file_then_environment(tmp_path):
    f = tmp_path / "x.env"
    f.write_text("# comment\nexport LAKEHOUSE_TOPIC_PARTITIONS=5\nLAKEHOUSE_TRIGGER='availableNow'\n")
    s = Settings.from_env({**CREDS, "LAKEHOUSE_ENV_FILE": str(f), "LAKEHOUSE_TRIGGER": "once"})
    assert s.topic_partitions == 5 and s.trigger == "once"


def test_redacted_hides_secrets():
    s = Settings.from_env(CREDS)
    text = repr(s) + str(s.redacted())
    assert "s3cr3t-value" not in text
    assert s.redacted()["LAKEHOUSE_S3_SECRET_KEY"] == "****"


def test_kafka_identities_per_role_or_one_for_all():
    """Each Kafka role authenticates as its own identity, or as LAKEHOUSE_KAFKA_USER when it has none;
    without SASL, as nobody. A role with no identity at all is one line naming both settings."""
    sasl = {**CREDS, "LAKEHOUSE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"}
    assert Settings.from_env(CREDS).kafka_identity("bronze") is None
    assert Settings.from_env(CREDS).kafka_identities == "PLAINTEXT (no authentication)"
    one = Settings.from_env({**sasl, "LAKEHOUSE_KAFKA_USER": "app", "LAKEHOUSE_KAFKA_PASSWORD": "pw-all"})
    assert {one.kafka_identity(r) for r in ("admin", "producer", "bronze", "gold", "reader")} == {("app", "pw-all")}
    assert one.kafka_identities == "SASL_PLAINTEXT with SCRAM-SHA-512, one identity for every role"
    mixed = one.with_overrides(kafka_user_gold="gold", kafka_password_gold="pw-gold")
    assert mixed.kafka_identity("gold") == ("gold", "pw-gold") and mixed.kafka_identity("bronze") == ("app", "pw-all")
    assert "own identities for gold" in mixed.kafka_identities
    with pytest.raises(SettingsError, match="LAKEHOUSE_KAFKA_USER_READER and LAKEHOUSE_KAFKA_PASSWORD_READER"):
        Settings.from_env(sasl).kafka_identity("reader")
    text = repr(mixed) + str(mixed.redacted())
    assert "pw-all" not in text and "pw-gold" not in text


SPLIT = {**CREDS, "LAKEHOUSE_LAKE_ROOT": "s3a://lake/team", "LAKEHOUSE_LAKE_LAYOUT": "bucket-per-layer",
         **{f"LAKEHOUSE_S3_{kind}_KEY_{role.upper()}": f"{role}-{kind.lower()}" for kind in ("ACCESS", "SECRET")
            for role in ("admin", "bronze", "silver", "gold", "customers", "quality", "reader")}}


def test_a_bucket_per_layer_keeps_each_zone_and_its_checkpoints_in_its_own_bucket():
    """S3A scopes keys by bucket: each layer's tables, and the checkpoints and event log of the stage
    that writes them, are in ``<bucket>-<layer>`` under the same prefix; ops tables that no stage
    owns (dq results) in ``<bucket>-ops``. The single layout keeps everything under the root."""
    s = Settings.from_env(SPLIT)
    assert s.buckets == ("lake-bronze", "lake-silver", "lake-gold", "lake-ops")
    assert s.table_path("bronze", "metrics") == "s3a://lake-bronze/team/bronze/metrics"
    assert s.checkpoint_path("silver", "bronze") == "s3a://lake-silver/team/_checkpoints/silver/bronze"
    assert s.table_path("ops", "pipeline_events_gold") == "s3a://lake-gold/team/ops/pipeline_events_gold"
    assert s.table_path("ops", "dq_results") == "s3a://lake-ops/team/ops/dq_results"
    assert s.checkpoints == "s3a://lake-ops/team/_checkpoints"
    moved = s.with_overrides(checkpoint_root="s3a://lake/team/_moved")  # under each stage's bucket too
    assert moved.checkpoint_path("gold", "kpis") == "s3a://lake-gold/team/_moved/gold/kpis"
    with pytest.raises(SettingsError, match="use a path in s3a://lake/"):
        s.with_overrides(checkpoint_root="s3a://elsewhere/ck")
    assert "bucket-per-layer layout (lake-bronze, lake-silver, lake-gold, lake-ops), one key per role" == s.s3_identities
    one = Settings.from_env(CREDS)
    assert one.buckets == ("lakehouse",) and one.table_path("ops", "pipeline_events_gold").startswith("s3a://lakehouse/ops/")
    assert one.s3_identities == "single layout (lakehouse), one key for every role"


def test_a_process_holds_the_keys_of_its_roles_and_no_other():
    """A stage alone: its role's key only; ``run all``: each zone's bucket with the key of the stage
    that writes it; a reader: the reader's. No key on the JVM's command line, per-bucket ones too."""
    from common.spark import _OFF_THE_COMMAND_LINE, s3_keys

    s = Settings.from_env(SPLIT)
    assert s3_keys(s.acting_as("bronze")) == {"spark.hadoop.fs.s3a.access.key": "bronze-access",
                                              "spark.hadoop.fs.s3a.secret.key": "bronze-secret"}
    every = s3_keys(s.acting_as("bronze", "silver", "gold"))
    assert every == {"spark.hadoop.fs.s3a.access.key": "bronze-access", "spark.hadoop.fs.s3a.secret.key": "bronze-secret",
                     "spark.hadoop.fs.s3a.bucket.lake-silver.access.key": "silver-access",
                     "spark.hadoop.fs.s3a.bucket.lake-silver.secret.key": "silver-secret",
                     "spark.hadoop.fs.s3a.bucket.lake-gold.access.key": "gold-access",
                     "spark.hadoop.fs.s3a.bucket.lake-gold.secret.key": "gold-secret"}
    assert all(k.endswith(_OFF_THE_COMMAND_LINE) for k in every)
    gold = s.acting_as("gold")
    assert [gold.s3_role_for(z) for z in ("bronze", "silver", "gold", "ops")] == [None, "gold", "gold", None]
    assert set(s3_keys(s.acting_as("reader")).values()) == {"reader-access", "reader-secret"}
    # one key for every role: any layout works; roles with different keys in one bucket: one line
    assert s3_keys(Settings.from_env(CREDS).acting_as("bronze", "silver"))["spark.hadoop.fs.s3a.access.key"] == "a"
    with pytest.raises(SettingsError, match="LAKEHOUSE_LAKE_LAYOUT=single keeps the lake in one bucket"):
        s3_keys(s.with_overrides(lake_layout="single").acting_as("bronze", "silver"))
    with pytest.raises(SettingsError, match="unknown S3 role 'writer'"):
        s.acting_as("writer")
    assert "bronze-secret" not in repr(s) + str(s.redacted())


def test_an_s3_refusal_is_named_by_its_path_and_the_role_that_was_refused():
    """S3A names a refused object by its key alone in some messages: the bucket is the one of the
    Spark path that key is under; the line names the role and the variable of its key."""
    from common.clients import s3_denied
    from common.streams import s3_denied_path

    text = ("org.apache.spark.SparkException: [TASK_WRITE_FAILED] Task failed while writing rows to "
            "s3a://lake-silver/team/silver/customers.\nCaused by: java.nio.file.AccessDeniedException: "
            "team/silver/customers/part-0.parquet: Writing Object on team/silver/customers/part-0.parquet: "
            "S3Exception: Access Denied. (Service: S3, Status Code: 403)")
    path = s3_denied_path(text)
    assert path == "s3a://lake-silver/team/silver/customers/part-0.parquet"
    assert s3_denied_path("java.nio.file.AccessDeniedException: s3a://lake-gold/t/x: getFileStatus") == "s3a://lake-gold/t/x"
    assert s3_denied_path("no refusal here") is None
    line = s3_denied(path, Settings.from_env(SPLIT).acting_as("customers"))
    assert "S3 role customers" in line and "LAKEHOUSE_S3_ACCESS_KEY_CUSTOMERS" in line and path in line
    assert "customers-access" not in line


def test_a_topic_scope_keeps_each_name_under_its_configured_one():
    s = Settings.from_env(CREDS).with_topic_scope("t1-case", lake_root="/data/lake")
    assert (s.topic_orders, s.topic_enriched, s.lake_root) == ("commandes-json.t1-case", "commandes-enrichies.t1-case",
                                                                "/data/lake")
    with pytest.raises(SettingsError, match="topic scope"):
        s.with_topic_scope("a b")


def test_interval_seconds():
    assert interval_seconds("5 minutes") == 300
    assert interval_seconds("500 ms") == 0.5
    assert interval_seconds("1 hour") == 3600


def test_cli_bad_setting_is_one_line_and_exit_2():
    env = {"PATH": "/usr/bin:/bin", "LAKEHOUSE_TRIGGER": "whenever", **CREDS}
    proc = subprocess.run([sys.executable, "-m", "app.cli", "config"], env=env, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert proc.stderr.startswith("error: LAKEHOUSE_TRIGGER='whenever' is not a trigger")


def test_kraft_cluster_ids_never_look_like_options():
    from devstack.stack import new_cluster_id

    ids = [new_cluster_id() for _ in range(5000)]  # ~1 in 64 raw ids starts with '-'
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("log_files, listed", [((), False), (("00000000000000000000.json",), True),
                                               (("00000000000000000010.checkpoint.parquet", "_last_checkpoint"), True),
                                               (("00000000000000000000.crc",), False)])
def test_a_table_is_listed_once_it_has_a_commit(tmp_path, log_files, listed):
    # another process's first commit under way: its _delta_log/ folder exists, nothing in it yet;
    # registering it then fails in Spark (DELTA_CREATE_EXTERNAL_TABLE_WITHOUT_TXN_LOG)
    from serving.catalog import list_tables
    from common.settings import Settings

    log_dir = tmp_path / "ops" / "pipeline_events_bronze" / "_delta_log"
    log_dir.mkdir(parents=True)
    for name in log_files:
        (log_dir / name).write_text("{}")
    found = list_tables(Settings(lake_root=str(tmp_path)))
    assert found["ops"] == (["pipeline_events_bronze"] if listed else [])
