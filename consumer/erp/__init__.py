"""The ERP side: the HTTP client (``client``), signing and TLS (``auth``), and the verdict (``verdict``, pure)."""
