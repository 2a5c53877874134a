"""Exactly-once publication of ``gold_orders``' micro-batches to Kafka (``commandes-enrichies``).

Spark's Kafka sink writes at least once (a batch replayed after a crash is sent again; its
exactly-once mode was proposed upstream and closed). Kafka has transactions, so each
micro-batch is published here, from the driver, as one Kafka transaction:

* the producer's ``transactional.id`` is ``lakehouse:<flow>:<the checkpoint's query id>``: the same
  for every restart of the query on that checkpoint, so a restarted driver's
  ``init_transactions`` fences the producer of the driver before it (a paused "zombie" then fails
  to commit) and aborts the transaction it left open;
* the batch id is committed in the same transaction as the messages: ``send_offsets_to_transaction``
  commits, for the ledger group ``lakehouse-ledger:<flow>:<query id>``, the offset batch id + 1 on
  the topic's partition 0. The ledger thus holds the next batch to publish, and moves only if the
  messages are committed;
* a run reads the ledger once, after ``init_transactions`` (so no transaction of an earlier driver
  is still open), and skips any batch below it: a batch replayed after a crash that came after its
  transaction committed is not sent again; one whose transaction did not commit is sent again, and
  the aborted copy is never seen by a ``read_committed`` consumer.

The Delta append of the batch (``gold.orders_enriched``, exactly once by its commit tag) comes
first, the transaction after it: a message is visible only once its order is in the table.
Every crash point then replays into the same result: before the append, both are written; between
the append and the commit, the append is skipped and the messages are sent again; after the commit,
both are skipped. A consumer must read with ``isolation.level=read_committed`` (Kafka's default
is ``read_uncommitted``, which also returns the records of aborted transactions).

Each message carries the header ``lakehouse.batch`` (the micro-batch id). Kafka drops a group's
committed offsets ``offsets.retention.minutes`` (7 days by default) after its last commit: a
query stopped for longer whose last batch crashed between the commit and the checkpoint would
send that one batch again.
"""

from __future__ import annotations

import logging
import time

from common.errors import CheckpointError
from common.settings import Settings

log = logging.getLogger("lakehouse.gold")

# An open transaction of a dead driver blocks read_committed consumers of the topic until the next
# driver fences it or the broker aborts it: at most this long (Kafka's default: 60 s).
TRANSACTION_TIMEOUT_MS = 20_000
LEDGER_PARTITION = 0  # the topic partition whose committed offset, in the ledger group, is the ledger
BATCH_HEADER = "lakehouse.batch"


class PublicationFencedError(CheckpointError):
    """Another driver publishes for the same checkpoint: this one was fenced (its transactions fail)."""


def fenced(error: BaseException) -> bool:
    """``error`` says a newer producer with the same transactional id fenced this one. kafka-python
    raises the fencing itself (at the commit), or a ``KafkaError`` that carries it (a ``send`` after
    the sender thread saw it: "Cannot perform send because ... failed", the fencing as its second
    argument) or names it (a transactional call in the error state): which one depends on when the
    broker's answer arrives."""
    from kafka.errors import ProducerFencedError

    return (isinstance(error, ProducerFencedError) or any(isinstance(a, ProducerFencedError) for a in error.args)
            or ProducerFencedError.__name__ in str(error))


