"""``lakehouse dq``: validate the lake's current tables with the suites of data_quality.suites.

GE validates batch DataFrames (not streams): each table is read from Delta as it is now. A
report line per expectation says pass/fail and the observed value; failures list a few of the
offending rows. Data Docs (HTML) are written under ``.gx/`` (git-ignored).
"""

from __future__ import annotations

import copy
import contextlib
import io
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from serving.catalog import register_tables
from common.settings import OPS, Settings
from common.tables import is_delta_table
from common.text import align
from data_quality.suites import LAYERS

GX_ROOT = Path(__file__).resolve().parent.parent / ".gx"
ORDER = ("bronze", "silver", "gold", "reconciliation")


@dataclass
class Check:
    table: str
    expectation: str
    success: bool
    observed: str
    bad_rows: list = field(default_factory=list)


def _describe(cfg) -> str:
    kw = cfg.kwargs
    name = cfg.type
    description = getattr(cfg, "description", None) or (cfg.meta or {}).get("description")
    if description:
        return f"{name}: {description}"
    what = kw.get("column") or kw.get("column_list") or kw.get("description") or ""
    extra = ""
    if "value_set" in kw:
        extra = f" in {kw['value_set']}"
    elif "min_value" in kw or "max_value" in kw:
        extra = f" between {kw.get('min_value')} and {kw.get('max_value')}"
    return f"{name}({what}){extra}"


def _observed(res) -> tuple[str, list]:
    r = res.result or {}
    if "observed_value" in r:
        obs = r["observed_value"]
        rows = r.get("details", {}).get("unexpected_rows") if isinstance(r.get("details"), dict) else None
        # COMPLETE results carry every offending row; the report shows the first five
        return str(obs), list(rows or [])[:5]
    if "unexpected_count" in r:
        return (f"{r['unexpected_count']} unexpected of {r.get('element_count', '?')}",
                list(r.get("partial_unexpected_list") or [])[:5])
    return "-", []


def _exception(info) -> str:
    """The first exception message GE recorded for a result (its layout varies by expectation)."""
    stack = [info]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("exception_message"):
                return str(item["exception_message"]).splitlines()[0][:200]
            stack.extend(item.values())
        elif hasattr(item, "exception_message") and item.exception_message:
            return str(item.exception_message).splitlines()[0][:200]
    return "no result"


def validate(spark, settings: Settings, layers=ORDER, docs: bool = True) -> list[Check]:
    """Run the suites of ``layers``; GX's own prints (one per query without a ``{batch}``, by design
    for the reconciliation checks) are swallowed unless LAKEHOUSE_LOG_LEVEL=DEBUG."""
    with _gx_project():
        if settings.log_level == "DEBUG":
            return _validate(spark, settings, layers, docs)
        with contextlib.redirect_stdout(io.StringIO()):
            return _validate(spark, settings, layers, docs)


