"""Where a test run's time went, from its JUnit report (``make test`` writes ``reports/junit.xml``).

    python -m tests.durations [reports/junit.xml] [--top 10] [--markdown]

prints the slowest tests, the time per test file and the totals; ``.ci/run`` prints it at the
end of every CI run, and README's test section shows the ``--markdown`` form of the latest one.
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path


def cases(report: Path) -> list[tuple[str, str, float, str]]:
    """(file, test, seconds, outcome) of every test case in the report (set-up and tear-down of
    its fixtures included, as pytest's JUnit report counts them)."""
    out = []
    for case in ET.parse(report).getroot().iter("testcase"):
        module = case.get("classname", "")
        path = module.replace(".", "/") + ".py"
        outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
        out.append((path, case.get("name", ""), float(case.get("time") or 0), outcome))
    return out


def summary(report: Path, top: int = 10, markdown: bool = False) -> list[str]:
    found = cases(report)
    if not found:
        return [f"{report}: no test case"]
    total = sum(t for _, _, t, _ in found)
    outcomes: dict[str, int] = defaultdict(int)
    per_file: dict[str, float] = defaultdict(float)
    for path, _, t, outcome in found:
        outcomes[outcome] += 1
        per_file[path] += t
    slowest = sorted(found, key=lambda c: -c[2])[:top]
    counts = ", ".join(f"{n} {o}" for o, n in sorted(outcomes.items()))
    if markdown:
        lines = [f"{len(found)} tests ({counts}), {total / 60:.1f} min of test time", "",
                 "| test | seconds |", "| --- | ---: |"]
        lines += [f"| `{p}::{n}` | {t:.1f} |" for p, n, t, _ in slowest]
        return lines
    lines = [f"{len(found)} tests ({counts}); {total:.0f} s in tests ({total / 60:.1f} min)",
             f"the {len(slowest)} slowest:"]
    lines += [f"  {t:7.1f} s  {p}::{n}" for p, n, t, _ in slowest]
    lines.append("per file:")
    lines += [f"  {t:7.1f} s  {p}" for p, t in sorted(per_file.items(), key=lambda kv: -kv[1])]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.durations", description=__doc__.splitlines()[0])
    p.add_argument("report", nargs="?", default="reports/junit.xml")
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--markdown", action="store_true", help="the README table's form")
    args = p.parse_args(argv)
    report = Path(args.report)
    if not report.is_file():
        print(f"error: no JUnit report at {report} (make test writes reports/junit.xml)", file=sys.stderr)
        return 2
    print("\n".join(summary(report, args.top, args.markdown)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