class Publisher:
    """One query's transactional producer for one run (``publish`` per micro-batch, ``close`` at
    the run's end)."""

    def __init__(self, settings: Settings, topic: str, flow: str, query_id: str):
        self.settings, self.topic, self.flow = settings, topic, flow
        self.transactional_id = f"lakehouse:{flow}:{query_id}"
        self.ledger_group = f"lakehouse-ledger:{flow}:{query_id}"
        self._producer = None
        self._next: int | None = None  # the ledger: the next batch id to publish

    def _start(self) -> None:
        from common.clients import kafka_producer

        producer = kafka_producer(self.settings, f"lakehouse-{self.flow}", role="gold",
                                  transactional_id=self.transactional_id,
                                  transaction_timeout_ms=TRANSACTION_TIMEOUT_MS, acks="all",
                                  linger_ms=5, batch_size=256 * 1024)
        try:
            producer.init_transactions()  # fences an earlier driver; its open transaction is aborted
            self._next = self._read_ledger()
        except BaseException:
            producer.close(timeout=5)
            raise
        self._producer = producer
        log.info("%s publishes to %s in transactions (%s), from batch %d on", self.flow, self.topic,
                 self.transactional_id, self._next)

    def _read_ledger(self) -> int:
        """The next batch id to publish: the ledger group's committed offset (0 if none)."""
        from kafka import TopicPartition

        from common.clients import kafka_consumer

        consumer = kafka_consumer(self.settings, f"lakehouse-{self.flow}-ledger", role="gold", group_id=self.ledger_group,
                                  isolation_level="read_committed")
        try:
            committed = consumer.committed(TopicPartition(self.topic, LEDGER_PARTITION), timeout_ms=30_000)
        finally:
            consumer.close()
        return 0 if committed is None or committed < 0 else committed

    def pending(self, batch_id: int) -> bool:
        """``batch_id`` is not yet published (the first call of a run reads the ledger)."""
        if self._producer is None:
            self._start()
        return batch_id >= self._next

    def publish(self, batch_id: int, records: list[tuple[str | None, str]]) -> int:
        """Publish the batch's ``(key, value)`` records in one transaction, with the ledger moved to
        ``batch_id + 1``; nothing when the ledger says the batch is already published (a replay).
        Returns the number of records sent."""
        from kafka import TopicPartition
        from kafka.errors import KafkaError
        from kafka.structs import OffsetAndMetadata

        if not self.pending(batch_id):
            log.info("%s batch %d: already published to %s (a replay after a restart), not sent again",
                     self.flow, batch_id, self.topic)
            return 0
        if not records:  # nothing to say: no transaction (a replay of it publishes nothing either)
            return 0
        producer, header = self._producer, [(BATCH_HEADER, str(batch_id).encode())]
        started = time.monotonic()
        try:
            producer.begin_transaction()
            futures = [producer.send(self.topic, key=None if k is None else k.encode(), value=v.encode(),
                                     headers=header) for k, v in records]
            producer.flush()
            for f in futures:  # a record that failed fails the transaction: never commit without it
                f.get(timeout=0)
            producer.send_offsets_to_transaction(
                {TopicPartition(self.topic, LEDGER_PARTITION): OffsetAndMetadata(batch_id + 1, f"batch {batch_id}", -1)},
                self.ledger_group)
            self._commit()
        except KafkaError as e:
            if not fenced(e):
                self._abort()
                raise
            self._discard()
            raise PublicationFencedError(
                f"{self.flow}: another driver now publishes for this checkpoint (transactional id "
                f"{self.transactional_id}); this one was fenced and stops") from None
        self._next = batch_id + 1
        log.debug("%s batch %d: %d records published in %.0f ms", self.flow, batch_id, len(records),
                  (time.monotonic() - started) * 1000)
        return len(records)

    def _commit(self) -> None:
        self._producer.commit_transaction()

    def _abort(self) -> None:
        try:
            self._producer.abort_transaction()
        except Exception as e:  # noqa: BLE001 - a fatal state: the producer goes, the batch fails anyway
            log.debug("%s: transaction not aborted (%s); the producer is closed", self.flow, e)
            self._discard()

    def _discard(self) -> None:
        producer, self._producer, self._next = self._producer, None, None
        if producer is not None:
            try:
                producer.close(timeout=5)
            except Exception as e:  # noqa: BLE001
                log.debug("%s: producer not closed cleanly: %s", self.flow, e)

    def close(self) -> None:
        """The run ends: the producer closed (no transaction is open between two batches)."""
        self._discard()
