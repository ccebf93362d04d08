"""A schema registry outage holds the partition at the record, with doubles at the loop's seams.

Before: a registry that did not answer was asked 3 times, 1 s apart, inside the poll loop, then the
record was dead-lettered (``UnknownSchemaId``): an outage blocked the loop 2 s per record and filled
the dead-letter topic with records nothing was wrong with.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from consumer.decode import SCHEMA_JSON, Decoder
from consumer.delivery import intake as intake_module
from consumer.delivery.pipeline import Pipeline
from consumer.devstack.events import confluent_frame, encode, spec_example_event
from consumer.errors import RegistryUnavailable
from tests.unit.test_pipeline_loop import TOPIC, Loop


class Registry:
    def __init__(self) -> None:
        self.up = False
        self.asked = 0

    def __call__(self, schema_id: int) -> Any:
        self.asked += 1
        if not self.up:
            raise RegistryUnavailable(f"the schema registry did not answer for schema id {schema_id}: ConnectError")
        return SCHEMA_JSON


def event(instance_id: int) -> bytes:
    return encode({**spec_example_event(), "instance_id": instance_id})


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Loop, Registry]]:
    monkeypatch.setattr(intake_module, "REGISTRY_HOLD_S", 0.2)
    loop = Loop(start=False)
    registry = Registry()
    loop.p = Pipeline(loop.p.settings, consumer_factory=loop._consumer, producer=loop.producer,
                      erp_transport=loop.erp.transport(), decoder=Decoder(writer_schema_lookup=registry))
    loop.consumers[:] = loop.consumers[-1:]
    loop.p.start()
    yield loop, registry
    loop.close()


def test_a_registry_outage_holds_the_partition_at_the_record_and_dead_letters_nothing(
        held: tuple[Loop, Registry]) -> None:
    loop, registry = held
    loop.cluster.append(TOPIC, 0, event(1), key=b"a")
    loop.cluster.append(TOPIC, 0, confluent_frame(1, event(2)), key=b"b")  # needs the registry
    loop.cluster.append(TOPIC, 0, event(3), key=b"c")  # behind it: waits (the commit cannot pass 2 anyway)
    loop.cluster.append(TOPIC, 1, event(4), key=b"d")  # another partition: goes on
    loop.consumer.assign([(TOPIC, 0), (TOPIC, 1)])
    loop.until(lambda: sorted(loop.erp.accepted) == [1, 4], what="the others delivered")
    loop.steps(0.7)  # the registry is asked again every 0.2 s, and still does not answer
    assert sorted(loop.erp.accepted) == [1, 4] and registry.asked >= 3
    assert loop.producer.written == []  # no dead letter
    assert loop.consumer.committed_offsets().get((TOPIC, 0)) == 1  # never past the held record
    registry.up = True
    loop.until(lambda: sorted(loop.erp.accepted) == [1, 2, 3, 4], what="delivered once the registry answers")
    loop.until(lambda: loop.consumer.committed_offsets().get((TOPIC, 0)) == 3, what="committed to the end")
    assert loop.erp.accepted.index(2) < loop.erp.accepted.index(3)
    assert loop.producer.written == [] and (TOPIC, 0) not in loop.p.backpressure.held


def test_a_partition_revoked_while_held_is_let_go_and_read_again_by_its_next_owner(
        held: tuple[Loop, Registry]) -> None:
    loop, registry = held
    loop.cluster.append(TOPIC, 0, confluent_frame(1, event(5)), key=b"a")
    loop.consumer.assign([(TOPIC, 0)])
    loop.until(lambda: registry.asked >= 1 and (TOPIC, 0) in loop.p.backpressure.held, what="held")
    loop.consumer.revoke([(TOPIC, 0)])
    loop.steps(0.5)
    assert loop.consumer.committed_offsets().get((TOPIC, 0)) in (None, 0) and loop.producer.written == []
    assert (TOPIC, 0) not in loop.p.backpressure.held
    registry.up = True
    loop.consumer.assign([(TOPIC, 0)])
    loop.until(lambda: loop.erp.accepted == [5], what="read again after the re-assignment")
