"""Import rules of the package, checked on the source and at run time.

1. No product module imports ``consumer.devstack`` (the ERP stub, samples and demo report are for
   demos and tests; a production install may leave them out). The CLI finds the development
   stack's commands by name only (``consumer.cli.DEVSTACK_COMMANDS``).
2. ``consumer.transform`` and ``consumer.erp.verdict`` are pure: importing them loads no Kafka
   client and no HTTP library.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "consumer"
KAFKA_AND_HTTP = ("confluent_kafka", "httpx", "aiohttp", "urllib3", "requests", "http.client",
                  "http.server", "urllib.request")
"""Kafka clients and HTTP stacks (``urllib.parse``, which fastavro and email.utils load, is neither)."""


def loaded_by(statement: str) -> set[str]:
    """The modules a fresh interpreter has loaded after ``statement``, with their parent packages."""
    code = f"import sys, json; {statement}; print(json.dumps(sorted(sys.modules)))"
    names = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                      text=True).stdout)
    return {".".join(n.split(".")[:i]) for n in names for i in range(1, n.count(".") + 2)}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, anywhere in it (function-level imports included), absolute names."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                prefix = ".".join(base)
                target = f"{prefix}.{node.module}" if node.module else prefix
            else:
                target = node.module or ""
            out.add(target)
            out.update(f"{target}.{alias.name}" for alias in node.names)
    return out


PRODUCT = sorted(p for p in PACKAGE.rglob("*.py") if "devstack" not in p.relative_to(PACKAGE).parts)


def test_the_rules_see_every_product_module() -> None:
    names = {module_name(p) for p in PRODUCT}
    assert {"consumer.app", "consumer.cli", "consumer.delivery.pipeline", "consumer.ops.replay",
            "consumer.transform", "consumer.erp.verdict"} <= names
    assert not any(n.startswith("consumer.devstack") for n in names)


@pytest.mark.parametrize("path", PRODUCT, ids=lambda p: module_name(p))
def test_no_product_module_imports_the_development_stack(path: Path) -> None:
    offending = sorted(m for m in imported_modules(path) if m == "consumer.devstack" or
                       m.startswith("consumer.devstack."))
    assert offending == [], f"{module_name(path)} imports {offending}"


def test_the_import_walker_resolves_relative_imports() -> None:
    """The rule above would be blind if relative imports were not resolved: check it on known files."""
    cli = imported_modules(PACKAGE / "cli.py")
    assert {"consumer.errors.ConfigError", "consumer.ops"} <= cli
    pipeline = imported_modules(PACKAGE / "delivery" / "pipeline.py")
    assert {"consumer.delivery.intake.Intake", "consumer.delivery.endpoints.Endpoints"} <= pipeline
    intake = imported_modules(PACKAGE / "delivery" / "intake.py")
    assert {"consumer.transform", "consumer.delivery.settle.Disposition"} <= intake
    devstack_cli = imported_modules(PACKAGE / "devstack" / "cli.py")
    assert "consumer.logs" in devstack_cli


@pytest.mark.parametrize("module", ["consumer.transform", "consumer.erp.verdict"])
def test_pure_modules_load_no_kafka_and_no_http(module: str) -> None:
    found = loaded_by(f"import {module}") & set(KAFKA_AND_HTTP)
    assert found == set(), f"{module} loads {sorted(found)}"


def test_the_runtime_check_would_see_kafka_and_http() -> None:
    assert {"confluent_kafka", "aiohttp"} <= loaded_by(
        "import consumer.kafka, consumer.erp.http; consumer.erp.http.aiohttp_failure(OSError())")


def test_run_does_not_load_httpx() -> None:
    """httpx carries only unit tests' MockTransport: 12 MB less resident memory in `erp-sync run`."""
    assert "httpx" not in loaded_by("import consumer.app, consumer.delivery.pipeline, consumer.erp.client")


def test_the_command_line_loads_no_tool_and_no_httpx_before_a_command_runs() -> None:
    """`erp-sync run` builds the whole parser: the tools' modules (and httpx, which they use) load only
    when their command runs."""
    loaded = loaded_by("import consumer.cli; consumer.cli.build_parser()")
    assert "httpx" not in loaded
    assert sorted(m for m in loaded if m.startswith("consumer.ops.")) == ["consumer.ops.help"]


def test_a_tool_command_loads_its_module_when_it_runs() -> None:
    # a topic name Kafka refuses: the command's module loads, reads the settings and exits 2
    loaded = loaded_by("import os, consumer.cli; os.environ['ERP_SYNC_TOPIC'] = 'a b'; "
                       "assert consumer.cli.main(['create-topics']) == 2")
    assert {"consumer.ops.topics", "consumer.ops.cluster"} <= loaded
