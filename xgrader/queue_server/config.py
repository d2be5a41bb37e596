"""Settings of the bundled queue server, from flags and/or a TOML/JSON file."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator


class QueueServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(18040, ge=0, le=65535)
    db: Path = Path("xgrader-queue.db")
    queues: list[str] = Field(default_factory=lambda: ["xgrader"], min_length=1)
    users: dict[str, SecretStr] = Field(default_factory=dict)
    lease_timeout_s: float = Field(60.0, gt=0)         # legacy SUBMISSION_PROCESSING_DELAY
    session_ttl_s: float = Field(14 * 24 * 3600.0, gt=0)  # Django's two weeks
    # legacy: HTTP 200 envelopes, 302 to login, CSRF ignored.
    # edx: edx-submissions' real status codes and enforced CSRF (for client tests).
    mode: Literal["legacy", "edx"] = "legacy"
    delivery_tries: int = Field(5, ge=1)              # legacy xqueue tries the LMS 5 times
    delivery_backoff_s: float = Field(1.0, gt=0)      # doubled per try
    delivery_timeout_s: float = Field(10.0, gt=0)
    delivery_workers: int = Field(8, ge=1)
    max_upload_bytes: int = Field(50_000_000, gt=0)
    external_dicts_over: int = Field(0, ge=0)         # >0: file maps larger than this go by URL_FOR_EXTERNAL_DICTS
    # HTTP (waitress): clients connected at once (more wait in the listen
    # backlog), threads running requests, idle keep-alive connections' lifetime.
    max_connections: int = Field(100, ge=1, le=10_000)
    threads: int = Field(4, ge=1, le=256)
    idle_timeout_s: float = Field(75.0, gt=0)
    ledger: str = ""          # the graders' attempt ledger (sqlite:///PATH or postgresql://...): the dashboard shows it
    dashboard_page_size: int = Field(50, ge=1, le=500)

    @field_validator("queues")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        for name in v:
            if not name or "," in name or name != name.strip():
                raise ValueError(f"bad queue name {name!r}")
        return list(dict.fromkeys(v))

    @field_validator("users", mode="before")
    @classmethod
    def _users(cls, v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return dict(parse_user(u) for u in v)
        return v

    @classmethod
    def load(cls, config_file: Path | None = None, **overrides: Any) -> "QueueServerConfig":
        """File values are defaults; flags (overrides that are not None) win."""
        values: dict[str, Any] = {}
        if config_file is not None:
            raw = config_file.read_bytes()
            values = tomllib.loads(raw.decode()) if config_file.suffix == ".toml" else json.loads(raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(values)


def parse_user(spec: str) -> tuple[str, str]:
    """NAME:PASSWORD (the password may contain ':')."""
    name, sep, password = spec.partition(":")
    if not sep or not name or not password:
        raise ValueError(f"user must be NAME:PASSWORD, got {spec.split(':')[0]!r}:...")
    return name, password
