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
