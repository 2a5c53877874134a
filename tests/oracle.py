"""An independent, plain-Python recomputation of what silver (and gold) must contain,
from the generator's ledger alone."""

from __future__ import annotations

import json

MALFORMED_REASON = {
    "orders": {"truncated_json": "malformed_json", "not_json": "malformed_json", "wrong_type": "wrong_type:total",
               "missing_field": "missing_field:order_id", "negative_quantity": "quantity_not_positive"},
    "logs": {"truncated_json": "malformed_json", "not_json": "malformed_json",
             "wrong_type": "wrong_type:duration_ms", "missing_field": "missing_field:level"},
    "metrics": {"truncated_json": "malformed_json", "not_json": "malformed_json",
                "wrong_type": "wrong_type:cpu_percent", "missing_field": "missing_field:host"},
}


def coords(rec: dict) -> tuple:
    return rec["topic"], rec["partition"], rec["offset"]


class SilverOracle:
    def __init__(self, ledger: list[dict], settings):
        self.kind_of = {settings.topic_orders: "orders", settings.topic_logs: "logs",
                        settings.topic_metrics: "metrics"}
        self.ledger = [r for r in ledger if r["topic"] in self.kind_of]

    def records(self, kind: str) -> list[dict]:
        return [r for r in self.ledger if self.kind_of[r["topic"]] == kind]

    def valid_orders(self) -> dict[int, dict]:
        """order_id -> payload of every valid, on-time order (a duplicate counts once)."""
        out = {}
        for r in self.records("orders"):
            if r["fault"] in (None, "duplicate"):
                o = json.loads(r["value"])
                out.setdefault(o["order_id"], o)
        return out

    def items(self) -> set[tuple]:
        return {(o["order_id"], line, it["product_id"], it["quantity"], round(it["subtotal"], 2))
                for o in self.valid_orders().values() for line, it in enumerate(o["items"], 1)}

    def quarantine(self) -> dict[tuple, str]:
        """coordinates -> expected reason, for every malformed record."""
        out = {}
        for r in self.ledger:
            if (r["fault"] or "").startswith("malformed:"):
                out[coords(r)] = MALFORMED_REASON[self.kind_of[r["topic"]]][r["fault"].split(":", 1)[1]]
        return out

    def late(self) -> set[tuple]:
        return {coords(r) for r in self.ledger if r["fault"] == "late"}

    def duplicates(self, kind: str) -> int:
        return sum(1 for r in self.records(kind) if r["fault"] == "duplicate")

    def valid_count(self, kind: str) -> int:
        if kind == "orders":
            return len(self.valid_orders())
        return sum(1 for r in self.records(kind) if r["fault"] is None)
