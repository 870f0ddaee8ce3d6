"""The studio's web layer: one page, its static files, and a small JSON API (FastAPI).

Every refusal is a 4xx JSON ``{"detail": "<one line>"}``; an unexpected error is logged here with
its traceback and answered with a one-line 500 — no traceback ever reaches the client. Request
bodies are decoded by the dataset readers' JSON decoder (nesting too deep is a 400, not a
RecursionError), and the work behind an endpoint — simplifying a raw drawing, the model — runs in the
threadpool, so one slow request never stalls the others. ``/docs`` is the
package's own API page (the endpoints and schemas of ``/openapi.json``): FastAPI's Swagger UI loads
from a CDN and would be blank offline.
"""

from __future__ import annotations

import json
import logging
from importlib.resources import files
from typing import Literal, Optional, TypeVar

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from sketchembed.data.formats.ndjson import decode_line
from sketchembed.studio.drawing import MAX_BODY_BYTES, MAX_POINTS, MAX_STROKES, BadInput, parse_k, to_points
from sketchembed.studio.service import DEFAULT_K, MAX_HUMAN_ITEMS, MAX_K, Studio

log = logging.getLogger("sketchembed.studio")
STATIC = files("sketchembed.studio") / "static"


# ---- schemas (the OpenAPI docs; /api/predict checks its body itself, see predict) ----------------
class PredictRequest(BaseModel):
    drawing: list[list[list[float]]] = Field(
        description=f"strokes as in Quick, Draw!'s files: [[x…], [y…]] or [[x…], [y…], [t…]]; at most "
                    f"{MAX_STROKES} strokes and {MAX_POINTS} points",
        examples=[[[[10, 80, 160], [20, 90, 30]], [[40, 120], [200, 200]]]])
    k: Optional[int] = Field(None, ge=1, le=MAX_K, description=f"neighbours to return (default {DEFAULT_K})")
    format: Literal["auto", "raw", "simplified"] = Field(
        "auto", description="raw = any frame, simplified here the dataset's way; simplified = Quick, Draw!'s "
                            "0–255 integers; auto = simplified when it looks so (no time row, integers on 0–255)")


class ClassGuess(BaseModel):
    name: str
    p: float


class Neighbour(BaseModel):
    class_: str = Field(alias="class")
    distance: float
    key_id: str = Field(description="Quick, Draw! key_id, as a string (it exceeds JavaScript's safe integers)")
    drawing: list[list[list[int]]]


class PredictResponse(BaseModel):
    classes: list[ClassGuess]
    neighbours: list[Neighbour]
    by: str = Field(description="where the class shares come from: the model's classifier or a KNN vote")
    n_points: int = Field(description="points after simplification")
    n_strokes: int


class Health(BaseModel):
    status: str
    model_kind: str
    classes: list[str]
    by: str
    index: dict
    data: Optional[str]


class Sample(BaseModel):
    class_: str = Field(alias="class")
    key_id: str
    drawing: list[list[list[int]]]


class HumanStart(BaseModel):
    n: int = Field(20, ge=1, le=MAX_HUMAN_ITEMS, description="drawings, dealt evenly over the fractions")
    fractions: list[float] = Field([0.5, 1.0], min_length=1, max_length=10)
    seed: Optional[int] = Field(None, ge=0, description="drawings chosen by this seed (default: a random one)")


class HumanFinish(BaseModel):
    session: str = Field(max_length=64)
    answers: list[Optional[str]] = Field(max_length=MAX_HUMAN_ITEMS,
                                         description="class name per drawing, in order; null = skipped")


BodyModel = TypeVar("BodyModel", bound=BaseModel)


def read_json(raw: bytes):
    """A request body by the readers' JSON decoder: anything not JSON (nesting too deep included) is
    a :class:`BadInput` 400 in one line."""
    try:
        return decode_line(raw)
    except ValueError as e:
        raise BadInput(f"body is not JSON ({str(e).splitlines()[0]})", 400) from None


def read_body(raw: bytes, model: type[BodyModel]) -> BodyModel:
    """A request body decoded by :func:`read_json` and checked by ``model`` (a 422 naming the field)."""
    try:
        return model.model_validate(read_json(raw))
    except ValidationError as e:
        raise RequestValidationError(e.errors(include_url=False)) from None