@contextlib.contextmanager
def _gx_project():
    """GX's project folder, for one validation at a time: GX rewrites ``great_expectations.yml`` in
    place (truncate, then write) on every change of its context, so two runs side by side (two
    `lakehouse dq`, or a test beside another) can leave it with every key twice, which the next
    run refuses to load (seen once in CI, 2026-12-05). An exclusive lock on ``.gx/lock`` (flock:
    released when the process ends, however it ends) serialises them."""
    import fcntl

    GX_ROOT.mkdir(parents=True, exist_ok=True)
    with open(GX_ROOT / "lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _validate(spark, settings: Settings, layers, docs: bool) -> list[Check]:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig
    from great_expectations.data_context.types.resource_identifiers import ExpectationSuiteIdentifier

    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # no network calls from CI
    register_tables(spark, settings)
    context = gx.get_context(mode="file", project_root_dir=str(GX_ROOT))
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    source = context.data_sources.add_or_update_spark(name="lake")
    checks: list[Check] = []
    rendered: list = []  # this run's results and their suites: Data Docs renders them once, at the end
    for layer in layers:
        for ts in LAYERS[layer](settings):
            label = f"{ts.layer}.{ts.table}" + (" (reconciliation)" if layer == "reconciliation" else "")
            path = settings.table_path(ts.layer, ts.table)
            if not is_delta_table(spark, path):
                checks.append(Check(label, "table exists", False, f"no Delta table at {path}"))
                continue
            name = f"{layer}-{ts.layer}-{ts.table}"
            try:
                asset = source.get_asset(name)
            except LookupError:
                asset = source.add_dataframe_asset(name=name)
            try:
                batch_def = asset.get_batch_definition("whole")
            except (KeyError, LookupError):
                batch_def = asset.add_batch_definition_whole_dataframe("whole")
            suite = context.suites.add_or_update(
                gx.ExpectationSuite(name=name, expectations=[copy.copy(e) for e in ts.expectations]))
            vd = context.validation_definitions.add_or_update(
                gx.ValidationDefinition(name=name, data=batch_def, suite=suite))
            cp = context.checkpoints.add_or_update(gx.Checkpoint(
                name=name, validation_definitions=[vd], result_format={"result_format": "COMPLETE"}, actions=[]))
            df = spark.read.format("delta").load(path)
            result = cp.run(batch_parameters={"dataframe": df})
            for result_id, run_result in result.run_results.items():
                rendered += [result_id, ExpectationSuiteIdentifier(name=run_result.suite_name)]
                for res in run_result.results:
                    observed, bad = _observed(res)
                    if not res.success and observed == "-":
                        observed = f"error: {_exception(res.exception_info)}"
                    checks.append(Check(label, _describe(res.expectation_config), bool(res.success), observed, bad))
    if docs and rendered:
        # one build for the run (as UpdateDataDocsAction does per checkpoint: this run's pages and the
        # index; an action per table rebuilt the index once per table)
        context.build_data_docs(resource_identifiers=rendered)
    if docs and docs_index().exists():  # styled and interactive offline too
        from data_quality.docs_assets import localize

        localize(docs_index().parent)
    return checks


def docs_index() -> Path:
    return GX_ROOT / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"


def report(checks: list[Check], elapsed: float, details: bool = False) -> list[str]:
    """The result first: one line per table (expectations, passed, failed) and the total; then every
    failed expectation with its offending rows; every expectation only with ``details``."""
    width = max([len(c.table) for c in checks] + [5])
    tables: dict[str, list[Check]] = {}
    for c in checks:
        tables.setdefault(c.table, []).append(c)
    summary = [["TABLE", "EXPECTATIONS", "PASSED", "FAILED"]]
    for table, cs in tables.items():
        bad = sum(1 for c in cs if not c.success)
        summary.append([table, str(len(cs)), str(len(cs) - bad), str(bad)])
    lines = align(summary, right=(1, 2, 3))
    failed = sum(1 for c in checks if not c.success)
    lines.append(f"{len(checks) - failed} passed, {failed} failed expectations in {elapsed:.1f}s"
                 + (f"; Data Docs: {docs_index()}" if docs_index().exists() else ""))
    shown = [c for c in checks if details or not c.success]
    if shown:
        lines += ["", f"{'TABLE':<{width}}  RESULT  EXPECTATION  ->  OBSERVED"]
    for c in shown:
        lines.append(f"{c.table:<{width}}  {'pass' if c.success else 'FAIL':<6}  {c.expectation}  ->  {c.observed}")
        for row in c.bad_rows if not c.success else []:
            lines.append(f"{'':<{width}}          bad row: {row}")
    return lines


RESULTS_TABLE = "dq_results"  # ops.dq_results: every expectation of every run, so quality over time is data
RESULTS_DDL = ("run_id string, run_at timestamp, layer string, table_name string, expectation string, "
               "success boolean, observed string")


def record(spark, settings: Settings, checks: list[Check]) -> str:
    """Append one row per expectation to ``ops.dq_results`` (one commit); returns the run's id.
    ``layer`` is the suite's layer (bronze, silver, gold, reconciliation)."""
    import uuid
    from datetime import datetime, timezone

    run_id, now = uuid.uuid4().hex[:12], datetime.now(timezone.utc)
    rows = [(run_id, now, "reconciliation" if c.table.endswith("(reconciliation)") else c.table.split(".", 1)[0],
             c.table.removesuffix(" (reconciliation)"), c.expectation, c.success, c.observed) for c in checks]
    spark.createDataFrame(rows, RESULTS_DDL).write.format("delta").mode("append").save(
        settings.table_path(OPS, RESULTS_TABLE))
    return run_id


def run_dq(spark, settings: Settings, layer: str = "all", details: bool = False) -> int:
    layers = ORDER if layer == "all" else (layer,)
    t0 = time.monotonic()
    checks = validate(spark, settings, layers)
    print("\n".join(report(checks, time.monotonic() - t0, details)), flush=True)
    record(spark, settings, checks)
    return 0 if all(c.success for c in checks) else 1
