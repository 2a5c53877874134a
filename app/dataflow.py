"""The pipeline as a declared dataflow graph: every streaming query, its sources, sinks, checkpoint
and the stage function that builds it (``Flow.build``).

This is the one place that says which queries exist. ``lakehouse run`` starts them, ``lakehouse
plan`` prints them, the checkpoint guards read their signatures, the bench and the tests name
them from here. The runner hands each stage's ``queries`` (``bronze/job.py`` ...) the run (``common.run``) and its
flows; the stage supplies, per query, the DataFrame and the ``foreachBatch`` function (a
``streams.QuerySpec``; the runner starts them), and writes
exactly the flow's declared sinks (``batches.BatchContext`` refuses any other table); it never
invents a query name, a table or a checkpoint path. Each stage logs its batches to its own event
log table (``Flow.event_log``); the customer dimension is the one table a command writes
(``LOADED``).

The topology: one query per stage (gold: two), each reading all of its sources (a union) and writing all of
its tables from one ``foreachBatch``, each commit tagged with the checkpoint's own query id + table
and the batch id, so a replayed batch is skipped (``batches.BatchContext``):

* ``bronze``  Kafka (every source topic)  -> one bronze table per topic;
* ``silver``  the three bronze tables     -> silver.orders, order_items, logs, metrics,
                                             quarantine, late_records, rule_outcomes (each source
                                             keeps its own watermark and dedup state);
* ``gold_orders``  silver.orders         -> orders_enriched and ``commandes-enrichies`` (the
                                             latency path: a plain append and a Kafka write);
* ``gold_kpis``    the four silver tables -> the six KPI tables, one final row per window once
                                             silver's watermark has passed it, and their open
                                             windows (``<kpi>_open``), on their own trigger, so they
                                             do not hold the enriched orders back.

Fixed cost per micro-batch (trigger, planning, commits) is what limits a streaming pipeline on a
small machine, so fewer queries and fewer commits per batch buy more than faster code.

Spark Declarative Pipelines builds the same kind of graph from decorated functions; here the
declaration is data, so it can be printed and checked without starting a stream.
"""

from __future__ import annotations

import bronze.job
import gold.job
import silver.job
import silver.transforms
from common.errors import SettingsError
from common.pipeline import SILVER_KINDS, STAGES, Flow, Table, Topic
from common.settings import Settings
from gold.transforms import KPIS, OPEN_SUFFIX
from gold.transforms import SOURCES as GOLD_SOURCES


def _bronze(s: Settings) -> tuple[Flow, ...]:
    return (Flow("bronze", "bronze", tuple(Topic(t) for t in s.source_topics),
                 tuple(Table("bronze", s.bronze_table_for(t)) for t in s.source_topics),
                 s.checkpoint_path("bronze", "kafka"), (("topics", s.source_topics),), build=bronze.job.queries),)


def _silver(s: Settings) -> tuple[Flow, ...]:
    signature: list[tuple[str, object]] = []
    for kind in SILVER_KINDS:
        # (the key silver dedupes by, looked up at each call: the signature follows the code)
        signature += [(f"source_{kind}", s.source(kind).topic),
                      (f"dedup_key_{kind}", silver.transforms.dedup_columns(kind)),
                      (f"watermark_{kind}", s.source(kind).watermark)]
    return (Flow("silver", "silver", tuple(Table("bronze", s.source(k).bronze_table) for k in SILVER_KINDS),
                 tuple(Table("silver", t) for t in silver.job.TABLES),
                 s.checkpoint_path("silver", "bronze"), tuple(signature), stateful=True, build=silver.job.queries),)


def _gold(s: Settings) -> tuple[Flow, ...]:
    signature = tuple((f"{k.name}_window", " sliding ".join(w for w in k.window_spec(s) if w)) for k in KPIS)
    # the KPI tables' layout: "final" (one row per closed window, its open windows apart); a
    # checkpoint of the layout before it (partial rows per micro-batch) is refused, with how to rebuild
    signature += (("kpi_tables", "final"),)
    return (Flow("gold_orders", "gold", (Table("silver", "orders"),),
                 (Table("gold", "orders_enriched"), Topic(s.topic_enriched)),
                 s.checkpoint_path("gold", "orders"), lookups=(CUSTOMERS,), build=gold.job.queries),
            Flow("gold_kpis", "gold", tuple(Table("silver", t) for t in GOLD_SOURCES),
                 tuple(Table("gold", n) for k in KPIS for n in (k.name, k.name + OPEN_SUFFIX)),
                 s.checkpoint_path("gold", "kpis"), signature, trigger=s.kpi_trigger, build=gold.job.queries))


# Tables no streaming query writes: the customer dimension, loaded by `lakehouse customers load`
# (``silver.customers.load``) and read by gold_orders at every micro-batch.
CUSTOMERS = Table("silver", "customers")
LOADED = (CUSTOMERS,)


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


def downstream(settings: Settings, stage: str) -> tuple[Flow, ...]:
    """The queries of ``stage`` and of every stage after it (what a rebuild of ``stage`` redoes)."""
    after = STAGES[STAGES.index(stage):]
    return tuple(f for f in graph(settings) if f.stage in after)


def describe(settings: Settings) -> list[str]:
    """The graph as text: one block per query (``lakehouse plan``)."""
    lines = []
    for f in graph(settings):
        lines.append(f"{f.name}  [{f.stage}{', stateful' if f.stateful else ''}]")
        lines.append(f"    reads       {', '.join(map(str, f.sources))}")
        if f.lookups:
            lines.append(f"    joins       {', '.join(map(str, f.lookups))} (read at every batch)")
        lines.append(f"    writes      {', '.join(map(str, f.sinks))}")
        lines.append(f"    logs to     {f.event_log}")
        lines.append(f"    checkpoint  {f.checkpoint}")
        if f.trigger:
            lines.append(f"    trigger     {f.trigger} (live runs)")
        if f.signature:
            lines.append("    depends on  " + "; ".join(f"{k}={v if not isinstance(v, tuple) else ','.join(map(str, v))}"
                                                        for k, v in f.signature))
    lines.append("loaded by a command, not by a query:")
    lines += [f"    {t}  (lakehouse customers load)" for t in LOADED]
    return lines
