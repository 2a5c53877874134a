"""The pipeline's vocabulary: its stages, the references of its sources and sinks (``Table``,
``Topic``), and ``Flow``, one streaming query of the declared dataflow graph - its sources,
sinks, checkpoint, the settings its state depends on, the event log it reports to, and the stage
function that builds it. The graph itself is declared on top of the house (``app.dataflow``);
the stages receive their flows from the runner and never look them up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Union

from common import eventlog
from common.errors import SettingsError
from common.settings import OPS, SOURCE_KINDS, Settings

STAGES = ("bronze", "silver", "gold")
SILVER_KINDS = SOURCE_KINDS  # silver parses each source into its own table
SOURCE_OF_TABLE = {"orders": "orders", "order_items": "orders", "logs": "logs", "metrics": "metrics"}  # silver table -> source


@dataclass(frozen=True)
class Table:
    """A Delta table of the lake: ``layer.name`` (``bronze.commandes_json``, ``gold.orders_enriched``)."""

    layer: str
    name: str

    def __str__(self) -> str:
        return f"{self.layer}.{self.name}"

    def path(self, settings: Settings) -> str:
        return settings.table_path(self.layer, self.name)

    @classmethod
    def parse(cls, text: str) -> "Table":
        layer, _, name = text.partition(".")
        if not layer or not name:
            raise SettingsError(f"{text!r} is not a table (layer.table)")
        return cls(layer, name)


@dataclass(frozen=True)
class Topic:
    """A Kafka topic."""

    name: str

    def __str__(self) -> str:
        return f"kafka:{self.name}"


Ref = Union[Table, Topic]


@dataclass(frozen=True)
class Flow:
    """One streaming query of the pipeline."""

    name: str                    # query name (Spark UI, logs, commit tag prefix)
    stage: str                   # bronze | silver | gold
    sources: tuple[Ref, ...]     # the streams it reads (one source each in its checkpoint)
    sinks: tuple[Ref, ...]       # everything it writes, and nothing else (``batches.BatchContext``)
    checkpoint: str              # its own checkpoint folder
    signature: tuple[tuple[str, object], ...] = field(default=())  # settings its state/results depend on
    stateful: bool = False
    lookups: tuple[Table, ...] = ()  # tables read whole at every micro-batch (a stream-static join)
    trigger: str | None = None   # its own live trigger; None: the run's (a one-shot run drains every query)
    # the stage's function that builds its queries: build(run, flows) -> [streams.QuerySpec], which
    # the runner starts (one call per stage, with all of the stage's flows: gold's two queries share
    # their sources)
    build: Callable | None = field(default=None, compare=False, repr=False)

    @property
    def tables(self) -> tuple[Table, ...]:
        """The Delta tables this query writes."""
        return tuple(s for s in self.sinks if isinstance(s, Table))

    @property
    def topics_read(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.sources if isinstance(s, Topic))

    @property
    def topics_written(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.sinks if isinstance(s, Topic))

    @property
    def event_log(self) -> Table:
        """The table its micro-batches are logged to (``common.eventlog``): one per stage."""
        return Table(OPS, eventlog.table_name(self.stage))

    def sink_paths(self, settings: Settings) -> dict[str, str]:
        """``layer.table`` -> path, for every Delta table this query writes."""
        return {str(t): t.path(settings) for t in self.tables}

    def signature_dict(self) -> dict:
        return {"query": self.name, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in self.signature}}


def resolve_stages(name: str) -> tuple[str, ...]:
    if name == "all":
        return STAGES
    if name not in STAGES:
        raise SettingsError(f"unknown stage {name!r}; valid: {', '.join(STAGES)}, all")
    return (name,)
