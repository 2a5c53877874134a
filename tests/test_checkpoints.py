"""A stage started on a new checkpoint over an existing lake loses nothing and doubles nothing.

Before the fix (issue 11): bronze on a new checkpoint re-read Kafka from `earliest` and appended
every record again (600 rows for 400 offsets); silver's idempotent writes were keyed to the query
*name*, so Delta took the new checkpoint's batch 0 for a replay and skipped it (silver stayed at
the first 200 orders); every command exited 0.
"""

from __future__ import annotations

import pytest

from common import pipeline
from common.errors import CheckpointError
from common.runner import reset, run
from tests.checks import _coords, _ledger_coords, check_gold, check_silver_against_ledger
from tests.helpers import produce_to

pytestmark = pytest.mark.stack


def test_new_checkpoint_resumes_bronze_and_refuses_then_rebuilds_silver(spark, lake, tmp_path):
    ledger_path = tmp_path / "ledger.jsonl"
    produce_to(lake, ledger_path, 200, seed=301, topics=[lake.topic_orders])
    run(("bronze", "silver"), lake, "availableNow", spark=spark)
    moved = lake.with_overrides(checkpoint_root=f"{lake.lake_root}/_checkpoints_moved")
    ledger = produce_to(lake, ledger_path, 200, seed=302, topics=[lake.topic_orders])

    run(("bronze",), moved, "availableNow", spark=spark)
    got = _coords(spark, lake)  # asserts that no coordinates are there twice
    assert set(got) == set(_ledger_coords(ledger)) and len(got) == 400

    with pytest.raises(CheckpointError, match=r"silver has a new checkpoint .* silver\.\w+ already holds "
                                              r"rows .*lakehouse reset silver"):
        run(("silver",), moved, "availableNow", spark=spark)
    assert not spark.streams.active

    deleted = reset(spark, moved, "silver")
    assert pipeline.flow(moved, "silver").checkpoint in deleted
    assert lake.table_path("gold", "orders_enriched") in deleted  # what follows silver goes too
    assert not any("/bronze/" in p for p in deleted)  # bronze is never part of a later stage's reset
    run(("silver", "gold"), moved, "availableNow", spark=spark)
    check_silver_against_ledger(spark, moved, ledger)
    check_gold(spark, moved, ledger)
