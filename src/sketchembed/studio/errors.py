"""The studio's refusals: one rule for their status codes and one JSON shape for all of them.

Every error the studio answers — a refused request, an unknown path, a body over the size limit, an
unexpected failure — is ``{"status": <HTTP status>, "code": <kind>, "detail": "<one line>"}``
(:class:`ErrorResponse`), its status by one rule (:data:`RULE`, shown on ``/docs``): 400 when the
request cannot be read, 422 when it is read but not what the endpoint takes, 413 when it is over a
size or work limit (:mod:`sketchembed.studio.budget`).
"""

from __future__ import annotations

import json

from pydantic import BaseModel, Field

CODES = {400: "unreadable", 404: "not_found", 405: "method_not_allowed", 409: "no_data", 413: "too_large",
         422: "invalid", 500: "internal", 503: "busy"}
RETRY_AFTER_S = 2  # told to a client answered 503 busy
RULE = (
    'Every error is one JSON shape: {"status": <HTTP status>, "code": <kind>, "detail": "<one line>"}.\n'
    "400 unreadable: the request cannot be read: its body is not JSON (or not UTF-8, or nested too deeply), "
    "or its Content-Length is not a number.\n"
    "422 invalid: it is JSON, but not what the endpoint takes: a wrong shape or type (\"drawing\": \"abc\", "
    "\"k\": \"five\"), a missing or unknown field, a value out of range, a drawing the dataset readers refuse; "
    "code \"tap\" when all its points are in one place (a single tap: nothing drawn yet).\n"
    "413 too_large: over a size or work limit: body bytes, strokes, points as sent, the simplification's work, "
    "points the model reads.\n"
    "503 busy: the lane for large drawings is full; retry after Retry-After seconds.\n"
    "404 not_found, 405 method_not_allowed, 409 no_data (no dataset open), 500 internal (logged on the server).")


class ErrorResponse(BaseModel):
    """The body of every error answer."""

    status: int = Field(description="the HTTP status, repeated")
    code: str = Field(description="the kind of refusal: " + ", ".join(sorted(set(CODES.values()) | {"tap"})))
    detail: str = Field(description="what is wrong, in one line")


class BadInput(ValueError):
    """A request the studio refuses: ``status`` is its HTTP status, ``code`` its kind (by default
    the status's, :data:`CODES`)."""

    def __init__(self, message: str, status: int = 422, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code or CODES.get(status, "error")


def error_body(status: int, detail: str, code: str | None = None) -> dict:
    """The one error shape, ``detail`` cut to its first line."""
    line = (str(detail).splitlines() or ["error"])[0]
    return ErrorResponse(status=status, code=code or CODES.get(status, "error"), detail=line).model_dump()


def error_bytes(status: int, detail: str, code: str | None = None) -> bytes:
    """:func:`error_body` as the bytes a JSONResponse would send (for the ASGI body-limit layer)."""
    return json.dumps(error_body(status, detail, code), ensure_ascii=False, separators=(",", ":")).encode()


def error_responses(described: dict[int, str]) -> dict:
    """``responses=`` of an endpoint: its error statuses (and 500) with what each means there, all in
    the one shape :class:`ErrorResponse`."""
    described = {**described, 500: "an unexpected error (logged on the server)"}
    return {s: {"model": ErrorResponse, "description": f"{CODES[s]}: {d}"} for s, d in sorted(described.items())}
