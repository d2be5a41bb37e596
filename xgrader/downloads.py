"""Downloading a submission's files (`xqueue_files`) without leaking
credentials or reaching what the grader host can reach.

- **Credentials go to the queue only.** The queue session (its cookies,
  basic auth) is used for URLs on the queue's own origin (scheme, host,
  port); every other URL is fetched by a session that carries none.
- **No SSRF.** For any other origin the address is checked when the
  connection is made, after DNS resolution, on the very address connected
  to (no second lookup to rebind): loopback, link-local, private and other
  non-global addresses are refused unless `XGRADER_FILE_HOSTS` names the
  host (`name`, `name:port`) or the address (`10.1.2.3`, `10.0.0.0/8`).
  Downloads never go through an HTTP proxy (the check needs the real peer).
- **Redirects** are followed (at most :data:`MAX_REDIRECTS`) only within the
  same origin; a redirect to another origin is refused.
- Each file is capped at `max_file_bytes` (10x in total, :data:`MAX_FILES`
  files at most); a `URL_FOR_EXTERNAL_DICTS` map is fetched first; a
  relative URL (edx-submissions' default media URLs) is taken relative to
  the queue.

A refused or malformed URL raises :class:`FilesPayloadError` (the daemon
answers the submission with the reason, no retry); a network failure
raises :class:`~xgrader.errors.InfraError` (retried, bounded).
"""

from __future__ import annotations

import ipaddress
import json
import socket
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from tenacity import Retrying, retry_if_exception, stop_after_attempt, stop_after_delay, wait_random_exponential
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util.connection import create_connection

from xgrader.errors import InfraError, SubmissionError
from xgrader.logs import clip
from xgrader.wire import EXTERNAL_DICTS_KEY, PayloadError

if TYPE_CHECKING:
    from xgrader.config import Settings

MAX_FILES = 200
MAX_REDIRECTS = 5
RETRY_ATTEMPTS = 4
RETRY_MAX_S = 20.0
REDIRECTS = {301, 302, 303, 307, 308}
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class FilesPayloadError(PayloadError, SubmissionError):
    """A bad xqueue_files map, file, or URL: the child answers it as a
    0-point result naming the reason (SubmissionError) instead of retrying."""

    def __init__(self, detail: str) -> None:
        super().__init__("xqueue_files", detail)


class AddressRefused(FilesPayloadError):
    """Raised at connect time: the host resolved to an address files may not
    come from. Not an OSError, so urllib3 neither wraps nor retries it."""


def origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or (443 if scheme == "https" else 80)


class AddressPolicy:
    """Which peer addresses a file host may have: global ones, and whatever
    the operator's allowlist (`XGRADER_FILE_HOSTS`) names."""

    def __init__(self, allow: list[str] | tuple[str, ...] = ()) -> None:
        self.names: set[tuple[str, int | None]] = set()
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in allow:
            entry = entry.strip().lower()
            if not entry:
                continue
            try:
                self.networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            parts = urlsplit("//" + entry)
            self.names.add((parts.hostname or entry, parts.port))

    def refusal(self, host: str, port: int, address: Address) -> str | None:
        """Why `address` (what `host` resolved to) is refused, or None."""
        host = host.lower().strip("[]")
        if (host, None) in self.names or (host, port) in self.names:
            return None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in net for net in self.networks):
            return None
        if address.is_global:
            return None
        kind = ("loopback" if address.is_loopback else "link-local" if address.is_link_local
                else "unspecified" if address.is_unspecified else "private" if address.is_private
                else "not a public address")
        return f"{host} resolves to {address} ({kind}); list it in XGRADER_FILE_HOSTS to allow it"


