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
