"""Tracing configuration from OpenTelemetry's standard environment (`meshcast.common.telemetry`)."""

from __future__ import annotations

import os

import pytest
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, TraceIdRatioBased

from meshcast.common.settings import ConfigError
from meshcast.common.telemetry import DEFAULT_SAMPLER, resource_attributes, sampled, sampler_from, tracing_config


def test_no_endpoint_means_tracing_is_off() -> None:
    assert tracing_config("meshcast-gateway", "", environ={}) is None
    assert tracing_config("meshcast-gateway", "", environ={"OTEL_TRACES_SAMPLER": "always_on"}) is None


def test_the_endpoint_comes_from_the_setting_then_the_traces_then_the_general_variable() -> None:
    general = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://general:4317"}
    traces = {**general, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:4317"}
    assert (config := tracing_config("s", "", environ=general)) is not None
    assert config.endpoint == "http://general:4317"
    assert (config := tracing_config("s", "", environ=traces)) is not None
    assert config.endpoint == "http://traces:4317"
    assert (config := tracing_config("s", "http://setting:4317", environ=traces)) is not None
    assert config.endpoint == "http://setting:4317"


def test_sdk_disabled_turns_tracing_off_whatever_the_endpoint() -> None:
    env = {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4317"}
    assert tracing_config("s", "http://jaeger:4317", environ=env) is None


def test_plain_http_endpoints_are_insecure_https_ones_are_not() -> None:
    plain = tracing_config("s", "http://jaeger:4317", environ={})
    tls = tracing_config("s", "https://collector.example:4317", environ={})
    assert plain is not None
    assert plain.insecure
    assert tls is not None
    assert not tls.insecure


def test_the_default_sampler_follows_the_parent_and_samples_every_new_trace() -> None:
    sampler = sampler_from({})
    assert DEFAULT_SAMPLER == "parentbased_always_on"
    assert isinstance(sampler, ParentBased)
    assert sampler._root is ALWAYS_ON


def test_a_parent_based_ratio_sampler_from_the_environment() -> None:
    sampler = sampler_from({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"})
    assert isinstance(sampler, ParentBased)
    root = sampler._root
    assert isinstance(root, TraceIdRatioBased)
    assert root.rate == 0.25


def test_a_ratio_sampler_without_an_argument_samples_everything() -> None:
    root = sampler_from({"OTEL_TRACES_SAMPLER": "traceidratio"})
    assert isinstance(root, TraceIdRatioBased)
    assert root.rate == 1.0


def test_always_off_and_parent_based_always_off() -> None:
    assert sampler_from({"OTEL_TRACES_SAMPLER": "always_off"}) is ALWAYS_OFF
    parent_based = sampler_from({"OTEL_TRACES_SAMPLER": "parentbased_always_off"})
    assert isinstance(parent_based, ParentBased)
    assert parent_based._root is ALWAYS_OFF


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_TRACES_SAMPLER": "sometimes"},
        {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "half"},
        {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.5"},
    ],
    ids=["unknown sampler", "not a number", "over one"],
)
def test_a_bad_sampler_is_a_configuration_error_naming_the_variable(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="OTEL_TRACES_SAMPLER"):
        tracing_config("s", "http://jaeger:4317", environ=env)


def test_the_resource_names_the_service_and_its_instance() -> None:
    attributes = resource_attributes("meshcast-gateway", instance="gateway-2", environ={})
    assert attributes["service.name"] == "meshcast-gateway"
    assert attributes["service.instance.id"] == "gateway-2"
    assert attributes["process.pid"] == str(os.getpid())


def test_without_a_node_name_the_instance_is_the_host_and_process() -> None:
    attributes = resource_attributes("meshcast-gateway", environ={})
    assert attributes["service.instance.id"].endswith(f"-{os.getpid()}")


def test_otel_service_name_wins_over_resource_attributes_and_the_service_default() -> None:
    env = {"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attributes,deployment.environment=staging"}
    assert resource_attributes("meshcast-api", environ=env)["service.name"] == "from-attributes"
    assert resource_attributes("meshcast-api", environ={**env, "OTEL_SERVICE_NAME": "edge"})["service.name"] == "edge"
    assert resource_attributes("meshcast-api", environ=env)["deployment.environment"] == "staging"


def test_an_instance_id_in_resource_attributes_wins_over_the_node_name() -> None:
    env = {"OTEL_RESOURCE_ATTRIBUTES": "service.instance.id=pod-7%2Cb"}
    assert resource_attributes("meshcast-api", instance="api-1", environ=env)["service.instance.id"] == "pod-7,b"


def test_sampled_reads_the_traceparent_flags() -> None:
    trace_id, span_id = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    assert sampled(f"00-{trace_id}-{span_id}-01")
    assert not sampled(f"00-{trace_id}-{span_id}-00")
    assert not sampled("garbage")
