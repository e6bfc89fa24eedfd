"""Channel namespaces: per-namespace options, validated from a YAML or TOML file.

```yaml
allow_anonymous: false      # connect without a token
namespaces:
  - name: chat
    history_size: 100       # publications kept per channel (0: no history)
    history_ttl: 300        # seconds
    history_max_bytes: 64MiB  # the namespace's stream holds at most this (0: the history
                              # service's MESHCAST_HISTORY_MAX_BYTES); past it the oldest go
    presence: true
    join_leave: true
    recovery: true
    allow_publish: true
    allow_subscribe: true
  - name: strict             # "strict:abc": the name after the namespace ("abc") must
    channel_regex: "^[a-z]+$"  # contain a match (anchor it to match all of it); else 107
default:                    # channels without a namespace
  allow_publish: true
  allow_subscribe: true
```
A bad file stops start-up with a `ConfigError` naming the field.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from meshcast.bus.channels import name_of, namespace_of

from .settings import ConfigError, describe_validation_error, load_yaml_mapping

_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
# The smallest byte cap of a history stream: one client message of the gateways' default
# max_message_size, with room for its subject and headers.
MIN_HISTORY_BYTES = 1 << 17


class ChannelOptions(BaseModel):
    """What clients may do in the channels of one namespace."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    history_size: int = Field(0, ge=0, le=1_000_000)
    history_ttl: float = Field(0, ge=0)
    # The most bytes the namespace's history stream holds ("64MiB" or a number; 0: the
    # history service's MESHCAST_HISTORY_MAX_BYTES). Past it JetStream drops the oldest
    # publications of the namespace (any channel of it), never refuses a new one.
    history_max_bytes: ByteSize = Field(ByteSize(0), ge=0, le=1 << 50)
    presence: bool = False
    join_leave: bool = False
    force_push_join_leave: bool = False
    recovery: bool = False
    # A client that missed more than this is told "not recovered" instead.
    recovery_max_publications: int = Field(300, ge=0, le=100_000)
    allow_subscribe: bool = True
    allow_subscribe_anonymous: bool = False
    allow_publish: bool = False
    allow_publish_anonymous: bool = False
    allow_history: bool = True
    allow_presence: bool = True
    # presence/presence_stats for clients not subscribed to the channel.
    allow_presence_without_subscribe: bool = False
    publish_info: bool = True
    # Every client publication also becomes a `publication` lifecycle event (events stream).
    publish_events: bool = False
    # Ask a backend (meshcast.proxy.v1.subscribe / .publish) instead of the rules above.
    proxy_subscribe: bool = False
    proxy_publish: bool = False
    # A regular expression (Python `re` syntax) the name after the namespace (and any ``$``)
    # must contain a match of, as Centrifugo's channel_regex (Go's MatchString: searched
    # anywhere, not anchored; write ``^...$`` to match the whole name). No match: error 107.
    channel_regex: str | None = None

    @field_validator("channel_regex")
    @classmethod
    def _regex_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from exc
        return value

    @model_validator(mode="after")
    def _history_consistent(self) -> ChannelOptions:
        if self.history_size and not self.history_ttl:
            raise ValueError("history_size needs history_ttl > 0")
        if self.recovery and not self.history_size:
            raise ValueError("recovery needs history_size > 0")
        if self.history_max_bytes and not self.history_size:
            raise ValueError("history_max_bytes needs history_size > 0")
        if 0 < self.history_max_bytes < MIN_HISTORY_BYTES:
            raise ValueError(f"history_max_bytes must be 0 (the service default) or at least {MIN_HISTORY_BYTES}")
        return self

    def name_allowed(self, name: str) -> bool:
        """Whether `name`, a channel's name after its namespace (`ChannelsConfig.name_of`),
        has a match of `channel_regex` (any name when there is none)."""
        return self.channel_regex is None or re.search(self.channel_regex, name) is not None


class Namespace(ChannelOptions):
    name: str

    @field_validator("name")
    @classmethod
    def _name_valid(cls, value: str) -> str:
        if not _NAME_RE.fullmatch(value):
            raise ValueError("namespace names are 1-64 of A-Z a-z 0-9 _ -")
        return value


class ChannelsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    allow_anonymous: bool = False
    namespace_separator: str = Field(":", min_length=1, max_length=1)
    max_channel_length: int = Field(255, ge=1, le=4096)
    namespaces: list[Namespace] = Field(default_factory=list)
    default: ChannelOptions = Field(default_factory=ChannelOptions)
    _by_name: dict[str, Namespace] = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: Any, /) -> None:
        self._by_name.update((ns.name, ns) for ns in self.namespaces)

    @field_validator("namespaces")
    @classmethod
    def _unique(cls, value: list[Namespace]) -> list[Namespace]:
        seen: set[str] = set()
        for ns in value:
            if ns.name in seen:
                raise ValueError(f"namespace {ns.name!r} appears twice")
            seen.add(ns.name)
        return value

    def name_of(self, channel: str) -> str:
        """`channel`'s name after its namespace: what `channel_regex` is matched against."""
        return name_of(channel, self.namespace_separator)

    def options_for(self, channel: str) -> ChannelOptions | None:
        """The options of `channel`'s namespace; None when it is unknown."""
        ns = namespace_of(channel, self.namespace_separator)
        if not ns:
            return self.default
        return self._by_name.get(ns)


def load_channels_config(path: Path | None) -> ChannelsConfig:
    """The config in `path` (YAML, or TOML by extension); defaults when None."""
    if path is None:
        return ChannelsConfig()
    data: dict[str, Any]
    if path.suffix == ".toml":
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from exc
    else:
        data = load_yaml_mapping(path)
    try:
        return ChannelsConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, str(path))) from exc
