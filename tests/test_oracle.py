"""The soak's one-pass oracle agrees with the tests' oracle on the same ledger (no stack needed:
the generator's records get made-up coordinates); the replay of silver's micro-batches that
``tests.checks.check_late`` compares silver.late_records with, on hand-made batches."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest

from common.settings import Settings
from devstack.generator import GenOptions, generate
from tests.oracle import GoldOracle, RunningOracle, SilverOracle, late_mismatch, replay_lateness

KPI_NAMES = ("customer_order_kpis", "customer_minute_totals", "product_sales", "log_level_counts", "module_stats",
             "host_metrics")


def test_running_oracle_equals_the_gold_oracle(tmp_path):
    settings = Settings.from_env()
    opts = GenOptions(topics=settings.source_topics, count=400, rate=5.0, seed=9, duplicate_pct=10, late_pct=5,
                      malformed_pct=5, first_order_id=1, progress=False)
    ledger, offsets = [], {}
    for topic, rec in generate(settings, opts):
        offsets[topic] = offsets.get(topic, -1) + 1
        ledger.append({**rec, "topic": topic, "partition": 0, "offset": offsets[topic]})
    late = {(r["topic"], 0, r["offset"]) for r in ledger if r["fault"] == "late"}
    late = set(sorted(late)[::2])  # some of the generator's late records were found late, others not
    path = tmp_path / "ledger.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ledger))

    silver = SilverOracle(ledger, settings, late)
    gold = GoldOracle(silver, settings)
    running = RunningOracle(settings, late).feed_file(path)
    assert running.late_not_late == []
    for kind in ("orders", "logs", "metrics"):
        assert running.valid[kind] == silver.valid_count(kind) > 0
        assert running.duplicates[kind] == silver.duplicates(kind)
        assert running.malformed[kind] == sum(1 for r in silver.records(kind) if (r["fault"] or "").startswith("malformed"))
    assert running.items == len(silver.items())
    for name in KPI_NAMES:
        want, got = getattr(gold, name)(), running.gold(name)
        assert set(got) == set(want) and want, name
        for k, v in want.items():
            assert got[k] == pytest.approx(v, abs=1e-9), (name, k)


# replay_lateness: hand-made ledgers, each record's micro-batch given -------------------------------
KIND_OF = {"o": "orders", "l": "logs", "m": "metrics"}
DELAYS = {"orders": 300.0, "logs": 120.0, "metrics": 60.0}  # the default LAKEHOUSE_WATERMARK_* (seconds)
T0 = datetime(2026, 1, 18, 10, 0)


class Lake:
    """A ledger and the micro-batch silver read each record in, built record by record."""

    def __init__(self):
        self.ledger, self.batch_of, self.next = [], {}, {}

    def send(self, topic, at, batch=None, fault=None, key=None, offset=None):
        """One record of ``topic`` with event time ``at`` (a datetime, or seconds after T0); ``key``
        its natural key's distinguishing part (default: unique); ``batch`` None: in no silver table."""
        at = at if isinstance(at, datetime) else T0 + timedelta(seconds=at)
        ts = at.isoformat(timespec="microseconds")
        off = self.next.get(topic, 0) if offset is None else offset
        self.next[topic] = off + 1
        key = off if key is None else key
        payload = {"o": {"order_id": key, "timestamp": ts}, "l": {"request_id": f"r{key}", "timestamp": ts,
                                                                 "level": "INFO", "module": "auth"},
                   "m": {"host": f"h{key}", "timestamp": ts}}[topic]
        value = json.dumps(payload) if not (fault or "").startswith("malformed") else json.dumps(payload)[:9]
        self.ledger.append({"topic": topic, "partition": 0, "offset": off, "key": None, "value": value,
                            "fault": fault})
        if batch is not None:
            self.batch_of[(topic, 0, off)] = batch
        return (topic, 0, off)

    def replay(self):
        return replay_lateness(self.ledger, self.batch_of, KIND_OF, DELAYS)


def _ms(at: datetime) -> int:
    from datetime import timezone

    return int(at.replace(tzinfo=timezone.utc).timestamp() * 1000)


def _event_time_scenario(behind_batch: int):
    """tests/test_event_time.py's scenario: batch 0 at 10:00:00-29; batch 1 at 11:00:00-19 and five
    late records of 10:30:20-24; then ten late records of 10:30:30-39 in ``behind_batch``; then
    11:01:00-09 in the batch after."""
    lake = Lake()
    for i in range(30):
        lake.send("o", i, batch=0)
    for i in range(20):
        lake.send("o", 3600 + i, batch=1)
    early = {lake.send("o", 1820 + i, batch=1, fault="late") for i in range(5)}
    behind = {lake.send("o", 1830 + i, batch=behind_batch, fault="late") for i in range(10)}
    for i in range(10):
        lake.send("o", 3660 + i, batch=behind_batch + 1)
    return lake, early, behind


