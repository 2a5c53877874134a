"""The pipeline's vocabulary: its stages, and ``Flow``, one streaming query of the declared
dataflow graph - its sources, sinks, checkpoint, the settings its state depends on, and the stage
function that builds it. The graph itself is declared on top of the house (``app.dataflow``);
the stages receive their flows from the runner and never look them up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from common.errors import SettingsError
from common.settings import SOURCE_KINDS, Settings

STAGES = ("bronze", "silver", "gold")
SILVER_KINDS = SOURCE_KINDS  # silver parses each source into its own table
SOURCE_OF_TABLE = {"orders": "orders", "order_items": "orders", "logs": "logs", "metrics": "metrics"}  # silver table -> source


@dataclass(frozen=True)
class Flow:
    """One streaming query of the pipeline."""

    name: str                    # query name (Spark UI, logs, commit tag prefix)
    stage: str                   # bronze | silver | gold
    sources: tuple[str, ...]     # "kafka:<topic>" or "<layer>.<table>"
    sinks: tuple[str, ...]       # "<layer>.<table>" or "kafka:<topic>"
    checkpoint: str              # its own checkpoint folder
    signature: tuple[tuple[str, object], ...] = field(default=())  # settings its state/results depend on
    stateful: bool = False
    trigger: str | None = None   # its own live trigger; None: the run's (a one-shot run drains every query)
    # the stage's function that starts its queries: build(spark, settings, options, flows) -> [query]
    # (one call per stage, with all of the stage's flows: gold's two queries share their sources)
    build: Callable | None = field(default=None, compare=False, repr=False)

    @property
    def tables(self) -> tuple[str, ...]:
        """The Delta tables this query writes (``layer.table``)."""
        return tuple(s for s in self.sinks if not s.startswith("kafka:"))

    def sink_paths(self, settings: Settings) -> dict[str, str]:
        """``layer.table`` -> path, for every Delta table this query writes."""
        return {t: table_path(settings, t) for t in self.tables}

    def signature_dict(self) -> dict:
        return {"query": self.name, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in self.signature}}


def resolve_stages(name: str) -> tuple[str, ...]:
    if name == "all":
        return STAGES
    if name not in STAGES:
        raise SettingsError(f"unknown stage {name!r}; valid: {', '.join(STAGES)}, all")
    return (name,)


def table_path(settings: Settings, sink: str) -> str:
    layer, table = sink.split(".", 1)
    return settings.table_path(layer, table)
