"""Development stack: the ERP stub, the sample producer and the demo report, for demos, tests and benchmarks.

Fenced: no product module imports this package (``tests/unit/test_imports.py`` checks it), and a
production install does not need it. It may import the product (the stub labels answers with the
consumer's own verdict rules).
"""
