"""The soak's one-pass oracle agrees with the tests' oracle on the same ledger (no stack needed:
the generator's records get made-up coordinates)."""

from __future__ import annotations

import json

import pytest

from common.settings import Settings
from devstack.generator import GenOptions, generate
from tests.oracle import GoldOracle, RunningOracle, SilverOracle

KPI_NAMES = ("customer_order_kpis", "customer_minute_totals", "product_sales", "log_level_counts", "module_stats",
             "host_metrics")


def test_running_oracle_equals_the_gold_oracle(tmp_path):
    settings = Settings.from_env()
    opts = GenOptions(topics=settings.source_topics, count=400, rate=5.0, seed=9, duplicate_pct=10, late_pct=5,
                      malformed_pct=5, first_order_id=1, progress=False)
    ledger, offsets = [], {}
    for topic, rec in generate(settings, opts):
        offsets[topic] = offsets.get(topic, -1) + 1
        ledger.append({**rec, "topic": topic, "partition": 0, "offset": offsets[topic]})
    late = {(r["topic"], 0, r["offset"]) for r in ledger if r["fault"] == "late"}
    late = set(sorted(late)[::2])  # some of the generator's late records were found late, others not
    path = tmp_path / "ledger.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ledger))

    silver = SilverOracle(ledger, settings, late)
    gold = GoldOracle(silver, settings)
    running = RunningOracle(settings, late).feed_file(path)
    assert running.late_not_late == []
    for kind in ("orders", "logs", "metrics"):
        assert running.valid[kind] == silver.valid_count(kind) > 0
        assert running.duplicates[kind] == silver.duplicates(kind)
        assert running.malformed[kind] == sum(1 for r in silver.records(kind) if (r["fault"] or "").startswith("malformed"))
    assert running.items == len(silver.items())
    for name in KPI_NAMES:
        want, got = getattr(gold, name)(), running.gold(name)
        assert set(got) == set(want) and want, name
        for k, v in want.items():
            assert got[k] == pytest.approx(v, abs=1e-9), (name, k)
