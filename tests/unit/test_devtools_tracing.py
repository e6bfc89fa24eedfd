"""`make run TRACING=1`: Jaeger among the programs, every service pointed at it (`meshcast.devtools`)."""

from __future__ import annotations

from pathlib import Path

import yaml

from meshcast.devtools.jaeger import JaegerPorts, render_config
from meshcast.devtools.stack import Stack

ROOT = Path(__file__).resolve().parents[2]


def _stack(tmp_path: Path, jaeger: Path | None) -> Stack:
    return Stack(
        tmp_path / "run",
        gateways=2,
        nats_port=4222,
        first_port=8000,
        history_port=8090,
        presence_port=8091,
        namespaces=ROOT / "config" / "namespaces.yaml",
        jaeger=jaeger,
        jaeger_ports=JaegerPorts(14317, 14318, 26686, 26685),
    )


def test_with_jaeger_every_service_exports_to_it_and_nats_does_not(tmp_path: Path) -> None:
    programs = _stack(tmp_path, Path("/opt/jaeger")).programs()
    assert programs[0].name == "jaeger"
    assert programs[0].argv[0] == "/opt/jaeger"
    for program in programs[1:]:
        endpoint = program.env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        assert endpoint == (None if program.name == "nats" else "http://127.0.0.1:14317"), program.name
    assert {"gateway-1", "gateway-2", "history", "presence", "api", "auth", "events"} <= {p.name for p in programs}


def test_without_jaeger_the_environment_is_left_to_the_caller(tmp_path: Path) -> None:
    programs = _stack(tmp_path, None).programs()
    assert "jaeger" not in {p.name for p in programs}
    assert all("OTEL_EXPORTER_OTLP_ENDPOINT" not in p.env for p in programs)


def test_jaeger_ports_are_checked_before_the_start_and_its_ui_is_in_the_banner(tmp_path: Path) -> None:
    stack = _stack(tmp_path, Path("/opt/jaeger"))
    ports = {port for port, _ in stack.ports().values()}
    assert {14317, 14318, 26686, 26685} <= ports
    assert "http://127.0.0.1:26686" in stack.describe()
    assert "  jaeger:" not in _stack(tmp_path, None).describe()


def test_the_jaeger_config_listens_only_where_it_is_told() -> None:
    config = yaml.safe_load(render_config("127.0.0.1", JaegerPorts(1, 2, 3, 4)))
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"] == "127.0.0.1:1"
    assert protocols["http"]["endpoint"] == "127.0.0.1:2"
    query = config["extensions"]["jaeger_query"]
    assert (query["http"]["endpoint"], query["grpc"]["endpoint"]) == ("127.0.0.1:3", "127.0.0.1:4")
    assert config["service"]["pipelines"]["traces"]["receivers"] == ["otlp"]
