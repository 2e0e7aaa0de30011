"""The operator's commands on the distribution's command line: ``operator`` keeps the flags
the kube tests and deploy/ start it with, and ``crds`` writes the committed manifests."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infergraph.operator import cli, crds


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="infergraph")
    sub = parser.add_subparsers(dest="command", required=True)
    cli.register(sub)
    return parser.parse_args(argv)


DEFAULTS: dict[str, Any] = {
    "command": "operator",
    "namespace": None,
    "all_namespaces": False,
    "router_image": None,
    "otlp_endpoint": None,
    "default_deployment_mode": "Serverless",
    "webhook_port": None,
    "webhook_host": None,
    "webhook_addr": None,
    "webhook_cert": None,
    "webhook_key": None,
    "webhook_service": None,
    "log_level": "INFO",
    "run": cli.run_operator,
}
OPERATOR_ARGS: list[tuple[str, list[str], dict[str, Any]]] = [
    ("no flags: every namespace, no webhook", [], {}),
    (
        "as the kube tests start it",
        [
            *("--namespace", "models"),
            *("--router-image", "infergraph/router:test"),
            *("--otlp-endpoint", "http://jaeger.infergraph-system:4318"),
        ],
        {
            "namespace": ["models"],
            "router_image": "infergraph/router:test",
            "otlp_endpoint": "http://jaeger.infergraph-system:4318",
        },
    ),
    (
        "with the webhook",
        [
            *("--namespace", "guarded", "--webhook-port", "9443", "--webhook-host", "127.0.0.1"),
            *("--webhook-addr", "0.0.0.0", "--webhook-cert", "tls.crt", "--webhook-key", "tls.key"),
        ],
        {
            "namespace": ["guarded"],
            "webhook_port": 9443,
            "webhook_host": "127.0.0.1",
            "webhook_addr": "0.0.0.0",
            "webhook_cert": "tls.crt",
            "webhook_key": "tls.key",
        },
    ),
    (
        "in the cluster, as deploy/operator.yaml runs it",
        ["--all-namespaces", "--webhook-port", "9443", "--webhook-service", "ns/operator"],
        {"all_namespaces": True, "webhook_port": 9443, "webhook_service": "ns/operator"},
    ),
    ("--namespace repeats", ["--namespace", "a", "--namespace", "b"], {"namespace": ["a", "b"]}),
    ("the whole cluster", ["--all-namespaces"], {"all_namespaces": True}),
    (
        "KServe's Standard mode by default",
        ["--default-deployment-mode", "RawDeployment"],
        {"default_deployment_mode": "RawDeployment"},
    ),
    ("a log level, in any case", ["--log-level", "debug"], {"log_level": "DEBUG"}),
]


@pytest.mark.parametrize(
    ("argv", "changed"), [c[1:] for c in OPERATOR_ARGS], ids=[c[0] for c in OPERATOR_ARGS]
)
def test_operator_flags(argv: list[str], changed: dict[str, Any]) -> None:
    assert vars(parse("operator", *argv)) == {**DEFAULTS, **changed}


@pytest.mark.parametrize(
    "argv",
    [
        ["--namespace", "a", "--all-namespaces"],  # one scope or the other
        ["--webhook-port", "https"],
        ["--log-level", "loud"],
    ],
)
def test_operator_refuses(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        parse("operator", *argv)
    assert caught.value.code == 2
    assert "infergraph operator: error:" in capsys.readouterr().err


def test_crds_flags() -> None:
    assert vars(parse("crds")) == {
        "command": "crds",
        "out": Path("deploy/crds"),
        "run": cli.write_crds,
    }
    assert parse("crds", "--out", "/tmp/x").out == Path("/tmp/x")


def test_crds_writes_the_manifests(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "crds"
    args = parse("crds", "--out", str(out))
    assert args.run(args) == 0
    inference_graphs = out / "infergraph.dev_inferencegraphs.yaml"
    predictors = out / "infergraph.dev_predictors.yaml"
    assert sorted(out.iterdir()) == [inference_graphs, predictors]
    assert inference_graphs.read_text() == crds.render("InferenceGraph")
    assert predictors.read_text() == crds.render("Predictor")
    assert capsys.readouterr().out == f"wrote {inference_graphs}\nwrote {predictors}\n"


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger without pytest's handlers (configuring closes what it replaces), put
    back as it was afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.handlers[:] = []
    yield root
    for handler in root.handlers:
        handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_configure_logging(root_logger: logging.Logger) -> None:
    root_logger.addHandler(logging.NullHandler())
    cli.configure_logging("DEBUG")
    assert root_logger.level == logging.DEBUG
    [handler] = root_logger.handlers  # replaces what was there
    assert isinstance(handler, logging.StreamHandler)
    assert handler.formatter is not None
    assert handler.formatter._fmt == "%(asctime)s %(levelname)s %(name)s: %(message)s"
