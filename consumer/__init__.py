"""apaas-erp-sync: deliver approved aPaaS workflow instances from Kafka to an ERP, at least once.

The pipeline, one module per stage: :mod:`consumer.events` (decode) → :mod:`consumer.transform`
(filter and transform) → :mod:`consumer.erp` (push) → :mod:`consumer.verdict` → :mod:`consumer.offsets`
(commit), wired by :mod:`consumer.pipeline`.
"""

__version__ = "0.1.0"
