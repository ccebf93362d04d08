"""The benchmark of issue 5: ``erp-sync run`` against the naive consumer (see bench/README.md).

Run from the repository root, as a package, so that ``consumer`` and ``dev`` import as they are:

    .venv/bin/python -m bench.run --quick
"""
