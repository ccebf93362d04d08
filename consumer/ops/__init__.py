"""Operations tools: ``status``, ``reset-offsets``, ``replay`` and ``dlq replay`` (issue 4).

``status``          per partition of the topic and of its retry topic: the group's committed offset, the
                    high watermark, the lag (messages) and lag seconds, the owner (member id); the
                    group's state and members; the dead-letter topic and what ``dlq replay`` has not
                    done yet; each route's parked records and state
``reset-offsets``   move the group's committed offsets (a dry run unless ``--execute``): the topic replay
``replay``          re-push a time window (or chosen instances) without touching the group's offsets
``dlq replay``      re-push dead letters; those that fail for a new reason go back to the dead-letter
                    topic, those that fail for the same reason stay in place

No tool joins the consumer group. Records are read with ``assign()`` by a client whose group id is
never committed to; only ``dlq replay`` commits, to its own group ``<group>.dlq-replay``, to remember
which dead letters are done. Both replays push as ``erp-sync run`` does (:mod:`.pushing`). Every tool
reads the same configuration as ``erp-sync run`` (``ERP_SYNC_*`` variables, ``ERP_SYNC_CONFIG_FILE``).

Exit codes: 0 success; 1 runtime failure (Kafka unreachable, a record that could not be delivered);
2 usage or configuration error (bad option, unknown partition or topic, group still active).
"""


from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

from confluent_kafka import KafkaException

from ..errors import ToolError
from ..kafka import error_text
from .help import DLQ_REPLAY_HELP, REPLAY_HELP, RESET_HELP, STATUS_HELP


def command(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """``consumer.ops.<module>.<name>``, imported when the command runs, not when the parser is built.

    Every ``erp-sync`` command builds the whole parser; the tools' modules load the HTTP client and
    the admin helpers, which ``erp-sync run`` never uses (about 2.5 MB resident, issue 14).
    """

    def run(args: argparse.Namespace) -> int:
        func: Callable[[argparse.Namespace], int] = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        return func(args)

    run.__name__ = name
    return run


def guarded(name: str, func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Wrap a command: print tool and Kafka errors as one clear line and return their exit code.

    :class:`~consumer.errors.ConfigError` is left to ``erp-sync``'s ``main`` (exit code 2).
    """

    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except ToolError as exc:
            print(f"erp-sync {name}: error: {exc}", file=sys.stderr)
            return exc.exit_code
        except KafkaException as exc:
            print(f"erp-sync {name}: Kafka error: {error_text(exc)}", file=sys.stderr)
            return 1

    return run


TOOL_EPILOG = ("Configuration: the ERP_SYNC_* variables of `erp-sync run` (README.md, \"Configuration\"; "
               "`erp-sync check-config` prints them).")


def add_push_options(parser: argparse.ArgumentParser) -> None:
    """``--max-in-flight`` and ``--max-requests-per-second``: how a tool pushes (default: as ``run``)."""
    parser.add_argument("--max-in-flight", type=int, metavar="N",
                        help="pushes at once, one at a time per key "
                             "(default: ERP_SYNC_MAX_IN_FLIGHT; when that is auto, 32)")
    parser.add_argument("--max-requests-per-second", type=float, metavar="R",
                        help="cap the ERP request rate (default: ERP_SYNC_ERP_MAX_REQUESTS_PER_SECOND; 0: no limit)")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``status``, ``reset-offsets``, ``replay`` and ``dlq replay`` to ``erp-sync``'s subcommands.

    Args:
        subparsers: the ``add_subparsers()`` action of the ``erp-sync`` parser.
    """
    raw = argparse.RawDescriptionHelpFormatter

    status = subparsers.add_parser("status", help="per-partition offsets, lag and lag seconds (source and retry "
                                   "topics); group members; dead letters; each route's parked records",
                                   description=STATUS_HELP, formatter_class=raw, epilog=TOOL_EPILOG)
    status.add_argument("--json", action="store_true", help="print a JSON document instead of tables")
    status.set_defaults(func=guarded("status", command("status", "cmd_status")))

    reset = subparsers.add_parser("reset-offsets", help="move the group's committed offsets (topic replay)",
                                  description=RESET_HELP, formatter_class=raw, epilog=TOOL_EPILOG)
    target = reset.add_mutually_exclusive_group(required=True)
    target.add_argument("--to-earliest", action="store_true", help="to the low watermark (re-read everything)")
    target.add_argument("--to-latest", action="store_true", help="to the high watermark (skip everything)")
    target.add_argument("--to-datetime", metavar="ISO8601",
                        help="to the first record at or after this time (no time zone: UTC)")
    target.add_argument("--to-offset", type=int, metavar="N", help="to offset N on every chosen partition")
    target.add_argument("--shift-by", type=int, metavar="N",
                        help="move by N records (negative: back, to re-read them)")
    reset.add_argument("--partitions", metavar="0,2", help="only these partitions (default: all)")
    reset.add_argument("--topic", help="the source topic, when ERP_SYNC_TOPIC lists several")
    reset.add_argument("--execute", action="store_true", help="apply the new offsets (default: dry run)")
    reset.set_defaults(func=guarded("reset-offsets", command("reset", "cmd_reset_offsets")))

    replay = subparsers.add_parser("replay", help="re-push a time window without touching the group's offsets",
                                   description=REPLAY_HELP, formatter_class=raw, epilog=TOOL_EPILOG)
    replay.add_argument("--from", dest="from_", required=True, metavar="ISO8601",
                        help="window start, included (Kafka record timestamp)")
    replay.add_argument("--to", required=True, metavar="ISO8601", help="window end, excluded")
    replay.add_argument("--instance-id", type=int, action="append", metavar="N",
                        help="only this InstanceId (repeat for more)")
    replay.add_argument("--dry-run", action="store_true",
                        help="print what would be pushed (InstanceId, Idempotency-Key); send nothing")
    replay.add_argument("--topic", help="the source topic, when ERP_SYNC_TOPIC lists several")
    add_push_options(replay)
    replay.set_defaults(func=guarded("replay", command("replay", "cmd_replay")))

    dlq = subparsers.add_parser("dlq", help="dead-letter topic tools (dlq replay)",
                                description="Tools for the dead-letter topic.")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="{replay}")
    dlq_replay = dlq_sub.add_parser("replay", help="re-push dead letters; new failures go back to the DLQ",
                                    description=DLQ_REPLAY_HELP, formatter_class=raw,
                                    epilog=TOOL_EPILOG)
    dlq_replay.add_argument("--dry-run", action="store_true",
                            help="print what would be pushed; push, write and commit nothing")
    dlq_replay.add_argument("--class", dest="error_class", choices=("decode", "validation", "erp"),
                            help="only dead letters of this class (erp_sync.error.class)")
    dlq_replay.add_argument("--limit", type=int, metavar="N", help="replay at most N dead letters")
    add_push_options(dlq_replay)
    dlq_replay.set_defaults(func=guarded("dlq replay", command("dlq_replay", "cmd_dlq_replay")))

