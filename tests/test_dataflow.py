"""The graph binds: a run of the whole pipeline writes exactly the tables the graph declares (each
query's sinks, each stage's event log, and the customer table a command loads), and a stage's
write to a table its flow does not declare is refused."""

from __future__ import annotations

import pytest

from app import dataflow
from common.pipeline import STAGES, Flow, Table
from serving.catalog import list_tables

# on the lake the pipeline filled once (tests/conftest.py), beside its other readers
pytestmark = [pytest.mark.stack, pytest.mark.xdist_group("gx")]


def test_a_run_writes_exactly_the_declared_tables(pipeline_lake):
    from data_quality.runner import RESULTS_TABLE

    graph = dataflow.graph(pipeline_lake)
    declared = {str(t) for f in graph for t in f.tables} | {str(f.event_log) for f in graph}
    declared |= {str(t) for t in dataflow.LOADED}
    assert {str(f.event_log) for f in graph} == {f"ops.pipeline_events_{s}" for s in STAGES}
    written = {f"{layer}.{name}" for layer, names in list_tables(pipeline_lake).items() for name in names}
    # the data-quality tests beside this one may have recorded their results in the same lake
    assert written - {f"ops.{RESULTS_TABLE}"} == declared


def test_a_write_to_an_undeclared_table_is_refused(spark, lake):
    from common.batches import BatchContext
    from common.run import RunContext

    flow = Flow("probe", "gold", (), (Table("gold", "probe"),), "")
    ctx = BatchContext(flow, RunContext(spark, lake), query_id="q1", new_checkpoint=True)
    assert ctx.path("gold.probe") == lake.table_path("gold", "probe")
    with pytest.raises(ValueError, match=r"query probe writes silver.orders, which its flow does not declare"):
        ctx.append(spark.createDataFrame([(1,)], "x int"), "silver.orders", 0)