def _guarded_connection(base: type[HTTPConnection], policy: AddressPolicy) -> type[HTTPConnection]:
    class Guarded(base):  # type: ignore[valid-type, misc]
        def _new_conn(self) -> socket.socket:
            """Resolve, check each address, connect to that very address."""
            try:
                infos = socket.getaddrinfo(self._dns_host, self.port, type=socket.SOCK_STREAM)
            except socket.gaierror as exc:
                raise NewConnectionError(self, f"cannot resolve {self.host}: {exc}") from None
            reasons, last = [], None
            for _family, _type, _proto, _name, sockaddr in infos:
                address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
                reason = policy.refusal(self.host, self.port, address)
                if reason:
                    reasons.append(reason)
                    continue
                try:
                    sock = create_connection((str(address), self.port), self.timeout,
                                             source_address=self.source_address,
                                             socket_options=self.socket_options)
                except socket.timeout:
                    raise ConnectTimeoutError(self, f"connecting to {self.host} timed out") from None
                except OSError as exc:
                    last = exc
                    continue
                return sock
            if last is None and reasons:
                raise AddressRefused(reasons[0])
            raise NewConnectionError(self, f"cannot connect to {self.host}: {last}")

    return Guarded


class GuardedAdapter(HTTPAdapter):
    """A requests adapter whose connections check their peer address."""

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        http_conn = _guarded_connection(HTTPConnection, self.policy)
        https_conn = _guarded_connection(HTTPSConnection, self.policy)
        self.poolmanager.pool_classes_by_scheme = {
            "http": type("GuardedPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn}),
            "https": type("GuardedHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn}),
        }


def plain_session(policy: AddressPolicy) -> requests.Session:
    """No cookies, no auth, no proxy, no environment: only the guarded adapters."""
    import os

    session = requests.Session()
    session.trust_env = False
    session.headers["User-Agent"] = "xgrader"
    session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    adapter = GuardedAdapter(policy)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class _Retryable(Exception):
    def __init__(self, status: int) -> None:
        self.status = status
        super().__init__(f"HTTP {status}")


class FileFetcher:
    """Downloads one submission's files. `queue_url` and `queue_session`:
    the queue whose origin may have credentials (None in push mode, where
    nothing is sent with credentials and every host is checked)."""

    def __init__(self, settings: Settings, *, queue_url: str | None = None,
                 queue_session: Callable[[], requests.Session] | None = None,
                 timeout: tuple[float, float] | None = None) -> None:
        self.settings = settings
        self.queue_url = queue_url
        self.queue_origin = origin(queue_url) if queue_url else None
        self._queue_session = queue_session
        self.policy = AddressPolicy(list(getattr(settings, "file_hosts", []) or []))
        self._plain: requests.Session | None = None
        request_timeout = settings.request_timeout_s
        self.timeout = timeout or (min(request_timeout, 10.0), request_timeout)

    def close(self) -> None:
        if self._plain is not None:
            self._plain.close()

    def fetch_files(self, files: Any) -> dict[str, bytes]:
        """Every file of `xqueue_files` (name -> URL)."""
        if not isinstance(files, dict):
            raise FilesPayloadError("must map file names to URLs")
        if set(files) == {EXTERNAL_DICTS_KEY}:
            raw = self.download(EXTERNAL_DICTS_KEY, files[EXTERNAL_DICTS_KEY])
            try:
                files = json.loads(raw)
            except ValueError:
                raise FilesPayloadError("the URL_FOR_EXTERNAL_DICTS map is not JSON") from None
        if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                  for k, v in files.items()):
            raise FilesPayloadError("must map file names to URL strings")
        if len(files) > MAX_FILES:
            raise FilesPayloadError(f"{len(files)} files; at most {MAX_FILES} are accepted")
        total_cap = 10 * self.settings.max_file_bytes
        out: dict[str, bytes] = {}
        total = 0
        for name, url in files.items():
            if (not name or "/" in name or "\\" in name or name in (".", "..")
                    or any(ord(ch) < 32 for ch in name)):  # NUL, newline and other controls
                raise FilesPayloadError(f"bad file name {name[:80]!r}")
            out[name] = self.download(name, url)
            total += len(out[name])
            if total > total_cap:
                raise FilesPayloadError(f"files larger than {total_cap} bytes in total")
        return out

    # -- one file ----------------------------------------------------------------
    def download(self, name: str, url: str) -> bytes:
        label = f"file {name[:80]!r}"
        url = self._absolute(label, url)
        cap = self.settings.max_file_bytes
        try:
            resp = self._get(label, url)
        except FilesPayloadError:
            raise
        except (requests.RequestException, _Retryable) as exc:
            raise InfraError(f"{label}: download failed: {clip(_why(exc), 200)}") from None
        with resp:
            if resp.status_code != 200:
                raise InfraError(f"{label}: HTTP {resp.status_code}")
            length = resp.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > cap:
                raise FilesPayloadError(f"{label} is larger than {cap} bytes")
            chunks, size = [], 0
            try:
                for chunk in resp.iter_content(65536):
                    size += len(chunk)
                    if size > cap:
                        raise FilesPayloadError(f"{label} is larger than {cap} bytes")
                    chunks.append(chunk)
            except requests.RequestException as exc:
                raise InfraError(f"{label}: download failed: {clip(str(exc), 200)}") from None
        return b"".join(chunks)

    def _absolute(self, label: str, url: str) -> str:
        if not isinstance(url, str) or not url:
            raise FilesPayloadError(f"{label}: no URL")
        scheme = urlsplit(url).scheme.lower()
        if not scheme and url.startswith("/") and not url.startswith("//") and self.queue_url:
            return urljoin(self.queue_url, url)
        if scheme not in ("http", "https"):
            raise FilesPayloadError(f"{label}: URL is not http(s)")
        return url

    def _session_for(self, url: str) -> requests.Session:
        if self.queue_origin is not None and self._queue_session is not None \
                and origin(url) == self.queue_origin:
            return self._queue_session()
        if self._plain is None:
            self._plain = plain_session(self.policy)
        return self._plain

    def _get(self, label: str, url: str) -> requests.Response:
        """GET with same-origin redirects only, retried on connection errors
        and 5xx like every idempotent call."""
        for _ in range(MAX_REDIRECTS + 1):
            resp = self._get_once(url)
            if resp.status_code not in REDIRECTS:
                return resp
            location = resp.headers.get("Location", "")
            resp.close()
            target = urljoin(url, location)
            if not location or origin(target) != origin(url):
                raise FilesPayloadError(f"{label}: redirected to another origin ({origin(target)[1] or '?'}); "
                                        "only same-origin redirects are followed")
            url = target
        raise FilesPayloadError(f"{label}: more than {MAX_REDIRECTS} redirects")

    def _get_once(self, url: str) -> requests.Response:
        retrying = Retrying(
            stop=stop_after_attempt(RETRY_ATTEMPTS) | stop_after_delay(RETRY_MAX_S),
            wait=wait_random_exponential(multiplier=0.2, max=4.0),
            retry=retry_if_exception(lambda e: isinstance(e, (requests.ConnectionError, requests.Timeout,
                                                              _Retryable))),
            reraise=True,
        )

        def once() -> requests.Response:
            resp = self._session_for(url).get(url, timeout=self.timeout, stream=True, allow_redirects=False)
            if resp.status_code >= 500:
                resp.close()
                raise _Retryable(resp.status_code)
            return resp

        return retrying(once)


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def fetch_files(files: Any, settings: Settings, *, queue_url: str | None = None,
                queue_session: Callable[[], requests.Session] | None = None) -> dict[str, bytes]:
    """One-shot :meth:`FileFetcher.fetch_files` (push mode: no queue)."""
    fetcher = FileFetcher(settings, queue_url=queue_url, queue_session=queue_session)
    try:
        return fetcher.fetch_files(files)
    finally:
        fetcher.close()
