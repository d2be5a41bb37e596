"""Daemon settings: defaults < config file (TOML/JSON) < environment (XGRADER_*).

Secrets (queue password, basic-auth password, LLM key) are SecretStr: they
come from the environment or a `*_file` path, are never logged, and are never
passed into a sandbox.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from xgrader.backends.base import Limits
from xgrader.resources import EXAMPLES_DIR, RUNNER_DIR

# Shipped with the package (xgrader/resources.py): in a checkout, payload_handlers/ and sandbox/.
DEFAULT_HANDLERS = EXAMPLES_DIR
DEFAULT_RUNNER_DIR = RUNNER_DIR


class HintSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    base_url: str | None = None        # any OpenAI-compatible endpoint
    model: str = "gpt-4o-mini"
    api_key: SecretStr | None = None   # XGRADER_HINTS__API_KEY
    budget_s: float = Field(20.0, gt=0)
    request_timeout_s: float = Field(10.0, gt=0)
    max_retries: int = Field(1, ge=0)
    max_concurrency: int = Field(4, ge=1)
    repair: bool = False
    store: str = "sqlite:///xgrader-hints.db"  # or redis://host:port/db
    quota_per_assignment: int = Field(10, ge=0)
    quota_per_type: int = Field(5, ge=0)
    breaker_failures: int = Field(5, ge=1)
    breaker_reset_s: float = Field(60.0, gt=0)
    # -- the student page (rate, escalate, read the answer) and the staff side --
    page_url: str | None = None              # public URL of the hint pages, e.g. https://grader.example.edu/hints/
    link_secret: SecretStr | None = None     # HMAC key of the signed links (>= 32 characters)
    link_secret_file: Path | None = None
    link_ttl_s: float = Field(30 * 24 * 3600.0, gt=0)    # a link expires after this
    escalations_per_assignment: int = Field(3, ge=0)     # per student and assignment
    note_max_chars: int = Field(1000, ge=1, le=10_000)   # the student's note to the staff
    answers_in_feedback: bool = False        # staff answers also go into the student's next feedback

    @model_validator(mode="after")
    def _page(self) -> "HintSettings":
        if self.link_secret_file and not self.link_secret:
            object.__setattr__(self, "link_secret", SecretStr(self.link_secret_file.read_text().strip()))
        if self.link_secret is not None and len(self.link_secret.get_secret_value()) < 32:
            raise ValueError("hints.link_secret must be at least 32 characters (e.g. `openssl rand -hex 32`)")
        if self.page_url is not None:
            if not self.page_url.startswith(("http://", "https://")):
                raise ValueError(f"hints.page_url must be an http(s) URL, not {self.page_url!r}")
            if self.link_secret is None:
                raise ValueError("hints.page_url needs hints.link_secret (XGRADER_HINTS__LINK_SECRET)")
        return self


class LedgerSettings(BaseModel):
    """The attempt ledger: every graded submission recorded (docs/ledger.md)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    url: str = "sqlite:///xgrader-ledger.db"   # or postgresql://user@host:port/db (replicas share it)
    retention_days: float | None = Field(None, gt=0)  # attempts and files older than this are deleted
    max_file_bytes: int = Field(5_000_000, ge=0)  # larger files are recorded by hash only
    connect_timeout_s: float = Field(3.0, gt=0)   # an unreachable store costs a child at most this, after its reply


