"""``erp-sync --help`` and the tools' help: where the configuration comes from."""

from __future__ import annotations

import argparse

import pytest

from consumer.cli import build_parser


def subparser(parser: argparse.ArgumentParser, *names: str) -> argparse.ArgumentParser:
    for name in names:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def test_the_main_help_names_the_variables_where_they_are_documented_and_check_config() -> None:
    text = build_parser().format_help()
    assert "ERP_SYNC_* environment variables" in text and "ERP_SYNC_CONFIG_FILE" in text
    for name in ("ERP_SYNC_KAFKA_BOOTSTRAP_SERVERS", "ERP_SYNC_TOPIC", "ERP_SYNC_GROUP_ID", "ERP_SYNC_ERP_URL"):
        assert name in text
    assert 'README.md,\n  section "Configuration"' in text
    assert "`erp-sync check-config` checks them" in text and "check-config --connect" in text


@pytest.mark.parametrize("names", [("status",), ("reset-offsets",), ("replay",), ("dlq", "replay")])
def test_each_tool_says_it_reads_the_configuration_of_run(names: tuple[str, ...]) -> None:
    text = subparser(build_parser(), *names).format_help()
    assert "Configuration: the ERP_SYNC_* variables of `erp-sync run`" in text


def test_a_tool_on_several_source_topics_works_on_the_one_named_with_topic() -> None:
    """ERP_SYNC_TOPIC=a,b made reset-offsets and replay ask the broker for topic "a,b"."""
    from consumer.errors import UsageError
    from consumer.ops.cluster import for_source_topic
    from consumer.settings import load_settings

    settings = load_settings({"ERP_SYNC_TOPIC": "wf,orders"})
    narrowed = for_source_topic(settings, "orders")
    assert (narrowed.topic, narrowed.topics, narrowed.dead_letter_topic) == ("orders", ("orders",), "wf.dlq")
    with pytest.raises(UsageError, match=r"^ERP_SYNC_TOPIC lists 2 topics \(wf, orders\): name one with --topic$"):
        for_source_topic(settings, None)
    with pytest.raises(UsageError, match=r"^--topic other: not a source topic of ERP_SYNC_TOPIC \(wf, orders\)$"):
        for_source_topic(settings, "other")
    single = load_settings({"ERP_SYNC_TOPIC": "wf"})
    assert for_source_topic(single, None) is single
    for names in (("reset-offsets",), ("replay",)):
        assert "--topic" in subparser(build_parser(), *names).format_help()


@pytest.mark.parametrize(("argv", "message"), [
    (["create-topics", "--partitions", "0"], "argument --partitions: expected 1 or more, got 0"),
    (["create-topics", "--partitions", "-2"], "argument --partitions: expected 1 or more, got -2"),
    (["create-topics", "--dlq-partitions", "0"], "argument --dlq-partitions: expected 1 or more, got 0"),
    (["create-topics", "--replication-factor", "x"], "argument --replication-factor: expected a whole number, got 'x'"),
    (["erp-stub", "--port", "99999"], "argument --port: expected 0 to 65535, got 99999"),
    (["erp-stub", "--latency-ms", "-5"], "argument --latency-ms: expected 0 or more, got -5"),
    (["erp-stub", "--latency-ms", "nan"], "argument --latency-ms: expected 0 or more, got nan"),
    (["produce-sample", "--count", "-1"], "argument --count: expected 1 or more, got -1"),
])
def test_out_of_range_numbers_are_usage_errors_before_anything_connects(argv: list[str], message: str,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A new user's trial: create-topics --partitions 0 created the dead-letter topic, then failed with a
    Kafka error (exit 1), and -2 with a traceback; erp-stub --port 99999 listened on 34463."""
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"erp-sync {argv[0]}: error: {message}"
