"""The warm standby's warm-up (issue 38): the pipeline's code paths run on scratch data, and
nothing of it reaches the real lake or Kafka."""

from __future__ import annotations

import os

import pytest
from pyspark.sql import functions as F

from tests.helpers import read_topic


def test_the_warm_up_runs_silver_and_gold_on_a_scratch_lake_and_writes_nothing_real(lake, spark, tmp_path):
    """``warm_up_in`` (what ``run all --standby`` does before it waits): two rounds of made-up
    records through silver and gold on a lake in a temporary folder. Gold ran all of its paths (the
    enrichment, the KPIs' closed windows of the first round once the second moved the watermark,
    the open ones) and its KPIs add up to silver's orders; gold_orders built its payload and sent
    nothing: the topic it publishes to holds no record (not even an aborted one), and the lake of
    the settings it was given has no table."""
    from app.standby import warm_up_in
    from common.fs import Fs

    scratch = warm_up_in(spark, lake, str(tmp_path), stages=("bronze", "silver", "gold"), records=60)

    def table(layer: str, name: str):
        return spark.read.format("delta").load(scratch.table_path(layer, name))

    orders = table("silver", "orders").count()
    assert orders > 0
    assert table("gold", "orders_enriched").count() == orders
    closed, still_open = table("gold", "customer_minute_totals"), table("gold", "customer_minute_totals_open")
    assert closed.count() > 0 and still_open.count() > 0  # the first round's windows closed, the second's open
    counted = [df.agg(F.sum("nb_commandes")).first()[0] for df in (closed, still_open)]
    assert sum(counted) == orders

    assert read_topic(lake, lake.topic_enriched, committed=False) == []
    fs = Fs(spark)
    assert not any(fs.has_children(lake.zone_root(layer)) for layer in ("bronze", "silver", "gold", "ops"))


