"""Settings base of every service: ``MESHCAST_*`` env vars plus an optional file.

A service subclasses `ServiceSettings`; its fields are read from environment
variables ``MESHCAST_<FIELD>`` and from the YAML file named by
``MESHCAST_CONFIG_FILE`` (env wins over the file). Invalid values stop the
start-up with a `ConfigError` naming the field.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Self

import yaml
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

CONFIG_FILE_ENV = "MESHCAST_CONFIG_FILE"
# One or more NATS subject tokens without wildcards (nats-py appends `.<unique id>`).
_INBOX_PREFIX_PATTERN = r"^[^\s.*>]+(\.[^\s.*>]+)*$"


class ConfigError(Exception):
    """A configuration value or file is invalid; the message names the field."""


def describe_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(root)"
        lines.append(f"  {field}: {err['msg']}")
    return "\n".join(lines)


class _YamlFileSource(PydanticBaseSettingsSource):
    """Values from the YAML file named by MESHCAST_CONFIG_FILE, if any."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        path = os.environ.get(CONFIG_FILE_ENV)
        self._values: dict[str, Any] = load_yaml_mapping(Path(path)) if path else {}

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return {k: v for k, v in self._values.items() if k in self.settings_cls.model_fields}


def load_yaml_mapping(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


class ServiceSettings(BaseSettings):
    """Settings every service shares."""

    model_config: ClassVar[SettingsConfigDict] = SettingsConfigDict(
        env_prefix="MESHCAST_", extra="ignore", validate_default=True
    )

    nats_url: str = "nats://127.0.0.1:4222"
    # False: try the servers of nats_url in the order given (tests, pinned topologies).
    nats_randomize: bool = True
    # Connecting, requests and JetStream calls: how long to wait for NATS.
    nats_timeout: float = Field(5.0, gt=0)
    # Prefix of this connection's inboxes (request replies, JetStream acks, KV
    # watches): `_INBOX_<user>` where NATS grants each user only its own
    # (meshcast.common.natsauth); nats-py's default otherwise.
    nats_inbox_prefix: str = Field("_INBOX", pattern=_INBOX_PREFIX_PATTERN)
    subject_prefix: str = "meshcast"
    log_level: str = "info"
    otlp_endpoint: str = ""
    service_name: str = "meshcast"
    # This process's name in the server API's `info` (default `<kind> <host name>`;
    # a gateway's: its host name).
    node_name: str = ""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlFileSource(settings_cls))

    @classmethod
    def load(cls, **overrides: Any) -> Self:
        """Settings from env and file; ConfigError names the bad field."""
        try:
            return cls(**overrides)
        except ValidationError as exc:
            source = os.environ.get(CONFIG_FILE_ENV) or "environment (MESHCAST_*)"
            raise ConfigError(describe_validation_error(exc, source)) from exc
