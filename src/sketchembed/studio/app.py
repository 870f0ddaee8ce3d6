"""The studio's web layer: one page, its static files, and a small JSON API (FastAPI).

Every error is one JSON shape, ``{"status", "code", "detail": "<one line>"}``, its status by the one
rule of :mod:`sketchembed.studio.errors` (400 unreadable, 422 invalid, 413 over a limit); an
unexpected error is logged here with its traceback and answered with a one-line 500 — no traceback
ever reaches the client. Request bodies are decoded by the dataset readers' JSON decoder (nesting too
deep is a 400, not a RecursionError). The work of a POST — decoding its body, simplifying a raw
drawing, the model — runs in the threadpool within the request's work budget
(:mod:`sketchembed.studio.budget`), so neither one slow request nor a client sending the largest
drawings stalls the others. ``/docs`` is the package's own API page (each endpoint's purpose, request
and response examples from ``/openapi.json``): FastAPI's Swagger UI loads from a CDN and would be
blank offline.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib.resources import files
from typing import Literal, TypeVar

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from sketchembed.corpus.formats.ndjson import decode_line
from sketchembed.studio.budget import LIGHT_BODY_BYTES, MAX_BODY_BYTES, MAX_MODEL_POINTS, MAX_POINTS, MAX_STROKES, Work
from sketchembed.studio.drawing import parse_k, to_points
from sketchembed.studio.errors import RETRY_AFTER_S, RULE, BadInput, error_body, error_bytes, error_responses
from sketchembed.studio.service import DEFAULT_K, MAX_HUMAN_ITEMS, MAX_K, TOP_CLASSES, Studio

log = logging.getLogger("sketchembed.studio")
STATIC = files("sketchembed.studio") / "static"
EXAMPLE_DRAWING = [[[10, 200, 200, 10, 10], [60, 60, 180, 180, 60]], [[40, 60], [190, 190]]]


def _examples(*examples) -> ConfigDict:
    """A model's examples (shown on /docs; tests/test_studio.py validates each against its model)."""
    return ConfigDict(json_schema_extra={"examples": list(examples)}, populate_by_name=True)


# ---- schemas (the OpenAPI docs; the POST endpoints read their bodies themselves, see _post) --------
class PredictRequest(BaseModel):
    model_config = _examples({"drawing": EXAMPLE_DRAWING, "k": 2, "format": "auto"})
    drawing: list[list[list[float]]] = Field(
        description=f"strokes as in Quick, Draw!'s files: [[x…], [y…]] or [[x…], [y…], [t…]]; at most "
                    f"{MAX_STROKES} strokes and {MAX_POINTS:,} points, {MAX_MODEL_POINTS:,} once simplified")
    k: int | None = Field(None, ge=1, le=MAX_K, description=f"neighbours to return (default {DEFAULT_K})")
    format: Literal["auto", "raw", "simplified"] = Field(
        "auto", description="raw = any frame, simplified here the dataset's way; simplified = Quick, Draw!'s "
                            "0–255 integers; auto = simplified when it looks so (no time row, integers on 0–255)")


class ClassGuess(BaseModel):
    name: str
    p: float = Field(description="probability (classifier) or share of the K nearest drawings (KNN)")