def body_schema(model: type[BaseModel]) -> dict:
    """``openapi_extra`` documenting ``model`` as the JSON body of an endpoint that reads it itself."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


# ---- the body-size limit -------------------------------------------------------------------------
class BodyLimit:
    """Refuses request bodies over ``max_bytes`` (declared or streamed) before the app reads them."""

    def __init__(self, app, max_bytes: int = MAX_BODY_BYTES):
        self.app, self.max_bytes = app, int(max_bytes)

    async def _refuse(self, send, what: str) -> None:
        body = json.dumps({"detail": f"request body {what} is over the limit of {self.max_bytes} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await self._refuse(send, "length (Content-Length not a number)")
            if int(declared) > self.max_bytes:
                return await self._refuse(send, f"of {int(declared)} bytes")
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await self._refuse(send, "(streamed)")
            chunks.append(chunk)
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


def _one_line(exc: RequestValidationError) -> str:
    e = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    if e.get("type") == "json_invalid":
        return f"body is not JSON ({(e.get('ctx') or {}).get('error', 'decode error')})"
    where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
    return f"{where}: {e.get('msg', 'invalid')}".replace("\n", " ")


def create_app(studio: Studio, *, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The FastAPI app serving ``studio``; run it with uvicorn (``sketchembed serve``)."""
    app = FastAPI(title="sketchembed studio", version="1", docs_url=None, redoc_url=None,
                  description="Draw a sketch; the model guesses after every stroke and suggests similar drawings.")
    app.state.studio = studio

    @app.exception_handler(BadInput)
    async def _bad_input(request: Request, exc: BadInput):
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return JSONResponse({"detail": _one_line(exc)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return JSONResponse({"detail": str(exc.detail).splitlines()[0] if exc.detail else "error"},
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error ({exc.__class__.__name__}); the server log has the details"},
                            status_code=500)

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(str(STATIC / "index.html"), media_type="text/html")

    @app.get("/docs", include_in_schema=False)
    def docs():
        return FileResponse(str(STATIC / "api.html"), media_type="text/html")

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.get("/api/health", response_model=Health, summary="model kind and classes")
    def health():
        return studio.health()

    def predict_body(raw: bytes) -> dict:
        # The body is checked here, not by pydantic, so each refusal is one line naming the stroke
        # and row, and NaN (which Python's json accepts) is refused rather than embedded.
        body = read_json(raw)
        if not isinstance(body, dict) or "drawing" not in body:
            raise BadInput('body must be a JSON object {"drawing": [[[x…], [y…]], …]}', 400)
        unknown = sorted(set(body) - {"drawing", "k", "format"})
        if unknown:
            raise BadInput(f"unknown field(s) {', '.join(map(str, unknown))[:80]} (known: drawing, k, format)", 400)
        points = to_points(body["drawing"], body.get("format", "auto"))
        k = parse_k(body.get("k"), DEFAULT_K, MAX_K)
        return studio.predict(points, k)

    @app.post("/api/predict", response_model=PredictResponse, response_model_by_alias=True,
              summary="top classes and nearest drawings of a (possibly unfinished) sketch",
              openapi_extra=body_schema(PredictRequest),
              responses={400: {"description": "not JSON or wrong shape"},
                         413: {"description": "too many points/strokes or body too large"},
                         422: {"description": "bad values (NaN/inf, empty, x/y length mismatch, k, too "
                                              "intricate to simplify)"}})
    async def predict(request: Request):
        return await run_in_threadpool(predict_body, await request.body())

    @app.get("/api/sample", response_model=Sample, response_model_by_alias=True,
             summary="a drawing of the dataset, for the replay")
    def sample(split: Literal["train", "val", "test"] = "test", seed: Optional[int] = Query(None, ge=0)):
        return studio.sample(split, seed)

    @app.post("/api/human/start", summary="start a human test on test-split drawings at 50 % / 100 %",
              openapi_extra=body_schema(HumanStart))
    async def human_start(request: Request):
        req = read_body(await request.body(), HumanStart)  # a small body: decoded here, the model in the pool
        return await run_in_threadpool(studio.human_start, req.n, req.fractions, req.seed)

    @app.post("/api/human/finish", summary="score the answers beside the model's and save them as JSON",
              openapi_extra=body_schema(HumanFinish))
    async def human_finish(request: Request):
        req = read_body(await request.body(), HumanFinish)
        return await run_in_threadpool(studio.human_finish, req.session, req.answers)

    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    return app