def test_a_standby_builds_its_queries_before_the_takeover_and_writes_nothing_until_then(lake, spark, tmp_path, capsys):
    """``app.runner.prepare`` (what ``run all --standby`` does once warm): each stage's queries are
    built on the real lake while another driver owns it, changing nothing (no table, no checkpoint,
    no commit); a stage whose tables are not ready, those reading its tables, and a stage whose
    checkpoint is new are left to the takeover. Started at the takeover, the prepared queries carry
    on exactly where the checkpoints left off: the pipeline equals the ledger. A silver checkpoint
    whose restored watermark would bind its dedup clocks makes the takeover build silver again; a
    source table whose schema changed since fails the query's first batch before it writes, in the
    way the runner restarts (``streams.schema_changed``)."""
    from app import dataflow
    from app.runner import _start_stage, _still_valid, prepare, run
    from common import streams
    from common.fs import Fs
    from common.run import RunContext
    from common.tables import snapshot
    from silver import customers
    from silver.job import _restored_watermark_binds
    from tests.checks import check_pipeline
    from tests.helpers import produce_to, read_ledger

    stages = ("bronze", "silver", "gold")
    options = streams.StreamOptions.from_args(lake, "availableNow", None)
    fs = Fs(spark)

    def lake_state() -> dict:
        """Every table's version and every checkpoint's offsets and commits."""
        state = {}
        for f in dataflow.graph(lake):
            state.update({p: snapshot(spark, p).version() for p in f.sink_paths(lake).values()})
            state.update({f"{f.checkpoint}/{d}": sorted(fs.list_names(f"{f.checkpoint}/{d}"))
                          for d in ("offsets", "commits")})
        return state

    def prepared_on(settings) -> dict:
        ctx = RunContext.open(spark, settings, options)
        try:
            return prepare(ctx, stages)
        finally:
            ctx.close()

    # a new lake: new checkpoints, no tables: nothing is built ahead, nothing is created
    assert prepared_on(lake) == {}
    assert not any(fs.has_children(lake.zone_root(layer)) for layer in ("bronze", "silver", "gold"))

    ledger_path = tmp_path / "ledger.jsonl"
    customers.load(spark, lake)
    produce_to(lake, ledger_path, 80, seed=71, duplicate_pct=10, late_pct=5, malformed_pct=5)
    run(stages, lake, "availableNow", spark=spark)  # the active driver's work so far
    produce_to(lake, ledger_path, 60, seed=72, duplicate_pct=10, late_pct=5, malformed_pct=5)

    # a bronze table made by an "earlier version" (without its statistics property): bronze is left
    # to the takeover, which sets it, and so are silver and gold, which read what bronze writes
    bronze_table = lake.table_path("bronze", lake.bronze_table_for(lake.topic_logs))
    spark.sql(f"ALTER TABLE delta.`{bronze_table}` UNSET TBLPROPERTIES ('delta.dataSkippingStatsColumns')")
    before = lake_state()
    assert prepared_on(lake) == {}
    assert lake_state() == before
    spark.sql(f"ALTER TABLE delta.`{bronze_table}` SET TBLPROPERTIES ('delta.dataSkippingStatsColumns' = 'partition,offset')")

    before = lake_state()
    capsys.readouterr()  # (the first run's start lines)
    ctx = RunContext.open(spark, lake, options)
    started: list = []
    try:
        prepared = prepare(ctx, stages)
        assert {s.name for p in prepared.values() for s in p.specs} == {"bronze", "silver", "gold_orders", "gold_kpis"}
        assert lake_state() == before  # nothing written while standing by
        for stage in stages:  # the takeover
            queries = _start_stage(ctx, stage, prepared[stage])
            started += queries
            streams.await_all(spark, queries)
    finally:
        ctx.close(started)
    started_lines = [line for line in capsys.readouterr().err.splitlines() if line.strip().startswith("started ")]
    assert len(started_lines) == 4 and all("built while standing by" in line for line in started_lines)
    check_pipeline(spark, lake, read_ledger(ledger_path))

    # silver's checkpoint moved on since: its watermark does not bind the clocks, still valid ...
    silver_flows = dataflow.flows(lake, "silver")
    assert _still_valid(ctx, silver_flows, prepared["silver"])
    # ... unless the standby's delays are longer than the checkpoint's (a longer horizon)
    assert _restored_watermark_binds(spark, lake.with_overrides(watermark_orders="60 minutes"), silver_flows[0], 0)

    # a column added to silver.orders after gold's queries were built (the active driver's silver,
    # set to addNewColumns): their first batch fails before writing anything, in the way the
    # runner restarts a query with the table's new schema; built again, gold carries on
    ctx = RunContext.open(spark, lake, options)
    try:
        stale_gold = prepare(ctx, ("gold",))["gold"]
    finally:
        ctx.close()
    spark.sql(f"ALTER TABLE delta.`{lake.table_path('silver', 'orders')}` ADD COLUMNS (channel STRING)")
    produce_to(lake, ledger_path, 30, seed=73, duplicate_pct=10, late_pct=5, malformed_pct=5)
    run(("bronze", "silver"), lake, "availableNow", spark=spark)
    gold_before = {t: snapshot(spark, lake.table_path("gold", t)).version() for t in ("orders_enriched", "product_sales")}
    ctx = RunContext.open(spark, lake, options)
    queries = streams.start_all(ctx, stale_gold.specs)
    try:
        for q in queries:
            try:
                q.awaitTermination()
            except Exception:  # noqa: BLE001 - read below
                pass
    finally:
        ctx.close(queries)
    failures = [q.exception() for q in queries if q.exception() is not None]
    assert failures and all(streams.schema_changed(e) for e in failures), failures
    assert {t: snapshot(spark, lake.table_path("gold", t)).version() for t in gold_before} == gold_before
    run(("gold",), lake, "availableNow", spark=spark)
    check_pipeline(spark, lake, read_ledger(ledger_path))


def test_the_takeover_gives_the_priority_back_to_the_driver_jvm_s_child_processes_too(spark):
    """PySpark's worker daemon and its workers are children of the JVM, forked while a standby
    warms up at +10; ``restore_priority`` (the takeover) gives them the driver's priority back with
    the process and its JVM, or the active driver's Python work runs at the standby's priority."""
    from app.standby import WARM_NICE, _descendants, restore_priority

    before = os.getpriority(os.PRIO_PROCESS, 0)
    child = spark._jvm.java.lang.Runtime.getRuntime().exec("sleep 120")  # a child of the JVM, as the daemon is
    try:
        pid = int(child.pid())
        assert pid in _descendants(int(spark._jvm.ProcessHandle.current().pid()))
        os.setpriority(os.PRIO_PROCESS, pid, before + WARM_NICE)
        assert os.getpriority(os.PRIO_PROCESS, pid) == before + WARM_NICE
        try:
            os.setpriority(os.PRIO_PROCESS, pid, before)  # can this user raise a priority back at all?
        except PermissionError:
            pytest.skip("raising a priority back needs CAP_SYS_NICE or RLIMIT_NICE here")
        os.setpriority(os.PRIO_PROCESS, pid, before + WARM_NICE)
        restore_priority(spark, (before, None))
        assert os.getpriority(os.PRIO_PROCESS, pid) == before
    finally:
        child.destroy()
