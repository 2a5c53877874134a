"""The one declaration of silver's validation rules.

Each rule is written once, as a Spark SQL predicate that holds for a valid row, and is
enforced in three places:

1. in-stream by silver (``silver.transforms.classify``) with its action - ``warn`` (count only),
   ``drop`` (discard, counted), ``quarantine`` (row goes to ``silver.quarantine`` with the rule's
   reason) or ``fail`` (stop the stream);
2. as a Delta ``CHECK`` constraint on the silver table, when ``constraint`` is true (rows that
   break it can never be written, whatever writes the table);
3. as a Great Expectations expectation over the silver table (``data_quality``), when its
   predicate only uses columns the table keeps (``on_table``; ``total_mismatch`` needs the
   order's items and is enforced in-stream, while GE checks the items' subtotals instead).

Item-level predicates are written with ``{i}`` before each item field: silver's order-level
check evaluates them for every item of an order (``forall(items, i -> ...)``), the
``order_items`` table and the expectations evaluate them on item rows (``{i}`` = "").
"""

from __future__ import annotations

from dataclasses import dataclass

ACTIONS = ("warn", "drop", "quarantine", "fail")
ORDER_STATUSES = ("created", "paid", "shipped", "delivered", "cancelled")
LOG_LEVELS = ("INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class Rule:
    name: str            # also the quarantine reason
    table: str           # silver table the rule is about: orders | order_items | logs | metrics
    predicate: str       # Spark SQL, true for a valid row
    action: str = "quarantine"
    constraint: bool = True  # also a Delta CHECK constraint on the table
    description: str = ""
    on_table: bool = True    # the predicate only uses columns the silver table keeps (else: in-stream only)

    def __post_init__(self):
        if self.action not in ACTIONS:
            raise ValueError(f"rule {self.name}: action {self.action!r} not in {ACTIONS}")

    def sql(self, item_prefix: str = "") -> str:
        return self.predicate.format(i=item_prefix)

    @property
    def on_items(self) -> bool:
        return "{i}" in self.predicate


def _in(values) -> str:
    return ", ".join(f"'{v}'" for v in values)


RULES: tuple[Rule, ...] = (
    Rule("quantity_not_positive", "order_items", "{i}quantity > 0", description="quantity > 0"),
    Rule("unit_price_not_positive", "order_items", "{i}unit_price > 0", description="unit_price > 0"),
    Rule("subtotal_mismatch", "order_items", "abs({i}subtotal - {i}quantity * {i}unit_price) <= 0.01",
         description="subtotal = quantity x unit_price within a cent"),
    Rule("no_items", "orders", "item_count > 0", description="an order has at least one item"),
    Rule("total_mismatch", "orders", "abs(total - items_total) <= 0.01", constraint=False, on_table=False,
         description="total = sum of subtotals within a cent"),
    Rule("unknown_status", "orders", f"status IN ({_in(ORDER_STATUSES)})", description="known status"),
    Rule("unknown_level", "logs", f"level IN ({_in(LOG_LEVELS)})", description="level in INFO/WARNING/ERROR"),
    Rule("negative_duration", "logs", "duration_ms IS NULL OR duration_ms >= 0", description="duration_ms >= 0"),
    Rule("percent_out_of_range", "metrics",
         "cpu_percent BETWEEN 0 AND 100 AND memory_percent BETWEEN 0 AND 100 AND disk_percent BETWEEN 0 AND 100",
         description="percentages within 0-100"),
    Rule("negative_response_time", "metrics", "response_time_ms >= 0", action="warn", constraint=False,
         description="response_time_ms >= 0"),
)


def rules_for(table: str) -> tuple[Rule, ...]:
    return tuple(r for r in RULES if r.table == table)


def record_rules(kind: str) -> tuple[Rule, ...]:
    """Rules checked on a parsed record of source ``kind`` (orders also check their items)."""
    if kind == "orders":
        return rules_for("order_items") + rules_for("orders")
    return rules_for(kind)


def record_predicate(rule: Rule) -> str:
    """The predicate as evaluated on one parsed source record (items via forall)."""
    if rule.on_items:
        return f"forall(items, i -> {rule.sql('i.')})"
    return rule.sql()
