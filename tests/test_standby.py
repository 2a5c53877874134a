"""The warm standby's warm-up (issue 38): the pipeline's code paths run on scratch data, and
nothing of it reaches the real lake or Kafka."""

from __future__ import annotations

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