class Neighbour(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    class_: str = Field(alias="class")
    distance: float
    key_id: str = Field(description="Quick, Draw! key_id, as a string (it exceeds JavaScript's safe integers)")
    drawing: list[list[list[int]]] = Field(description="its simplified strokes [[x…], [y…]] on 0–255")


class PredictResponse(BaseModel):
    model_config = _examples({
        "classes": [{"name": "bus", "p": 0.62}, {"name": "truck", "p": 0.21}, {"name": "van", "p": 0.09},
                    {"name": "pear", "p": 0.04}, {"name": "apple", "p": 0.02}],
        "neighbours": [{"class": "bus", "distance": 0.41, "key_id": "5629413953404928",
                        "drawing": [[[0, 255, 250, 2, 0], [20, 18, 120, 124, 20]], [[40, 60], [130, 131]]]},
                       {"class": "truck", "distance": 0.47, "key_id": "6204950165602304",
                        "drawing": [[[0, 180, 255, 255, 0, 0], [30, 30, 70, 140, 140, 30]]]}],
        "by": "classifier", "n_points": 7, "n_strokes": 2})
    classes: list[ClassGuess] = Field(description=f"the top {TOP_CLASSES} classes, best first")
    neighbours: list[Neighbour] = Field(description="the k nearest drawings of the index, nearest first")
    by: str = Field(description="where the class shares come from: the model's classifier or a KNN vote")
    n_points: int = Field(description="points after simplification")
    n_strokes: int


class IndexInfo(BaseModel):
    n: int = Field(description="drawings in the index")
    classes: int = Field(description="classes in the index")


class Health(BaseModel):
    model_config = _examples({"status": "ok", "model_kind": "combined", "classes": ["apple", "pear", "bus"],
                              "by": "classifier", "index": {"n": 235, "classes": 3},
                              "data": "/home/me/sketchembed/src/sketchembed/resources/quickdraw/study10"})
    status: Literal["ok"]
    model_kind: str = Field(description="the model's config name (combined, lstm, triplet, …)")
    classes: list[str] = Field(description="the classes the guesses are among")
    by: str = Field(description="classifier, or knn (k=K) for embedding-only models")
    index: IndexInfo
    data: str | None = Field(description="the dataset of the replay and the human test (null: none)")


class Sample(BaseModel):
    model_config = _examples({"class": "pear", "key_id": "4770813734014976",
                              "drawing": [[[60, 20, 0, 30, 120, 180, 150, 90], [0, 80, 180, 250, 255, 170, 60, 10]]]})
    class_: str = Field(alias="class")
    key_id: str
    drawing: list[list[list[int]]]


class HumanStart(BaseModel):
    model_config = _examples({"n": 4, "fractions": [0.5, 1.0], "seed": 7})
    n: int = Field(20, ge=1, le=MAX_HUMAN_ITEMS, description="drawings, dealt evenly over the fractions")
    fractions: list[float] = Field([0.5, 1.0], min_length=1, max_length=10)
    seed: int | None = Field(None, ge=0, description="drawings chosen by this seed (default: a random one)")


class HumanItem(BaseModel):
    fraction: float = Field(description="share of the drawing's points shown")
    drawing: list[list[list[int]]]


class HumanStartResponse(BaseModel):
    model_config = _examples({"session": "3f2a9c0d1e4b5a69", "seed": 7, "classes": ["apple", "pear", "bus"],
                              "items": [{"fraction": 0.5, "drawing": [[[0, 120, 255], [40, 0, 60]]]},
                                        {"fraction": 1.0, "drawing": [[[10, 250, 240, 0], [0, 10, 255, 250]]]}]})
    session: str = Field(description="send it back with the answers")
    seed: int
    classes: list[str] = Field(description="the choices")
    items: list[HumanItem] = Field(description="the drawings to guess, in order (their classes are not sent)")


class HumanFinish(BaseModel):
    model_config = _examples({"session": "3f2a9c0d1e4b5a69", "answers": ["pear", None]})
    session: str = Field(max_length=64)
    answers: list[str | None] = Field(max_length=MAX_HUMAN_ITEMS,
                                         description="class name per drawing, in order; null = skipped")


class HumanRow(BaseModel):
    fraction: float
    n: int = Field(description="drawings answered at this fraction")
    human: float = Field(description="your accuracy")
    human_ci95: list[float] = Field(description="its 95 % Wilson interval")
    model: float = Field(description="the model's accuracy on the same drawings")
    model_ci95: list[float]


class HumanFinishResponse(BaseModel):
    model_config = _examples({"rows": [{"fraction": 0.5, "n": 1, "human": 1.0, "human_ci95": [0.21, 1.0],
                                        "model": 0.0, "model_ci95": [0.0, 0.79]}],
                              "saved": "outputs/studio/human-20260101-120000-3f2a9c0d1e4b5a69.json",
                              "study_human": "84 (its README) / 72.1 on 43 answers (its notebook's output)"})
    rows: list[HumanRow] = Field(description="one row per fraction answered")
    saved: str = Field(description="the JSON file the answers were saved to, on the server")
    study_human: str = Field(description="the study's human accuracy, for comparison")


BodyModel = TypeVar("BodyModel", bound=BaseModel)


def read_json(raw: bytes):
    """A request body by the readers' JSON decoder: anything not JSON (nesting too deep included) is
    a 400 in one line."""
    try:
        return decode_line(raw)
    except ValueError as e:
        raise BadInput(f"body is not JSON ({str(e).splitlines()[0]})", 400) from None


def _one_line(errors: list) -> str:
    """Pydantic's first error as ``field: message``."""
    e = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
    return f"{where}: {e.get('msg', 'invalid')}".replace("\n", " ")


def read_body(raw: bytes, model: type[BodyModel]) -> BodyModel:
    """A request body decoded by :func:`read_json` and checked by ``model`` (a 422 naming the field)."""
    try:
        return model.model_validate(read_json(raw))
    except ValidationError as e:
        raise BadInput(_one_line(e.errors(include_url=False))) from None


def body_schema(model: type[BaseModel]) -> dict:
    """``openapi_extra`` documenting ``model`` as the JSON body of an endpoint that reads it itself."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


# ---- the body-size limit -------------------------------------------------------------------------
class BodyLimit:
    """Refuses request bodies over ``max_bytes`` (declared or streamed) before the app reads them."""

    def __init__(self, app, max_bytes: int = MAX_BODY_BYTES):
        self.app, self.max_bytes = app, int(max_bytes)

    async def _refuse(self, send, status: int, detail: str) -> None:
        body = error_bytes(status, detail)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        over = f"is over the limit of {self.max_bytes} bytes"
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await self._refuse(send, 400, f"Content-Length {declared[:20].decode(errors='replace')!r} "
                                                     f"is not a number")
            if int(declared) > self.max_bytes:
                return await self._refuse(send, 413, f"request body of {int(declared)} bytes {over}")
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await self._refuse(send, 413, f"request body (streamed) {over}")
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


def _error(status: int, detail: str, code: str | None = None, headers: dict | None = None) -> JSONResponse:
    if status == 503:
        headers = {**(headers or {}), "Retry-After": str(RETRY_AFTER_S)}
    return JSONResponse(error_body(status, detail, code), status_code=status, headers=headers)


def create_app(studio: Studio, *, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The FastAPI app serving ``studio``; run it with uvicorn (``sketchembed serve``)."""
    app = FastAPI(title="sketchembed studio", version="1", docs_url=None, redoc_url=None,
                  description="Draw a sketch; the model guesses after every stroke and suggests similar drawings.\n"
                              + RULE)
    app.state.studio = studio

    @app.exception_handler(BadInput)
    async def _bad_input(request: Request, exc: BadInput):
        return _error(exc.status, str(exc), exc.code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return _error(422, _one_line(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail or "error"), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error(500, f"internal error ({exc.__class__.__name__}); the server log has the details")

    async def _post(request: Request, handle: Callable[[bytes, Work], dict]) -> dict:
        """Run ``handle(body, work)`` in the threadpool within a new request's work budget; a body
        over the light allowance takes the heavy lane before it is decoded."""
        raw = await request.body()

        def job():
            with studio.lanes.request() as work:
                if len(raw) > LIGHT_BODY_BYTES:
                    work.go_heavy(f"a body of {len(raw):,} bytes")
                return handle(raw, work)

        return await run_in_threadpool(job)

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(str(STATIC / "index.html"), media_type="text/html")

    @app.get("/docs", include_in_schema=False)
    def docs():
        return FileResponse(str(STATIC / "api.html"), media_type="text/html")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon():
        return FileResponse(str(STATIC / "favicon.svg"), media_type="image/svg+xml")

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.get("/api/health", response_model=Health, summary="the model and index being served",
             description="Which model answers (its kind and classes), how it ranks classes, the size of its index "
                         "and the dataset of the replay and the human test. The page calls it on load.",
             responses=error_responses({}))
    def health():
        return studio.health()

    def predict_body(raw: bytes, work: Work) -> dict:
        # The body is checked here, not by pydantic, so each refusal is one line naming the stroke
        # and row, and NaN (which Python's json accepts) is refused rather than embedded.
        body = read_json(raw)
        if not isinstance(body, dict) or "drawing" not in body:
            raise BadInput('body must be a JSON object {"drawing": [[[x…], [y…]], …]}')
        unknown = sorted(set(body) - {"drawing", "k", "format"})
        if unknown:
            raise BadInput(f"unknown field(s) {', '.join(map(str, unknown))[:80]} (known: drawing, k, format)")
        k = parse_k(body.get("k"), DEFAULT_K, MAX_K)
        points = to_points(body["drawing"], body.get("format", "auto"), work)
        return studio.predict(points, k, work)

    @app.post("/api/predict", response_model=PredictResponse, response_model_by_alias=True,
              summary="guess a (possibly unfinished) sketch and find the nearest drawings",
              description="The page posts the whole sketch after every stroke. The answer holds the top "
                          f"{TOP_CLASSES} classes with their probabilities and the k nearest drawings of the "
                          "index with their strokes. Raw drawings are simplified the way the dataset was.",
              openapi_extra=body_schema(PredictRequest),
              responses=error_responses({
                  400: "the body is not JSON",
                  413: f"over a limit: body bytes, {MAX_STROKES} strokes, {MAX_POINTS:,} points, the "
                       f"simplification's work, {MAX_MODEL_POINTS:,} points once simplified",
                  422: "JSON, but not a drawing this endpoint takes: wrong shape or type, unknown field, "
                       "NaN, x/y length mismatch, k out of 1…50; code 'tap': all points in one place",
                  503: "busy: the lane for large drawings is full (Retry-After)"}))
    async def predict(request: Request):
        return await _post(request, predict_body)

    @app.get("/api/sample", response_model=Sample, response_model_by_alias=True,
             summary="a drawing of the dataset, for the replay",
             description="One drawing of a split (random, or chosen by seed) as simplified strokes, with its class.",
             responses=error_responses({409: "no dataset is open, or the split is empty",
                                        422: "split or seed not valid"}))
    def sample(split: Literal["train", "val", "test"] = "test", seed: int | None = Query(None, ge=0)):
        return studio.sample(split, seed)

    @app.post("/api/human/start", response_model=HumanStartResponse,
              summary="start a human test on test-split drawings at 50 % / 100 %",
              description="Deals n test drawings evenly over the fractions (cut to that share of their points); "
                          "the model guesses them now, your answers go to /api/human/finish.",
              openapi_extra=body_schema(HumanStart),
              responses=error_responses({400: "the body is not JSON", 409: "no dataset is open",
                                         422: "n, fractions or seed not valid", 503: "busy (Retry-After)"}))
    async def human_start(request: Request):
        return await _post(request, lambda raw, work: studio.human_start(
            **read_body(raw, HumanStart).model_dump(), work=work))

    @app.post("/api/human/finish", response_model=HumanFinishResponse,
              summary="score the answers beside the model's and save them as JSON",
              description="Your accuracy and the model's per fraction, with 95 % Wilson intervals; the answers "
                          "are saved on the server. A session can be finished once.",
              openapi_extra=body_schema(HumanFinish),
              responses=error_responses({400: "the body is not JSON", 404: "unknown or finished session",
                                         422: "answers of the wrong count or not class names"}))
    async def human_finish(request: Request):
        return await _post(request, lambda raw, work: studio.human_finish(**read_body(raw, HumanFinish).model_dump()))

    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    return app
