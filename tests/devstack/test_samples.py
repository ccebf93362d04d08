"""Sample events and the benchmark generator (no broker: producing is tested elsewhere)."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from consumer.decode import decode
from consumer.devstack.erp_stub import ErpStub, StubClient
from consumer.devstack.events import encode, spec_example_event
from consumer.devstack.samples import (
    FLOW_CODES,
    count_outcomes,
    expected_outcome,
    generate_events,
    sample_events,
    summary_line,
)
from consumer.errors import ValidationError
from consumer.transform import erp_request, to_erp_body

NON_APPROVED = {"REJECTED", "WITHDRAWN", "TERMINATED", "UNKNOWN"}


def test_first_sample_is_the_spec_example() -> None:
    assert sample_events()[0] == spec_example_event()
    assert sample_events(1, seed=99) == [spec_example_event()]
    assert sample_events(0) == []


def test_samples_are_deterministic() -> None:
    assert sample_events(20, 7) == sample_events(20, 7)
    assert sample_events(20, 7) != sample_events(20, 8)
    assert sample_events(30, 7)[:1] == sample_events(20, 8)[:1]


def test_outcome_mix_for_20_events_seed_7() -> None:
    samples = sample_events(20, 7)
    assert count_outcomes(samples) == {"pushed": 10, "skipped": 8, "validation": 1, "erp": 1}
    assert Counter(e["status"] for e in samples) == {
        "APPROVED": 12, "REJECTED": 2, "WITHDRAWN": 2, "TERMINATED": 2, "UNKNOWN": 2,
    }
    assert summary_line(20, "apaas.workflow.completed", count_outcomes(samples)) == (
        "20 events written to apaas.workflow.completed: 10 to push, 8 to skip, "
        "1 validation dead letter, 1 ERP reject"
    )


@pytest.mark.parametrize("count", [10, 11, 20, 57, 200])
@pytest.mark.parametrize("seed", [1, 7, 2024])
def test_mix_rules_hold_for_any_seed(count: int, seed: int) -> None:
    samples = sample_events(count, seed)
    assert len(samples) == count
    outcomes = count_outcomes(samples)
    assert outcomes["validation"] == 1
    assert outcomes["erp"] == 1
    statuses = Counter(e["status"] for e in samples)
    assert set(statuses) == {"APPROVED", *NON_APPROVED}
    assert statuses["APPROVED"] == round(0.6 * count)
    broken = [e for e in samples if expected_outcome(e) in ("validation", "erp")]
    assert all(e["status"] == "APPROVED" for e in broken)


def test_small_counts_have_no_faulty_events() -> None:
    for count in range(1, 10):
        assert count_outcomes(sample_events(count, 3))["validation"] == 0
        assert count_outcomes(sample_events(count, 3))["erp"] == 0


def test_the_faulty_events_fail_the_intended_way() -> None:
    samples = sample_events(20, 7)
    [invalid] = [e for e in samples if expected_outcome(e) == "validation"]
    with pytest.raises(ValidationError) as caught:
        erp_request(invalid)
    assert caught.value.code == "TypeMismatch"
    assert invalid["variables"]["Days"] == {"type": "integer", "value": "3.5"}
    [rejected] = [e for e in samples if expected_outcome(e) == "erp"]
    assert rejected["start_user"]["source_uid"] == ""
    erp_request(rejected)  # valid for the transform: only the ERP refuses it


def test_the_stub_answers_each_sample_as_expected() -> None:
    expected_code = {"pushed": "OK", "erp": "InvalidParameter.StartUser.SourceUid"}
    samples = [e for e in sample_events(40, 7) if expected_outcome(e) in expected_code]
    with ErpStub() as stub, StubClient(stub.base_url) as ctl, httpx.Client(verify=False) as http:
        for event in samples:
            body, key = erp_request(event)
            http.post(stub.url, content=body, headers={"Idempotency-Key": key, "Content-Type": "application/json"})
        records = ctl.wait_for(len(samples))
    assert [r["code"] for r in records] == [expected_code[expected_outcome(e)] for e in samples]
    assert [r["instance_id"] for r in records] == [e["instance_id"] for e in samples]


def test_sample_fields_are_realistic() -> None:
    samples = sample_events(200, 7)
    ids = [e["instance_id"] for e in samples]
    assert len(set(ids)) == len(ids)
    assert len({e["event_id"] for e in samples}) == len(samples)
    for event in samples:
        assert len(str(event["flow_code"])) == 19
        assert len(str(event["instance_id"])) == 19
        assert 1 <= len(event["approvals"]) <= 3
        assert event["variables"]
    assert {e["flow_code"] for e in samples} == set(FLOW_CODES.values())
    rest = samples[1:]
    assert any(e["start_time"] is None for e in rest)
    assert any(e["start_time"] is not None for e in rest)
    for event in rest:
        assert 1_700_000_000_000 < event["end_time"] < 1_800_000_000_000  # epoch ms
        assert 1_700_000_000_000 < event["event_time"] < 1_800_000_000_000
        assert event["start_time"] is None or event["start_time"] < event["end_time"]
    types = Counter(v["type"] for e in samples for v in e["variables"].values())
    assert set(types) == {"object", "objectList", "boolean", "string", "integer", "long", "double", "jsonSchema"}


def test_decimals_and_big_longs_reach_the_body_as_written() -> None:
    samples = [e for e in sample_events(200, 7) if expected_outcome(e) == "pushed"]
    amounts = [e for e in samples if "Items" in e["variables"]]
    assert amounts
    for event in amounts:
        text = event["variables"]["Items"]["value"]
        decimals = re.findall(r'"Amount": (\d+\.\d\d)\b', text)
        assert decimals
        body = erp_request(event)[0].decode()
        for number in decimals:
            assert f'"Amount":{number}' in body  # "12.30" stays "12.30"
        total = event["variables"]["Total"]["value"]
        assert re.fullmatch(r"\d+\.\d\d", total)
        assert f'"Total":{{"Type":"double","Value":{total}}}' in body
    big = [e for e in samples if "Amount" in e["variables"] and int(e["variables"]["Amount"]["value"]) > 2**53]
    assert big
    for event in big:
        value = event["variables"]["Amount"]["value"]
        assert f'"Amount":{{"Type":"long","Value":{value}}}' in erp_request(event)[0].decode()
    assert any(v["value"] == "null" for e in samples for v in e["variables"].values())  # empty form field


def test_variable_values_are_json_text() -> None:
    for event in sample_events(100, 11):
        for variable in event["variables"].values():
            json.loads(variable["value"])


@pytest.mark.parametrize("seed", [1, 7, 42])
def test_every_sample_round_trips_through_avro(seed: int) -> None:
    for event in sample_events(60, seed):
        assert decode(encode(event)) == event


def test_expected_outcome() -> None:
    event = spec_example_event()
    assert expected_outcome(event) == "pushed"
    for status in NON_APPROVED:
        assert expected_outcome({**event, "status": status}) == "skipped"
    assert expected_outcome({**event, "variables": {"X": {"type": "boolean", "value": "1"}}}) == "validation"
    assert expected_outcome({**event, "start_user": {"source_uid": "", "tenant_uid": "7"}}) == "erp"
    # not approved wins over a faulty variable
    assert expected_outcome({**event, "status": "REJECTED", "variables": {"X": {"type": "integer", "value": "x"}}}) \
        == "skipped"


def test_summary_line_plurals() -> None:
    line = summary_line(1, "t", {"pushed": 1, "skipped": 0, "validation": 2, "erp": 0})
    assert line == "1 event written to t: 1 to push, 0 to skip, 2 validation dead letters, 0 ERP rejects"


# ---------------------------------------------------------------------------------- generate_events


@pytest.fixture(scope="module")
def ten_thousand() -> list[dict]:
    return list(generate_events(10_000, seed=5, approved_ratio=0.5, target_bytes=300))


def test_generated_sizes_are_near_the_target(ten_thousand: list[dict]) -> None:
    sizes = [len(encode(e)) for e in ten_thousand]
    assert all(210 <= size <= 390 for size in sizes), (min(sizes), max(sizes))
    assert 270 <= sum(sizes) / len(sizes) <= 330


@pytest.mark.parametrize("target", [600, 2000])
def test_generated_sizes_for_other_targets(target: int) -> None:
    sizes = [len(encode(e)) for e in generate_events(2000, seed=2, target_bytes=target)]
    assert all(0.7 * target <= size <= 1.3 * target for size in sizes), (min(sizes), max(sizes))


def test_generated_approved_ratio(ten_thousand: list[dict]) -> None:
    approved = sum(e["status"] == "APPROVED" for e in ten_thousand) / len(ten_thousand)
    assert abs(approved - 0.5) <= 0.05
    assert {e["status"] for e in ten_thousand} == {"APPROVED", *NON_APPROVED}
    skewed = list(generate_events(10_000, seed=9, approved_ratio=0.8))
    assert abs(sum(e["status"] == "APPROVED" for e in skewed) / len(skewed) - 0.8) <= 0.05


def test_generated_events_are_valid_and_round_trip(ten_thousand: list[dict]) -> None:
    for event in ten_thousand[:2000]:
        assert expected_outcome(event) in ("pushed", "skipped")
        to_erp_body(event)
        assert decode(encode(event)) == event
    assert len({e["instance_id"] for e in ten_thousand}) == len(ten_thousand)  # no sharing by default
    assert len({e["event_id"] for e in ten_thousand}) == len(ten_thousand)


def test_generated_distinct_instances() -> None:
    generated = list(generate_events(30_000, seed=3, distinct_instances=1000))
    assert len({e["instance_id"] for e in generated}) == 1000
    flows: dict[int, set[int]] = {}
    for event in generated:
        flows.setdefault(event["instance_id"], set()).add(event["flow_code"])
    assert all(len(codes) == 1 for codes in flows.values())  # one Idempotency-Key per instance
    assert len({e["instance_id"] for e in generate_events(500, seed=3, distinct_instances=1000)}) == 500


def test_generator_is_deterministic_and_lazy() -> None:
    assert list(generate_events(50, seed=4)) == list(generate_events(50, seed=4))
    assert list(generate_events(50, seed=4)) != list(generate_events(50, seed=5))
    stream: Iterator[dict] = generate_events(10**12)
    assert next(stream)["status"] in {"APPROVED", *NON_APPROVED}


def test_generator_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        list(generate_events(1, approved_ratio=1.5))
    with pytest.raises(ValueError):
        list(generate_events(1, distinct_instances=0))
    with pytest.raises(ValueError):
        list(generate_events(-1))
