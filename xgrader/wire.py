"""The xqueue wire format as pydantic models (see shared/xqueue-protocol.md).

A pulled submission is up to four layers of JSON:
  1. `content` of the get_submission envelope: an object of three strings
  2. `xqueue_header`: {"submission_id", "submission_key"}
  3. `xqueue_body`: the LMS body {"student_response", "grader_payload", "student_info"}
  4. `grader_payload` (raw text, usually JSON) and `student_info` (JSON string)
plus `xqueue_files`, a JSON map of file name -> URL.

:func:`parse_submission` validates all of them on arrival and raises
:class:`PayloadError` naming the layer and the submission id, so the daemon can
answer the submission with a clear error instead of crashing.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

EXTERNAL_DICTS_KEY = "URL_FOR_EXTERNAL_DICTS"

# xqueue's own answer when a submission cannot be graded at all (protocol doc, section 5).
COULD_NOT_GRADE_MSG = (
    '<div class="capa_alert">Your submission could not be graded. '
    "Please recheck your submission and try again. If the problem persists, "
    "please notify the course staff.</div>"
)


class PayloadError(ValueError):
    """A layer of a pulled submission is malformed."""

    def __init__(self, layer: str, detail: str, submission_id: str | None = None) -> None:
        self.layer = layer
        self.detail = detail
        self.submission_id = submission_id
        where = f" (submission {submission_id})" if submission_id else ""
        super().__init__(f"malformed {layer}{where}: {detail}")


class XQueueHeader(BaseModel):
    """What the grader gets; posted back verbatim (`raw`)."""

    model_config = ConfigDict(frozen=True, extra="allow")

    submission_id: int | str
    submission_key: str = Field(min_length=1)


class StudentInfo(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")

    anonymous_student_id: str = ""
    submission_time: str = ""
    random_seed: int | None = None


class GraderPayload(BaseModel):
    """The problem's <grader_payload>: a JSON object whose `grader` names the
    assignment (edx-submissions keeps only that key), or a bare string."""

    model_config = ConfigDict(frozen=True, extra="allow")

    grader: str = Field(min_length=1)
    hint_type: str | None = None

    @classmethod
    def parse(cls, raw: Any) -> "GraderPayload":
        if isinstance(raw, dict):
            return cls.model_validate(raw)
        if not isinstance(raw, str):
            raise ValueError("grader_payload must be a string or an object")
        text = raw.strip()
        if not text:
            raise ValueError("grader_payload is empty")
        if text[0] in "{[\"":
            value = json.loads(text)
            if isinstance(value, str):
                return cls(grader=value)
            if not isinstance(value, dict):
                raise ValueError("grader_payload JSON must be an object or a string")
            return cls.model_validate(value)
        return cls(grader=text)  # a bare assignment name

    @property
    def options(self) -> dict[str, Any]:
        """Extra keys (per-problem options), if the server kept them."""
        return dict(self.model_extra or {})


class LMSBody(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")

    student_response: str = ""
    grader_payload: str | dict[str, Any] = ""
    student_info: str | dict[str, Any] = "{}"


class Submission(BaseModel):
    """A pulled submission with every layer decoded. Immutable."""

    model_config = ConfigDict(frozen=True)

    header_raw: str          # posted back exactly as received
    header: XQueueHeader
    body: LMSBody
    payload: GraderPayload
    student: StudentInfo
    files: dict[str, str] = Field(default_factory=dict)  # name -> URL (or the external-dicts key)

    @property
    def submission_id(self) -> str:
        return str(self.header.submission_id)


class GraderReply(BaseModel):
    """The xqueue_body a grader posts back. `score` is points as graded
    (legacy xqueue records them as they are; :meth:`as_fraction` gives what
    edx-submissions expects); `msg` must be one well-formed XML element;
    correct=None only for the standard could-not-grade answer."""

    model_config = ConfigDict(frozen=True)

    correct: bool | None
    score: float = Field(ge=0)
    msg: str

    @classmethod
    def could_not_grade(cls) -> "GraderReply":
        return cls(correct=None, score=0, msg=COULD_NOT_GRADE_MSG)

    def as_fraction(self, max_score: float | None) -> "GraderReply":
        """The same reply with `score` as a fraction 0..1 of `max_score`
        (edx-submissions stores round(score x points_possible))."""
        fraction = float(self.score) / float(max_score) if max_score and max_score > 0 else 0.0
        return self.model_copy(update={"score": min(1.0, max(0.0, fraction))})

    def to_body(self) -> str:
        score: float | int = int(self.score) if float(self.score).is_integer() else self.score
        return json.dumps({"correct": self.correct, "score": score, "msg": self.msg})


UUID_KEY = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
HEX32_KEY = re.compile(r"^[0-9a-fA-F]{32}$")


def key_kind(key: str) -> str:
    """`uuid` (edx-submissions: 36-character UUID keys, score as a fraction),
    `hex32` (legacy xqueue and the bundled server: 32 hex digits, points),
    or `other`."""
    if UUID_KEY.match(key):
        return "uuid"
    return "hex32" if HEX32_KEY.match(key) else "other"


def body_digest(content: Any) -> str:
    """What identifies a submission's content across re-serves: a hash of
    its xqueue_body and its file names (file URLs may be signed per pull)."""
    try:
        outer = json.loads(content) if isinstance(content, str) else content
        body = outer.get("xqueue_body", "")
        files = outer.get("xqueue_files") or "{}"
        files = json.loads(files) if isinstance(files, str) else files
        names = sorted(files) if isinstance(files, dict) else []
    except (ValueError, AttributeError, TypeError):
        body, names = content, []
    text = body if isinstance(body, str) else json.dumps(body, sort_keys=True)
    return hashlib.sha256(json.dumps([text, names]).encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _loads(text: Any, layer: str, sid: str | None) -> Any:
    if isinstance(text, (dict, list)):
        return text
    if not isinstance(text, (str, bytes)):
        raise PayloadError(layer, f"expected a JSON string, got {type(text).__name__}", sid)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PayloadError(layer, f"not valid JSON ({exc.msg} at char {exc.pos})", sid) from None


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or "value"
    return f"{where}: {err.get('msg', 'invalid')}"


def peek_submission_id(content: Any) -> str | None:
    """Best effort: the submission id, even when later layers are broken, so
    the error can name it (and the submission can still be answered)."""
    try:
        outer = json.loads(content) if isinstance(content, str) else content
        header = outer["xqueue_header"]
        header = json.loads(header) if isinstance(header, str) else header
        return str(header["submission_id"])
    except Exception:
        return None


def parse_header(content: Any) -> tuple[str, XQueueHeader]:
    """Layers 1-2 only: enough to answer a submission whose body is broken."""
    sid = peek_submission_id(content)
    outer = _loads(content, "get_submission content", sid)
    if not isinstance(outer, dict) or "xqueue_header" not in outer:
        raise PayloadError("get_submission content", "missing xqueue_header", sid)
    header_raw = outer["xqueue_header"]
    if not isinstance(header_raw, str):
        header_raw = json.dumps(header_raw)
    try:
        header = XQueueHeader.model_validate(_loads(header_raw, "xqueue_header", sid))
    except ValidationError as exc:
        raise PayloadError("xqueue_header", _first_error(exc), sid) from None
    return header_raw, header


def parse_submission(content: Any) -> Submission:
    """Decode every layer; raise PayloadError(layer, detail, submission_id)."""
    header_raw, header = parse_header(content)
    sid = str(header.submission_id)
    outer = _loads(content, "get_submission content", sid)

    body_value = _loads(outer.get("xqueue_body", ""), "xqueue_body", sid)
    if not isinstance(body_value, dict):
        raise PayloadError("xqueue_body", "must be a JSON object", sid)
    try:
        body = LMSBody.model_validate(body_value)
    except ValidationError as exc:
        raise PayloadError("xqueue_body", _first_error(exc), sid) from None

    try:
        payload = GraderPayload.parse(body.grader_payload)
    except json.JSONDecodeError as exc:
        raise PayloadError("grader_payload", f"not valid JSON ({exc.msg} at char {exc.pos})", sid) from None
    except ValidationError as exc:
        raise PayloadError("grader_payload", _first_error(exc), sid) from None
    except ValueError as exc:
        raise PayloadError("grader_payload", str(exc), sid) from None

    info_value = body.student_info or "{}"
    info_value = _loads(info_value, "student_info", sid)
    if not isinstance(info_value, dict):
        raise PayloadError("student_info", "must be a JSON object", sid)
    try:
        student = StudentInfo.model_validate(info_value)
    except ValidationError as exc:
        raise PayloadError("student_info", _first_error(exc), sid) from None

    files_value = _loads(outer.get("xqueue_files") or "{}", "xqueue_files", sid)
    if not isinstance(files_value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in files_value.items()
    ):
        raise PayloadError("xqueue_files", "must map file names to URL strings", sid)

    return Submission(
        header_raw=header_raw, header=header, body=body, payload=payload,
        student=student, files=files_value,
    )
