"""erp-sync: deliver approved aPaaS workflow instances from Kafka to the ERP.

``run``            the consumer (``--exit-when-idle SECONDS`` to stop once caught up)
``erp-stub``       a local ERP for demos and tests
``produce-sample`` write realistic sample events to the topic
``create-topics``  create the source and dead-letter topics if they are missing
``check-config``   validate the configuration and print it, secrets redacted

Exit codes: 0 success; 1 runtime failure (fatal Kafka error); 2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
from collections.abc import Sequence

from confluent_kafka import KafkaException

from . import __version__, logs
from .errors import ConfigError
from .kafka import error_text
from .settings import Settings, load_settings, validate_kafka_config

log = logging.getLogger("consumer.cli")


def _settings() -> Settings:
    settings = load_settings()
    logs.setup(settings.log_format, settings.log_level)
    return settings


def cmd_run(args: argparse.Namespace) -> int:
    """``erp-sync run``: consume and deliver until SIGTERM/SIGINT (or idle)."""
    from . import app

    settings = _settings()
    if not settings.erp_url:
        raise ConfigError("ERP_SYNC_ERP_URL: required (the ERP endpoint, e.g. https://erp.example.com/apaas/push)")
    validate_kafka_config(settings)
    log.info("configuration: %s", json.dumps(settings.redacted()), extra={"event": "config"})
    app.exit_now(app.run(settings, exit_when_idle_s=args.exit_when_idle))
    return 1  # not reached


def _devstack_missing(command: str) -> bool:
    """True, after saying so, when ``consumer.devstack`` is not installed (the production image leaves it out)."""
    if importlib.util.find_spec("consumer.devstack") is not None:
        return False
    print(f"erp-sync {command}: not in this installation: the development stack (consumer/devstack: ERP stub, "
          "sample producer) is left out of the production image; use the image's devstack target "
          "(docker build --target devstack)", file=sys.stderr)
    return True


def cmd_erp_stub(args: argparse.Namespace) -> int:
    """``erp-sync erp-stub``: serve the local ERP until SIGTERM/SIGINT."""
    if _devstack_missing("erp-stub"):
        return 2
    from .devstack import erp_stub

    logs.setup("text" if sys.stderr.isatty() else "json", "INFO")
    erp_stub.main(port=args.port, host=args.host, latency_ms=args.latency_ms)
    return 0


def cmd_produce_sample(args: argparse.Namespace) -> int:
    """``erp-sync produce-sample``: write sample events to the source topic."""
    if _devstack_missing("produce-sample"):
        return 2
    from .devstack import samples

    _settings()
    samples.main(count=args.count, seed=args.seed)
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    """``erp-sync check-config``: validate everything a start would validate; print it redacted."""
    settings = load_settings()
    validate_kafka_config(settings)
    from .erp.client import ErpClient

    if settings.erp_url:
        ErpClient(settings, max_connections=1).close()  # TLS files, secret files
    else:
        print("warning: ERP_SYNC_ERP_URL is not set; `erp-sync run` requires it", file=sys.stderr)
    settings.auth_header_value()
    settings.hmac_secret()
    print(json.dumps(settings.redacted(), indent=2, sort_keys=True))
    return 0


def cmd_create_topics(args: argparse.Namespace) -> int:
    """``erp-sync create-topics``: create the source and dead-letter topics if they are missing."""
    from confluent_kafka.admin import NewTopic

    from .kafka import admin_client

    settings = _settings()
    admin = admin_client(settings)
    existing = admin.list_topics(timeout=15).topics
    wanted = [NewTopic(settings.topic, args.partitions, args.replication_factor),
              NewTopic(settings.dead_letter_topic, args.dlq_partitions, args.replication_factor)]
    missing = [t for t in wanted if t.topic not in existing]
    for topic in wanted:
        if topic.topic in existing:
            print(f"{topic.topic}: exists ({len(existing[topic.topic].partitions)} partitions)")
    if missing:
        for name, future in admin.create_topics(missing, request_timeout=30).items():
            future.result(timeout=60)
            print(f"{name}: created")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``erp-sync``."""
    parser = argparse.ArgumentParser(prog="erp-sync", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"apaas-erp-sync {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="consume the topic and deliver approved instances to the ERP")
    run.add_argument("--exit-when-idle", type=float, metavar="SECONDS", default=None,
                     help="exit 0 once caught up and no record arrived for SECONDS (after committing)")
    run.set_defaults(func=cmd_run)

    stub = sub.add_parser("erp-stub", help="serve a local ERP that records what it receives")
    stub.add_argument("--port", type=int, default=8080)
    stub.add_argument("--host", default="127.0.0.1")
    stub.add_argument("--latency-ms", type=float, default=0.0, help="answer after this many milliseconds")
    stub.set_defaults(func=cmd_erp_stub)

    produce = sub.add_parser("produce-sample", help="write realistic sample events to the topic")
    produce.add_argument("--count", type=int, default=20)
    produce.add_argument("--seed", type=int, default=7)
    produce.set_defaults(func=cmd_produce_sample)

    topics = sub.add_parser("create-topics", help="create the source and dead-letter topics if missing")
    topics.add_argument("--partitions", type=int, default=6)
    topics.add_argument("--dlq-partitions", type=int, default=1)
    topics.add_argument("--replication-factor", type=int, default=1)
    topics.set_defaults(func=cmd_create_topics)

    check = sub.add_parser("check-config", help="validate the configuration and print it with secrets redacted")
    check.set_defaults(func=cmd_check_config)

    if importlib.util.find_spec("consumer.ops") is not None:
        from . import ops as tools

        tools.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``erp-sync`` console script."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"erp-sync: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `erp-sync check-config | head`
        return 0
    except (KafkaException, RuntimeError, OSError) as exc:  # broker down, topic missing…: say it, no traceback
        print(f"erp-sync {args.command}: error: {error_text(exc, name=False)}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
