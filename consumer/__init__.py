"""apaas-erp-sync: deliver approved aPaaS workflow instances from Kafka to an ERP, at least once.

The pipeline, one package per stage: :mod:`consumer.decode` → :mod:`consumer.transform` (filter and
transform; pure) → :mod:`consumer.erp` (push and verdict) → :mod:`consumer.delivery` (the loop,
offsets, commit, dead letters), started by :mod:`consumer.app`. :mod:`consumer.ops` holds the
operations tools; :mod:`consumer.devstack` the ERP stub, samples and demo report (never imported
by the product).
"""

__version__ = "0.1.0"
