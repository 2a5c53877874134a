"""Great Expectations suites: pass on the pipeline's output, fail on targeted corruptions,
and agree with silver's in-stream verdicts (one rule declaration, three enforcements)."""

from __future__ import annotations

import pytest
from pyspark.sql import functions as F

from data_quality.runner import report, validate
from silver import transforms as T
from silver.rules import rules_for
from tests.conftest import isolated_settings
from tests.helpers import lakehouse
from tests.test_silver_transforms import _bronze, _item, order

# GX keeps its suites and Data Docs in one folder (.gx/): its users share one worker of make test
pytestmark = [pytest.mark.stack, pytest.mark.xdist_group("gx")]


def test_all_suites_pass_on_pipeline_output(spark, pipeline_lake):
    checks = validate(spark, pipeline_lake, docs=True)
    failed = [c for c in checks if not c.success]
    assert not failed, "\n".join(report(failed, 0))
    tables = {c.table for c in checks}
    bronze_orders = f"bronze.{pipeline_lake.bronze_table_for(pipeline_lake.topic_orders)}"
    assert {bronze_orders, "silver.orders", "silver.order_items", "gold.customer_order_kpis",
            "gold.product_sales", "silver.rule_outcomes (reconciliation)"} <= tables
    assert len(checks) > 60
    # Data Docs work offline: no page loads a stylesheet or script from the internet, and every
    # local copy it links to is there
    import re

    from data_quality.runner import docs_index

    pages = list(docs_index().parent.rglob("*.html"))
    assert len(pages) > 5
    linked = 0
    for page in pages:
        text = page.read_text()
        assert not re.search(r'(src|href)="https?://[^"]+\.(css|js)"', text), page
        assert "cdn.jsdelivr.net/npm/vega" not in text, page
        for ref in re.findall(r'(?:src|href)="([^"]*static/vendor/[^"]+)"', text):
            assert (page.parent / ref).is_file(), (page, ref)
            linked += 1
    assert linked > len(pages)


def _table_name(settings, layer, table):
    return settings.bronze_table_for(settings.topic_orders) if layer == "bronze" else table


def _corrupt_copy(spark, src, base_settings, name, layer, table, bad_rows_sql):
    """A copy of ``layer.table`` in a scratch lake, plus the rows ``bad_rows_sql`` selects."""
    target = isolated_settings(base_settings, name)
    df = spark.read.format("delta").load(src.table_path(layer, _table_name(src, layer, table)))
    df.createOrReplaceTempView("src")
    df.unionByName(spark.sql(bad_rows_sql)).write.format("delta").save(
        target.table_path(layer, _table_name(target, layer, table)))
    return target


@pytest.mark.parametrize("layer,table,bad_sql,expectation", [
    ("bronze", "commandes_json", "SELECT * FROM src LIMIT 1", "expect_compound_columns_to_be_unique"),
    ("silver", "order_items", "SELECT order_id, line + 1000 AS line, customer_id, event_time, product_id, product_name, "
     "-quantity AS quantity, unit_price, -subtotal AS subtotal, _rescued_data, topic, partition, "
     "offset + 100000 AS offset, kafka_timestamp FROM src LIMIT 1", "rule quantity_not_positive"),
    # a producer's new field in half the rows: more than LAKEHOUSE_RESCUED_MAX_PCT (5 %)
    ("silver", "logs", "SELECT * EXCEPT (offset, _rescued_data), offset + 100000 AS offset, "
     "'{\"trace_id\":\"abc\"}' AS _rescued_data FROM src", "_rescued_data"),
    ("gold", "customer_order_kpis", "SELECT window_end AS window_start, window_start AS window_end, customer_id, "
     "nb_commandes, total_ventes, max_commande FROM src LIMIT 1", "window_end > window_start"),
])
def test_each_suite_fails_on_a_targeted_corruption(spark, base_settings, pipeline_lake, layer, table, bad_sql,
                                                   expectation, capfd):
    from serving.native import NativeLake

    bad = _corrupt_copy(spark, pipeline_lake, base_settings, f"dq-bad-{layer}-{table}", layer, table, bad_sql)
    label = f"{layer}.{_table_name(bad, layer, table)}"
    # the command (one validation): non-zero exit, a line naming the expectation, and the bad row
    proc = lakehouse(bad, "dq", "--layer", layer, capfd=capfd)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "FAIL" in proc.stdout and expectation in proc.stdout, proc.stdout
    # the offending rows are the corrupt table's (the scratch lake's other tables of the layer are
    # missing: their one check, "table exists", fails without rows)
    shown = proc.stdout.splitlines()
    fail_lines = [i for i, line in enumerate(shown) if line.startswith(label + " ") and " FAIL " in line]
    assert fail_lines and shown[fail_lines[0] + 1].lstrip().startswith("bad row:"), proc.stdout
    # what it recorded (ops.dq_results): the corrupt table failed the targeted expectation, and only it
    checks = [r for r in NativeLake(bad).rows("ops.dq_results") if r["table_name"] == label]
    failed = [r for r in checks if not r["success"]]
    assert failed and all(expectation in r["expectation"] for r in failed), checks


def test_rule_verdicts_agree_in_stream_and_in_ge(spark, base_settings):
    import great_expectations as gx

    from data_quality.suites import rule_expectations

    values = [order(order_id=i, items=[it], total=it["subtotal"]) for i, it in enumerate([
        _item(), _item(quantity=-1, subtotal=-349.99), _item(unit_price=0.0, subtotal=0.0),
        _item(subtotal=1.0), _item(quantity=0, subtotal=0.0), _item(quantity=3, subtotal=1049.97)])]
    classified = T.classify(_bronze(spark, values), "orders", 300).filter("route IS NOT NULL")
    in_stream = {r.name: classified.filter(F.col(f"rule_{r.name}")).count() for r in rules_for("order_items")}
    assert in_stream == {"quantity_not_positive": 2, "unit_price_not_positive": 1, "subtotal_mismatch": 1}
    items = T.to_order_items(classified.filter("reason IS NULL OR reason IN ('quantity_not_positive', "
                                               "'unit_price_not_positive', 'subtotal_mismatch')"))
    context = gx.get_context(mode="ephemeral")
    batch = (context.data_sources.add_spark("probe").add_dataframe_asset("items")
             .add_batch_definition_whole_dataframe("all").get_batch(batch_parameters={"dataframe": items}))
    in_ge = {}
    for exp in rule_expectations("order_items"):
        res = batch.validate(exp)
        in_ge[exp.description.split(":")[0].removeprefix("rule ")] = res.result["observed_value"]
    assert in_ge == in_stream