def test_each_batch_is_judged_by_the_watermark_the_batches_before_it_left():
    lake, early, behind = _event_time_scenario(behind_batch=2)
    replay = lake.replay()
    assert replay.late == behind  # the five early ones came while the watermark was 10:00:29 - 5 min
    wm = {b: w["orders"] for (_, b), w in replay.watermarks.items()}
    assert wm == {0: None, 1: _ms(T0 + timedelta(seconds=29 - 300)), 2: _ms(T0 + timedelta(seconds=3619 - 300)),
                  3: _ms(T0 + timedelta(seconds=3619 - 300))}
    assert all(w["logs"] is None and w["metrics"] is None for w in replay.watermarks.values())
    assert late_mismatch(replay, set(behind)) == ""

    # the same records, the ten behind ones read in the batch of 11:00:00-19: judged by batch 0, on time
    same, _, _ = _event_time_scenario(behind_batch=1)
    assert same.replay().late == set()


def test_a_silver_that_marks_nothing_late_or_too_much_is_caught():
    lake, early, behind = _event_time_scenario(behind_batch=2)
    replay = lake.replay()
    nothing = late_mismatch(replay, set())
    assert "10 late records missing" in nothing and "('o', 0, 55) orders batch 2" in nothing, nothing
    assert "event time 2026-01-18T10:30:30.000 at or behind its watermark 2026-01-18T10:55:19.000" in nothing
    assert "wrongly" not in nothing
    too_much = late_mismatch(replay, behind | early, {c: _ms(T0) for c in behind | early})
    assert "5 records wrongly in it" in too_much and "missing" not in too_much, too_much
    assert "('o', 0, 50) orders batch 1: event time 2026-01-18T10:30:20.000 after its watermark " \
           "2026-01-18T09:55:29.000 (silver recorded watermark 2026-01-18T10:00:00.000)" in too_much
    stray = late_mismatch(replay, behind | {("o", 0, 999)})
    assert "('o', 0, 999): not a valid record of the ledger" in stray
    half = late_mismatch(replay, set(sorted(behind)[:4]) | {sorted(early)[0]})
    assert "6 late records missing" in half and "1 records wrongly in it" in half


def test_at_the_watermark_is_late_per_source_and_only_valid_records_move_it():
    lake = Lake()
    lake.send("o", 600, batch=0)                                         # orders' watermark: 10:05 (600 s - 300)
    lake.send("m", 7200, batch=0)                                        # metrics far ahead: not the orders'
    lake.send("o", 7200, batch=0, fault="malformed:not_json")            # quarantined: moves nothing
    at = lake.send("o", 300, batch=1, fault="late")                      # exactly at it: late (<=)
    after = lake.send("o", 300.001, batch=1, fault="late")               # a millisecond after: on time
    metric = lake.send("m", 7140, batch=1, fault="late")                 # at 7200 - 60: late by its own delay
    log = lake.send("l", 0, batch=1, fault="late")                       # logs' first record: no watermark yet
    replay = lake.replay()
    assert replay.late == {at, metric}
    assert replay.watermarks[("", 1)] == {"orders": _ms(T0 + timedelta(seconds=300)), "logs": None,
                                          "metrics": _ms(T0 + timedelta(seconds=7140))}
    assert after not in replay.late and log not in replay.late


def test_the_maximum_is_kept_in_whole_milliseconds_as_silver_keeps_it():
    lake = Lake()
    lake.send("o", T0 + timedelta(seconds=600, microseconds=999), batch=0)  # counts as 10:10:00.000
    on_time = lake.send("o", T0 + timedelta(seconds=300, microseconds=999), batch=1, fault="late")
    late = lake.send("o", T0 + timedelta(seconds=300), batch=1, fault="late")
    assert lake.replay().late == {late}
    assert on_time not in lake.replay().late


def test_dropped_copies_need_no_batch_a_late_copy_is_late_and_a_lost_record_fails():
    lake = Lake()
    first = lake.send("o", 0, batch=0, key=1)
    lake.send("o", 3600, batch=0, key=2)
    dropped = lake.send("o", 0, fault="duplicate", key=1)                # dropped by the dedup operator
    late_copy = lake.send("o", 0, batch=1, fault="duplicate", key=1)     # re-sent once the operator forgot it
    replay = lake.replay()
    assert replay.dropped == {dropped} and replay.late == {late_copy} and first not in replay.late
    assert dropped not in replay.batch

    lake.send("o", 3601, key=3)  # valid, in no batch and a copy of nothing: silver lost it
    with pytest.raises(AssertionError, match=r"1 valid records of the ledger are in no silver table .*\('o', 0, 4\)"):
        lake.replay()


def test_a_new_checkpoint_starts_its_event_clock_empty():
    lake = Lake()
    lake.send("o", 3600, batch=("silver:q1", 0))
    lake.send("o", 0, batch=("silver:q1", 1))                            # behind q1's 11:00 - 5 min: late
    fresh = lake.send("o", 0, batch=("silver:q2", 0))                    # q2's first batch: no watermark
    later = lake.send("o", 1, batch=("silver:q2", 1))                    # q2's watermark: 10:00:00 - 5 min
    replay = lake.replay()
    assert replay.late == {("o", 0, 1)}
    assert fresh not in replay.late and later not in replay.late
    assert replay.watermarks[("silver:q2", 1)]["orders"] == _ms(T0 - timedelta(seconds=300))
    assert "batch 1 of silver:q1" in late_mismatch(replay, set())
