"""Signed, expiring links to a hint's student page, and the tokens of its
forms. Signing is itsdangerous' (HMAC-SHA256 with a key derived per purpose
from the operator's `hints.link_secret`, constant-time checks, the time of
signing inside the token).

A link carries only the hint's decision number and when it was signed: no
student id, no name, nothing personal. Anyone holding the link can use the
page (the LMS shows it only to the student whose feedback it is in).

A form token binds one page view to that hint and to the browser's cookie
(a signed double-submit cookie): a token from another hint's page, another
browser, or a forged one is refused. Each token is used once (the store
remembers used ones until they expire): a replayed or doubled POST is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

from itsdangerous import BadData, SignatureExpired, URLSafeTimedSerializer

FORM_TTL_S = 24 * 3600.0      # a page left open for a day can still be sent


class LinkError(Exception):
    """A link or form token that is refused; `status` is the HTTP answer."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class HintLinks:
    def __init__(self, secret: str, page_url: str, ttl_s: float) -> None:
        if len(secret) < 32:
            raise ValueError("the link secret must be at least 32 characters")
        self.page_url = page_url.rstrip("/") + "/"
        path = urlsplit(self.page_url).path or "/"
        self.prefix = path if path.endswith("/") else path + "/"
        self.ttl_s = ttl_s
        self._secret = secret
        self._link = self._serializer("xgrader-hint-link")
        self._form = self._serializer("xgrader-hint-form")
        self._session = self._serializer("xgrader-hint-staff-session")

    def _serializer(self, salt: str) -> URLSafeTimedSerializer:
        return URLSafeTimedSerializer(self._secret, salt=salt, signer_kwargs={"digest_method": hashlib.sha256})

    # -- the link in the feedback ---------------------------------------------------
    def url(self, audit_id: int) -> str:
        return f"{self.page_url}h/{self._link.dumps(int(audit_id))}"

    def verify(self, token: str) -> int:
        """The hint's decision number, or LinkError: 403 changed or forged, 410 expired."""
        if len(token) > 200:
            raise LinkError("This link is not valid: it was changed or is incomplete.", 403)
        try:
            value = self._link.loads(token, max_age=self.ttl_s)
        except SignatureExpired:
            raise LinkError("This link has expired. Links to hints are valid for "
                            f"{self.ttl_s / 86400:g} days.", 410) from None
        except BadData:
            raise LinkError("This link is not valid: it was changed or is incomplete.", 403) from None
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise LinkError("This link is not valid: it was changed or is incomplete.", 403)
        return value

    # -- forms of the student page -----------------------------------------------------
    @staticmethod
    def new_cookie() -> str:
        return secrets.token_urlsafe(24)

    def form_token(self, audit_id: int, cookie: str) -> str:
        return self._form.dumps([int(audit_id), secrets.token_hex(16), _digest(cookie)])

    def verify_form(self, token: str, audit_id: int, cookie: str) -> str:
        """The token's one-time nonce, or LinkError (403: forged, another
        hint's or another browser's; 410: expired)."""
        try:
            hint, nonce, bound = self._form.loads(token, max_age=FORM_TTL_S)
        except SignatureExpired:
            raise LinkError("This page is too old: reload it and try again.", 410) from None
        except (BadData, ValueError, TypeError):
            raise LinkError("The form check failed (CSRF): reload the page and try again.", 403) from None
        if hint != audit_id:
            raise LinkError("This form belongs to another hint.", 403)
        if not cookie or not hmac.compare_digest(str(bound), _digest(cookie)):
            raise LinkError("The form check failed (CSRF): your browser must accept cookies from this "
                            "site; reload the page and try again.", 403)
        return str(nonce)

    # -- staff ----------------------------------------------------------------------
    def staff_csrf(self, session_key: str) -> str:
        """The CSRF token of a staff session's forms."""
        return hmac.new(self._secret.encode(), b"staff-csrf\0" + session_key.encode(), hashlib.sha256).hexdigest()

    def staff_session(self, user: str) -> str:
        """A signed staff session cookie (serve-hints' own login)."""
        return self._session.dumps([user, secrets.token_hex(8)])

    def staff_user(self, cookie: str, max_age: float) -> str | None:
        try:
            user, _nonce = self._session.loads(cookie, max_age=max_age)
        except (BadData, ValueError, TypeError):
            return None
        return str(user)
