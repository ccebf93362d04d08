"""The development stack's ``erp-sync`` commands: ``erp-stub`` and ``produce-sample``.

``consumer.cli`` finds this module by name (when the development stack is installed) and calls
:func:`register`; the product never imports it.
"""

from __future__ import annotations

import argparse
import sys

from .. import logs
from ..cli import float_at_least, int_in
from ..settings import load_settings


def cmd_erp_stub(args: argparse.Namespace) -> int:
    """``erp-sync erp-stub``: serve the local ERP until SIGTERM/SIGINT."""
    from . import erp_stub

    logs.setup("text" if sys.stderr.isatty() else "json", "INFO")
    erp_stub.main(port=args.port, host=args.host, latency_ms=args.latency_ms, capacity=args.capacity)
    return 0


def cmd_produce_sample(args: argparse.Namespace) -> int:
    """``erp-sync produce-sample``: write sample events to the source topic."""
    from . import samples

    settings = load_settings()
    logs.setup(settings.log_format, settings.log_level)
    samples.main(count=args.count, seed=args.seed)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``erp-stub`` and ``produce-sample`` to ``erp-sync``'s subcommands."""
    stub = subparsers.add_parser("erp-stub", help="serve a local ERP that records what it receives")
    stub.add_argument("--port", type=int_in(0, 65535), default=8080, help="TCP port (0: a free one)")
    stub.add_argument("--host", default="127.0.0.1")
    stub.add_argument("--latency-ms", type=float_at_least(0), default=0.0, help="answer after this many milliseconds")
    stub.add_argument("--capacity", type=int_in(1), default=None,
                      help="pushes the ERP serves at once; the others wait in a FIFO queue (default: unlimited)")
    stub.set_defaults(func=cmd_erp_stub)

    produce = subparsers.add_parser("produce-sample", help="write realistic sample events to the topic")
    produce.add_argument("--count", type=int_in(1), default=20)
    produce.add_argument("--seed", type=int, default=7)
    produce.set_defaults(func=cmd_produce_sample)
