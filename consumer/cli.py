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
from collections.abc import Callable, Sequence

from confluent_kafka import KafkaException

from . import __version__, logs, ops
from .errors import ConfigError
from .kafka import error_text
from .routes import load_routes
from .settings import Settings, load_settings, validate_kafka_config

log = logging.getLogger("consumer.cli")

DEVSTACK_COMMANDS = "consumer.devstack.cli"
"""The demo and test commands (``erp-stub``, ``produce-sample``): found by name when the development
stack is installed, never imported by the product (``tests/unit/test_imports.py``)."""


def int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: a whole number from ``low`` to ``high`` (inclusive; None: no upper bound).

    Anything else is a one-line usage error (exit 2) naming the range, before anything connects.
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(
                f"expected {low} or more, got {value}" if high is None else f"expected {low} to {high}, got {value}")
        return value

    return parse


def float_at_least(low: float) -> Callable[[str], float]:
    """An argparse ``type``: a number >= ``low`` (a one-line usage error otherwise, exit 2)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not value >= low:  # NaN too
            raise argparse.ArgumentTypeError(f"expected {low:g} or more, got {text}")
        return value

    return parse


def _settings() -> Settings:
    settings = load_settings()
    logs.setup(settings.log_format, settings.log_level)
    for warning in settings.unknown_variables:
        log.warning("%s", warning, extra={"event": "unknown_variable"})
    return settings


def cmd_run(args: argparse.Namespace) -> int:
    """``erp-sync run``: consume and deliver until SIGTERM/SIGINT (or idle)."""
    from . import app

    settings = _settings()
    load_routes(settings)  # the routes file, or ERP_SYNC_ERP_URL as the one route
    validate_kafka_config(settings)
    log.info("configuration: %s", json.dumps(settings.redacted()), extra={"event": "config"})
    app.exit_now(app.run(settings, exit_when_idle_s=args.exit_when_idle))
    return 1  # not reached


def cmd_check_config(args: argparse.Namespace) -> int:
    """``erp-sync check-config [--connect]``: validate what ``run`` validates; print it redacted.

    Exit code 2 on any setting ``run`` refuses; with ``--connect``, 1 when the broker, the schema
    registry or the ERP does not answer (each on its own line).
    """
    settings = load_settings()
    for warning in settings.unknown_variables:
        print(f"warning: {warning}", file=sys.stderr)
    routes = load_routes(settings)  # the routes file, or ERP_SYNC_ERP_URL as the one route
    validate_kafka_config(settings)
    from .erp.client import ErpClient

    for route in routes.routes:
        ErpClient(route.settings, max_connections=1)  # each route's TLS and secret files
    print(json.dumps(settings.redacted(), indent=2, sort_keys=True))
    if not args.connect:
        return 0
    from .ops.connect import check_connections

    checks = check_connections(settings, args.connect_timeout)
    for check in checks:
        print(check.line(), file=sys.stderr)
    return 0 if all(c.ok for c in checks) else 1


def _devstack_missing(args: argparse.Namespace) -> int:
    """``erp-stub`` / ``produce-sample`` where ``consumer.devstack`` is not installed: say why, exit 2."""
    print(f"erp-sync {args.command}: not in this installation: the development stack (consumer/devstack: ERP "
          "stub, sample producer) is left out of the production image; use the image's devstack target "
          "(docker build --target devstack)", file=sys.stderr)
    return 2


CONFIGURATION_HELP = """\
configuration:
  Every command reads ERP_SYNC_* environment variables, or a dotenv-style file named by
  ERP_SYNC_CONFIG_FILE (the environment wins): ERP_SYNC_KAFKA_BOOTSTRAP_SERVERS, ERP_SYNC_TOPIC,
  ERP_SYNC_GROUP_ID, ERP_SYNC_ERP_URL, ERP_SYNC_DLQ_TOPIC, ERP_SYNC_MAX_IN_FLIGHT… and any librdkafka
  property as ERP_SYNC_KAFKA_<PROPERTY>. Each variable, its default and its meaning: README.md,
  section "Configuration". `erp-sync check-config` checks them and prints them (secrets redacted);
  `erp-sync check-config --connect` also tries the broker, the schema registry and the ERP.

exit codes: 0 success; 1 runtime failure; 2 bad configuration or usage."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``erp-sync``."""
    parser = argparse.ArgumentParser(prog="erp-sync", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=CONFIGURATION_HELP)
    parser.add_argument("--version", action="version", version=f"apaas-erp-sync {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="consume the topic and deliver approved instances to the ERP")
    run.add_argument("--exit-when-idle", type=float, metavar="SECONDS", default=None,
                     help="exit 0 once caught up and no record arrived for SECONDS (after committing)")
    run.set_defaults(func=cmd_run)

    if importlib.util.find_spec(DEVSTACK_COMMANDS.rsplit(".", 1)[0]) is not None:  # erp-stub, produce-sample
        importlib.import_module(DEVSTACK_COMMANDS).register(sub)
    else:  # the production image leaves the development stack out: say so, not "invalid choice"
        for command in ("erp-stub", "produce-sample"):
            missing = sub.add_parser(command, help="(not in this installation: the development stack)",
                                     prefix_chars="\x00", add_help=False)  # its options are plain words here
            missing.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
            missing.set_defaults(func=_devstack_missing)

    topics = sub.add_parser("create-topics", help="create the source and dead-letter topics if missing")
    topics.add_argument("--partitions", type=int_in(1), default=6)
    topics.add_argument("--dlq-partitions", type=int_in(1), default=1)
    topics.add_argument("--replication-factor", type=int_in(1, 32767), default=1)
    topics.set_defaults(func=ops.guarded("create-topics", ops.command("topics", "cmd_create_topics")))

    check = sub.add_parser("check-config", help="validate the configuration and print it with secrets redacted")
    check.add_argument("--connect", action="store_true",
                       help="also try the broker, the schema registry and the ERP endpoint (exit 1 if one fails)")
    check.add_argument("--connect-timeout", type=float, default=10.0, metavar="SECONDS",
                       help="longest wait of each --connect check (default 10)")
    check.set_defaults(func=cmd_check_config)

    ops.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``erp-sync`` console script."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"erp-sync: configuration error: {exc}", file=sys.stderr)
        return exc.exit_code
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
