"""Chat Completions over any OpenAI-compatible endpoint (hosted, vLLM,
llama.cpp, Ollama) through the `openai` client, with our own bounded retries
so every call fits the submission's remaining time budget."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import structlog

from xgrader.extras import require

openai = require("openai", "hints")
log = structlog.get_logger(__name__)
T = TypeVar("T")


class LLMError(Exception):
    """The endpoint failed (5xx, connection drop, bad response) after retries."""


class LLMTimeout(LLMError):
    """The time budget ran out before an answer came."""


@dataclass(frozen=True)
class Completion:
    text: str
    tokens: int
    seconds: float


class LLMClient:
    def __init__(self, base_url: str | None, model: str, api_key: str | None,
                 request_timeout_s: float, max_retries: int, json_mode: bool = True) -> None:
        self.model = model
        self.request_timeout_s = request_timeout_s
        self.max_retries = max_retries
        self.json_mode = json_mode
        self._args = dict(base_url=base_url, api_key=api_key or "unused", timeout=request_timeout_s,
                          max_retries=0)  # the client's own retries ignore our budget: we retry ourselves
        self._client: tuple[int, openai.OpenAI] | None = None

    def _openai(self) -> openai.OpenAI:
        # One client (connection pool) per process: the daemon forks a child per submission.
        if self._client is None or self._client[0] != os.getpid():
            self._client = (os.getpid(), openai.OpenAI(**self._args))  # type: ignore[arg-type]
        return self._client[1]

    def chat(self, messages: list[dict[str, str]], deadline: float) -> Completion:
        """One answer before `deadline` (time.monotonic), or LLMTimeout/LLMError.
        Retries transport errors, 5xx and 429 up to max_retries times."""
        started = time.monotonic()
        last: Exception | None = None
        for attempt in range(self.max_retries + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0.05:
                raise LLMTimeout(f"budget exhausted after {attempt} attempt(s): {last}")
            timeout = min(self.request_timeout_s, remaining)
            try:
                kwargs = {"response_format": {"type": "json_object"}} if self.json_mode else {}
                resp = _within(timeout + 0.1, lambda: self._openai().chat.completions.create(
                    model=self.model, messages=messages, temperature=0.2,  # type: ignore[arg-type]
                    timeout=openai.Timeout(timeout, connect=min(timeout, 5.0)), **kwargs,
                ))
            except (openai.APITimeoutError, _Overran) as exc:
                last = exc
                if time.monotonic() >= deadline - 0.05:
                    raise LLMTimeout("no answer within the time budget") from exc
                log.info("hint_llm_retry", attempt=attempt + 1, error="timeout")
                continue
            except (openai.APIConnectionError, openai.InternalServerError, openai.RateLimitError) as exc:
                last = exc
                log.info("hint_llm_retry", attempt=attempt + 1, error=type(exc).__name__)
                time.sleep(min(0.2 * (2 ** attempt), max(0.0, deadline - time.monotonic() - 0.05)))
                continue
            except openai.APIStatusError as exc:  # 4xx: retrying will not help
                raise LLMError(f"endpoint answered {exc.status_code}") from exc
            except openai.OpenAIError as exc:
                raise LLMError(f"{type(exc).__name__}: {exc}") from exc
            choice = resp.choices[0] if resp.choices else None
            text = (choice.message.content if choice and choice.message else None) or ""
            tokens = resp.usage.total_tokens if resp.usage else 0
            return Completion(text=text, tokens=tokens, seconds=time.monotonic() - started)
        if isinstance(last, (openai.APITimeoutError, _Overran)):
            raise LLMTimeout(f"timed out {self.max_retries + 1} time(s)")
        raise LLMError(f"failed {self.max_retries + 1} time(s): {type(last).__name__}: {last}")


class _Overran(Exception):
    """The call outlived its timeout (a server trickling bytes resets the
    client's per-read timeout): abandoned so the budget holds."""


def _within(seconds: float, call: Callable[[], T]) -> T:
    """Run `call` in a daemon thread and wait at most `seconds` for it. An
    overrunning call is left to finish or time out on its own (its thread
    never blocks exit), and _Overran is raised."""
    box: list[Any] = []

    def target() -> None:
        try:
            box.append((True, call()))
        except BaseException as exc:  # handed to the caller below
            box.append((False, exc))

    thread = threading.Thread(target=target, name="xgrader-hint-call", daemon=True)
    thread.start()
    thread.join(max(0.0, seconds))
    if not box:
        raise _Overran(f"no answer within {seconds:.1f} s")
    ok, value = box[0]
    if ok:
        return value
    raise value
