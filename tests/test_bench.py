"""The benchmark's own bookkeeping (no stack, no Spark)."""

from __future__ import annotations

from bench.run import add_run_table


def test_a_run_table_goes_at_the_end_of_the_runs_section(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# Bench\n\n## Runs\n\n### run 1\n| a |\n\n## Later notes\n\ntext\n")
    add_run_table(readme, "\n### run 2\n| b |\n")
    assert readme.read_text() == ("# Bench\n\n## Runs\n\n### run 1\n| a |\n\n### run 2\n| b |\n"
                                  "\n## Later notes\n\ntext\n")
    add_run_table(tmp_path / "NEW.md", "### run 1\n")  # no Runs section: at the end
    assert (tmp_path / "NEW.md").read_text() == "### run 1\n"


def test_p7_judges_only_after_twice_the_longest_watermark_delay():
    """P7 (bench/p7.py, issue 35): a dedup key lives 2 x its source's delay, so the measured phase
    starts only once the state holds a full set of keys."""
    from bench.p7 import warmup_minutes
    from common.settings import Settings

    s = Settings.from_env({"LAKEHOUSE_LAKE_ROOT": "/tmp/p7"})
    assert warmup_minutes(s) == 10.0  # orders' 5 minutes
    assert warmup_minutes(s.with_overrides(watermark_logs="7 minutes")) == 14.0


def test_a_process_tree_s_cpu_keeps_what_its_ended_children_used():
    """``bench.measure.cpu_seconds`` counts a child that ended and was waited for (its parent's
    cutime): the total never drops when a child of the tree exits."""
    import os
    import subprocess
    import sys

    from bench.measure import cpu_seconds

    before = cpu_seconds(os.getpid())
    child = subprocess.run([sys.executable, "-c", "import time\nt = time.process_time()\n"
                            "while time.process_time() - t < 0.5: pass"], check=True)
    assert child.returncode == 0
    assert cpu_seconds(os.getpid()) - before >= 0.4  # the child's 0.5 s, gone from /proc, still counted


def test_the_first_batch_after_a_kill_is_each_query_s_earliest_that_began_after_it():
    from datetime import datetime, timezone

    from bench.run import describe_first, first_batches

    def at(s):  # a naive UTC timestamp, as the lake returns it
        return datetime.fromtimestamp(1000 + s, timezone.utc).replace(tzinfo=None)

    rows = [
        {"query": "silver", "batch_id": 4, "started_at": at(-5), "ended_at": at(-1), "input_rows": 10,
         "durations": '{"addBatch": 3000}'},  # before the kill
        {"query": "silver", "batch_id": 6, "started_at": at(20), "ended_at": at(25), "input_rows": 30,
         "durations": None},
        {"query": "silver", "batch_id": 5, "started_at": at(4.4), "ended_at": at(20.7), "input_rows": 2918,
         "durations": '{"addBatch": 12285, "queryPlanning": 1658, "getBatch": 1382, "walCommit": 0, '
                      '"triggerExecution": 16229}'},
        {"query": "gold_kpis", "batch_id": 2, "started_at": at(-30), "ended_at": at(-20), "input_rows": 5,
         "durations": "{}"},
        {"query": "bronze", "batch_id": 9, "started_at": at(2), "ended_at": None, "input_rows": 1, "durations": "{}"},
    ]
    firsts = first_batches(rows, 1000.0)
    assert firsts["gold_kpis"] is None and firsts["bronze"] is None  # none since; one not ended
    assert firsts["silver"] == {"batch": 5, "rows": 2918, "began_s": 4.4, "ended_s": 20.7,
                                "durations_ms": {"addBatch": 12285, "queryPlanning": 1658, "getBatch": 1382,
                                                 "triggerExecution": 16229}}
    assert describe_first("silver", firsts["silver"]) == ("silver batch 5 (2918 rows) 4.4 -> 20.7 "
                                                          "(addBatch 12.3, queryPlanning 1.7, getBatch 1.4)")
    assert describe_first("gold_kpis", None) == "gold_kpis none"
