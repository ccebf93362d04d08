"""The benchmark of issue 5: ``erp-sync run`` against the naive consumer (see bench/README.md).

Run from the repository root, as a package, so that ``consumer`` and ``dev`` import as they are:

    .venv/bin/python -m bench.run --quick

``run`` is the command line; ``stack`` the topic's data and the ERP stub; ``scenarios`` what is run;
``measure`` process watching, CPU, RSS, metrics and logs; ``profiler`` py-spy; ``checks`` delivery
checks and the targets of ``bounds.json``; ``render`` the table and the lines below it.
``http_ceiling``, ``cpu_cost`` and ``naive_consumer`` run in their own processes
(``python -m bench.<name>``, see :func:`bench_module`).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PY = sys.executable
ERP_SYNC = str(Path(PY).parent / "erp-sync")


def bench_module(name: str, *args: str) -> list[str]:
    """The command that runs ``bench/<name>.py`` as a module (run it with ``cwd=ROOT``)."""
    return [PY, "-m", f"bench.{name}", *args]


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
