"""Settings are checked when they are built: every choice against its Literal, and the
combinations that cannot work, each with a message that names the flag."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import pytest

from infergraph.router import cli
from infergraph.router.settings import GraphSource, RouterSettings, SettingsError

SOURCE = GraphSource(graph_json='{"nodes": {}}')


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"client": "curl"}, "downstream client must be one of fast, aiohttp"),
        ({"server": "nginx"}, "server must be one of fast, aiohttp"),
        ({"span_export": "disk"}, "span export must be one of process, process-sdk, thread"),
        ({"otlp_protocol": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"workers": 0}, "--workers"),
        ({"workers": 2, "port": 0}, "fixed --port"),
        ({"max_header_bytes": 100}, "--max-header-bytes"),
        ({"max_connections": 0}, "--max-connections"),
        ({"pool_timeout": 0}, "--pool-timeout"),
        ({"idle_connection_seconds": -1}, "--idle-connection-seconds"),
        ({"drain_seconds": -1}, "--drain-seconds"),
        ({"reload_interval": 0}, "--reload-interval"),
    ],
)
def test_settings_that_cannot_work_are_refused_with_the_flag_named(
    change: dict[str, Any], message: str
) -> None:
    with pytest.raises(SettingsError, match=message):
        RouterSettings(source=SOURCE, **change)


def test_the_defaults_are_valid_and_match_the_flags() -> None:
    defaults = RouterSettings(source=SOURCE)
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["router", "--graph-json", "{}"])
    built = cli.settings_from_args(args)
    assert dataclasses.replace(built, source=SOURCE, propagate_headers=None) == dataclasses.replace(
        defaults,
        propagate_headers=None,
        tracing=built.tracing,
        otlp_protocol=built.otlp_protocol,
        service_name=built.service_name,
    )