class Settings(BaseSettings):
    """Every field can be set as XGRADER_<FIELD> (nested: XGRADER_HINTS__MODEL)."""

    model_config = SettingsConfigDict(
        env_prefix="XGRADER_", env_nested_delimiter="__", extra="forbid", secrets_dir=None
    )

    # -- queue ---------------------------------------------------------------
    queue_url: str = "http://127.0.0.1:18040/xqueue/"
    # NoDecode: XGRADER_QUEUE_NAMES=a,b is split by _split_names (not parsed as JSON first).
    queue_names: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["xgrader"])
    queue_user: str = "xgrader"
    queue_password: SecretStr = SecretStr("")
    queue_password_file: Path | None = None
    # Optional HTTP Basic auth for a proxy in front of the queue.
    basic_auth_user: str | None = None
    basic_auth_password: SecretStr | None = None
    request_timeout_s: float = Field(10.0, gt=0)
    put_result_timeout_s: float = Field(60.0, ge=30)  # xqueue calls the LMS synchronously
    max_file_bytes: int = Field(5_000_000, gt=0)
    poll_min_s: float = Field(0.05, gt=0)
    poll_max_s: float = Field(5.0, gt=0)
    # What `score` means to the server: points (legacy xqueue / the LMS's
    # CodeResponse) or a fraction 0..1 (edx-submissions scales it by the
    # problem's points). auto: a fraction for 36-character UUID keys (what
    # edx-submissions issues), points otherwise; the choice is logged.
    score_format: Literal["auto", "points", "fraction"] = "auto"
    # Per queue, over score_format: {"q1": "fraction"} or q1=fraction,q2=points.
    score_formats: Annotated[dict[str, Literal["auto", "points", "fraction"]], NoDecode] = Field(
        default_factory=dict)
    # The server's lease (a pulled, unanswered submission is served again
    # after it); None: 300 s on edx-submissions, 60 s otherwise. Checked
    # against job_timeout_s at start-up.
    queue_lease_s: float | None = Field(None, gt=0)
    # Grading results kept by (submission id, body hash) so a re-served
    # submission gets its known result again instead of a new grading.
    result_cache_size: int = Field(10_000, ge=0)   # 0: off
    result_cache_ttl_s: float = Field(3600.0, gt=0)  # longer than any lease
    # Refused logins (the server answered no) before the daemon exits 3,
    # tried 5 s apart: about a minute. Connection failures are retried forever.
    login_max_refusals: int = Field(12, ge=1)
    # Hosts files may be downloaded from although they resolve to loopback,
    # link-local or private addresses: name, name:port, IP or CIDR, comma-separated.
    file_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # -- grading -------------------------------------------------------------
    handlers: Path = DEFAULT_HANDLERS
    runner_dir: Path = DEFAULT_RUNNER_DIR
    sandbox: Literal["auto", "bwrap", "docker", "unsafe"] = "auto"
    sandbox_python: str = "/usr/bin/python3"   # the bwrap backend's interpreter (bound read-only)
    sandbox_venv: Path | None = None           # extra site-packages for the sandbox (pytest...)
    docker_image: str = "xgrader-grader:latest"
    docker_runtime: str | None = None          # e.g. runsc
    docker_url: str | None = None              # e.g. unix:///run/podman/podman.sock
    docker_api_timeout_s: float = Field(10.0, gt=0)  # every engine API call; a hung engine -> sandbox error
    concurrency: int = Field(2, ge=1)
    job_timeout_s: float = Field(120.0, gt=0)  # the forked child's hard wall-clock limit
    forker: bool = True                        # job children forked by a frozen copy of the daemon (daemon/forker.py)
    max_attempts: int = Field(3, ge=1)         # infrastructure failures before "could not be graded"
    shutdown_grace_s: float = Field(30.0, ge=0)
    stall_timeout_s: float = Field(300.0, gt=0)  # outer watchdog: no loop progress -> exit non-zero
    # The sandbox backend's check failing this long (no pulls meanwhile): exit 4.
    backend_unready_exit_s: float = Field(300.0, gt=0)
    default_limits: Limits = Field(default_factory=Limits)
    limit_ceilings: Limits = Field(
        default_factory=lambda: Limits(
            wall_s=60, cpu_s=30, memory_mb=1024, pids=256, output_bytes=10_000_000,
            tmp_mb=256, file_mb=64, open_files=256,
        )
    )
    warm_pool: int | None = Field(None, ge=0)  # pre-started single-use sandboxes; None: warm_pool_for decides
    sandbox_fork_server: bool = True           # bwrap: fork each job's sandbox from a pre-started server
    sandbox_pair_cpu: bool = True              # bwrap, forked jobs: a pytest submission's two sandboxes on one CPU

    # -- operations ----------------------------------------------------------
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None            # /metrics, /healthz, /readyz
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: str = "info"

    hints: HintSettings = Field(default_factory=HintSettings)
    ledger: LedgerSettings = Field(default_factory=LedgerSettings)

    @field_validator("queue_names", "file_hosts", mode="before")
    @classmethod
    def _split_names(cls, v: Any) -> Any:
        if isinstance(v, str):
            s = v.strip()
            if s.startswith("["):
                return json.loads(s)
            return [n.strip() for n in s.split(",") if n.strip()]
        return v

    @field_validator("score_formats", mode="before")
    @classmethod
    def _split_formats(cls, v: Any) -> Any:
        if isinstance(v, str):
            s = v.strip()
            if s.startswith("{"):
                return json.loads(s)
            pairs = [p.split("=", 1) for p in s.split(",") if p.strip()]
            if any(len(p) != 2 for p in pairs):
                raise ValueError("expected queue=format pairs, e.g. q1=fraction,q2=points")
            return {q.strip(): f.strip() for q, f in pairs}
        return v

    @field_validator("queue_url")
    @classmethod
    def _slash(cls, v: str) -> str:
        return v if v.endswith("/") else v + "/"

    @model_validator(mode="after")
    def _password_file(self) -> "Settings":
        if self.queue_password_file and not self.queue_password.get_secret_value():
            text = self.queue_password_file.read_text().strip()
            object.__setattr__(self, "queue_password", SecretStr(text))
        return self

    @classmethod
    def load(cls, config_file: Path | None = None, **overrides: Any) -> "Settings":
        """Config file values are defaults; the environment wins over them;
        explicit overrides (CLI flags) win over both."""
        file_values: dict[str, Any] = {}
        if config_file is not None:
            raw = config_file.read_bytes()
            file_values = tomllib.loads(raw.decode()) if config_file.suffix == ".toml" else json.loads(raw)
        env_values = cls().model_dump(exclude_unset=True)  # only what the env set
        merged = {**file_values, **env_values, **overrides}
        return cls.model_validate(merged) if merged else cls()

    def warm_pool_for(self, backend: str, *, daemon: bool) -> int:
        """Sandboxes to pre-start for `backend` ("bwrap", "docker"). An explicit
        `warm_pool` (XGRADER_WARM_POOL) applies everywhere. Unset, it is 1 for
        the daemon (`xgrader run`) with bwrap: each ready child pre-starts its
        one sandbox while the daemon waits for work (idle pull-to-post ~3x
        shorter for about the same CPU, docs/performance.md); 0 elsewhere: a
        one-off `grade` or `check` would start sandboxes nothing uses."""
        if self.warm_pool is not None:
            return self.warm_pool
        return 1 if daemon and backend == "bwrap" else 0

    def score_format_for(self, queue: str) -> str:
        """points | fraction | auto, for one queue."""
        return self.score_formats.get(queue, self.score_format)

    def limits_for(self, requested: Limits | None) -> Limits:
        return (requested or self.default_limits).clamp(self.limit_ceilings)

