"""The pipeline as a declared graph: every streaming query, its sources, sinks and checkpoint.

This is the one place that says which queries exist. ``lakehouse run`` starts them, ``lakehouse
plan`` prints them, the checkpoint guards read their signatures, the bench and the tests name
them from here. A stage's job (``bronze/job.py`` ...) only supplies, per query, the DataFrame and
the ``foreachBatch`` function; it never invents a query name or a checkpoint path.

The topology (8 queries; each ``foreachBatch`` writes several tables, each write idempotent with
Delta's ``txnAppId`` = the checkpoint's own query id + table, ``txnVersion`` = the batch id):

* ``bronze``            Kafka (all source topics)  -> one bronze table per topic;
* ``silver_<kind>``     bronze.<topic>             -> silver.<kind> (+ order_items), quarantine,
                                                      late_records, rule_outcomes  (one per kind:
                                                      each has its own event-time watermark);
* ``gold_<source>``     silver.<source>            -> its KPI tables (additive MERGE of the batch's
                                                      partial aggregates), and for orders the
                                                      enriched table and ``commandes-enrichies``.

Spark Declarative Pipelines builds the same kind of graph from decorated functions; here the
declaration is data, so it can be printed and checked without starting a stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.errors import SettingsError
from common.settings import Settings

STAGES = ("bronze", "silver", "gold")
SILVER_KINDS = ("orders", "logs", "metrics")


@dataclass(frozen=True)
class Flow:
    """One streaming query of the pipeline."""

    name: str                    # query name (Spark UI, logs, txnAppId prefix)
    stage: str                   # bronze | silver | gold
    sources: tuple[str, ...]     # "kafka:<topic>" or "<layer>.<table>"
    sinks: tuple[str, ...]       # "<layer>.<table>" or "kafka:<topic>"
    checkpoint: str              # its own checkpoint folder
    signature: tuple[tuple[str, object], ...] = field(default=())  # settings its state/results depend on
    stateful: bool = False

    @property
    def tables(self) -> tuple[str, ...]:
        """The Delta tables this query writes (``layer.table``)."""
        return tuple(s for s in self.sinks if not s.startswith("kafka:"))

    def signature_dict(self) -> dict:
        return {"query": self.name, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in self.signature}}


def _bronze(s: Settings) -> tuple[Flow, ...]:
    return (Flow("bronze", "bronze", tuple(f"kafka:{t}" for t in s.source_topics),
                 tuple(f"bronze.{s.bronze_table_for(t)}" for t in s.source_topics),
                 s.checkpoint_path("bronze", "kafka"), (("topics", s.source_topics),)),)


def silver_topic(s: Settings, kind: str) -> str:
    return {"orders": s.topic_orders, "logs": s.topic_logs, "metrics": s.topic_metrics}[kind]


def watermark(s: Settings, kind: str) -> str:
    return {"orders": s.watermark_orders, "logs": s.watermark_logs, "metrics": s.watermark_metrics}[kind]


def _silver(s: Settings) -> tuple[Flow, ...]:
    from silver.transforms import dedup_columns

    flows = []
    for kind in SILVER_KINDS:
        topic = silver_topic(s, kind)
        main = ("silver.orders", "silver.order_items") if kind == "orders" else (f"silver.{kind}",)
        flows.append(Flow(f"silver_{kind}", "silver", (f"bronze.{s.bronze_table_for(topic)}",),
                          main + ("silver.quarantine", "silver.late_records", "silver.rule_outcomes"),
                          s.checkpoint_path("silver", kind),
                          (("source", topic), ("dedup_key", dedup_columns(kind)),
                           (f"watermark_{kind}", watermark(s, kind))), stateful=True))
    return tuple(flows)


def _gold(s: Settings) -> tuple[Flow, ...]:
    from gold.transforms import kpis_of

    flows = []
    for source in ("orders", "order_items", "logs", "metrics"):
        kpis = kpis_of(source)
        sinks = tuple(f"gold.{k.name}" for k in kpis)
        if source == "orders":
            sinks += ("gold.orders_enriched", f"kafka:{s.topic_enriched}")
        signature = tuple((f"{k.name}_window", " sliding ".join(w for w in k.window_spec(s) if w)) for k in kpis)
        flows.append(Flow(f"gold_{source}", "gold", (f"silver.{source}",), sinks,
                          s.checkpoint_path("gold", source), signature))
    return tuple(flows)


def graph(settings: Settings) -> tuple[Flow, ...]:
    """Every query of the pipeline, in dependency order."""
    return _bronze(settings) + _silver(settings) + _gold(settings)


def flows(settings: Settings, stage: str) -> tuple[Flow, ...]:
    return tuple(f for f in graph(settings) if f.stage == stage)


def flow(settings: Settings, name: str) -> Flow:
    for f in graph(settings):
        if f.name == name:
            return f
    raise SettingsError(f"unknown query {name!r}; valid: {', '.join(f.name for f in graph(settings))}")


def resolve_stages(name: str) -> tuple[str, ...]:
    if name == "all":
        return STAGES
    if name not in STAGES:
        raise SettingsError(f"unknown stage {name!r}; valid: {', '.join(STAGES)}, all")
    return (name,)


def downstream(settings: Settings, stage: str) -> tuple[Flow, ...]:
    """The queries of ``stage`` and of every stage after it (what a rebuild of ``stage`` redoes)."""
    after = STAGES[STAGES.index(stage):]
    return tuple(f for f in graph(settings) if f.stage in after)


def table_path(settings: Settings, sink: str) -> str:
    layer, table = sink.split(".", 1)
    return settings.table_path(layer, table)


def describe(settings: Settings) -> list[str]:
    """The graph as text: one block per query (``lakehouse plan``)."""
    lines = []
    for f in graph(settings):
        lines.append(f"{f.name}  [{f.stage}{', stateful' if f.stateful else ''}]")
        lines.append(f"    reads       {', '.join(f.sources)}")
        lines.append(f"    writes      {', '.join(f.sinks)}")
        lines.append(f"    checkpoint  {f.checkpoint}")
        if f.signature:
            lines.append("    depends on  " + "; ".join(f"{k}={v if not isinstance(v, tuple) else ','.join(map(str, v))}"
                                                        for k, v in f.signature))
    return lines
