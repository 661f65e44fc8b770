"""The HTTP API and its page: FastAPI routes over a :class:`Predictor` and a :class:`DynamicBatcher`.

``POST /predict`` takes images as multipart files (image runs) or ``{"texts": [...]}`` (text runs);
``GET /health``, ``GET /metadata``, the OpenAPI schema at ``/openapi.json`` (docs at ``/docs``) and the
web page at ``/``. Secure by default: a bearer token when one is set, 413 for bodies over the limit
(checked on ``Content-Length`` and again while the body streams), 408 for bodies that arrive too
slowly, 415 / 422 naming the input that is not an image or not valid JSON, 503 when overloaded.
"""
from __future__ import annotations

import asyncio
import io
import secrets
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, HTTPException, Query, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.concurrency import run_in_threadpool

from headstart.data.images import BadImage, load_image, preprocess
from headstart.serve.batcher import DynamicBatcher
from headstart.serve.config import ServeConfig
from headstart.serve.page import PAGE

MAX_TEXT_CHARS = 100_000


class ClassScore(BaseModel):
    label: str
    probability: float


class Prediction(BaseModel):
    input: str = Field(description="the file name, or the text's position in the request")
    label: str = Field(description="the most probable class")
    top: list[ClassScore] = Field(description="the most probable classes, best first")
    probabilities: dict[str, float] = Field(description="every class's probability (they sum to 1)")


class Predictions(BaseModel):
    model: str
    predictions: list[Prediction]


class Texts(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT_CHARS)]] = Field(
        min_length=1, description="texts to classify", examples=[["what a wonderful film"]])


class Problem(BaseModel):
    detail: Any


ERRORS = {code: {"model": Problem, "description": why} for code, why in {
    400: "a malformed multipart body", 401: "missing or wrong bearer token", 408: "the request body arrived too slowly",
    413: "body, image or number of inputs over the limit", 415: "an input is not an image",
    422: "a broken image or invalid JSON", 503: "the server is overloaded; retry later"}.items()}


class BodyGuard:
    """ASGI middleware: refuse bodies over ``max_bytes`` (413) or slower than ``timeout`` seconds (408)."""

    def __init__(self, app, *, max_bytes: int, timeout: float):
        self.app, self.max_bytes, self.timeout = app, max_bytes, timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            response = JSONResponse({"detail": self._too_large()}, status_code=413, headers={"Connection": "close"})
            return await response(scope, receive, send)
        loop = asyncio.get_running_loop()
        deadline, received = loop.time() + self.timeout, 0

        async def guarded():
            nonlocal received
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
            except asyncio.TimeoutError:
                # An HTTPException, so FastAPI's body parsing passes it on as it is (not as a 400).
                raise HTTPException(408, f"the request body did not arrive within {self.timeout:g} s") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, self._too_large())
            return message

        await self.app(scope, guarded, send)

    def _too_large(self) -> str:
        return f"request body over the limit of {self.max_bytes / 2 ** 20:g} MB (serve --max-body-mb)"


def create_app(predictor, config: ServeConfig, *, name: str, info: dict[str, Any] | None = None) -> FastAPI:
    """The app for one run. ``info``: what /metadata adds about the run (backbone, metrics, ...)."""
    from headstart import __version__

    batcher = DynamicBatcher(predictor, max_batch=config.max_batch, max_wait_ms=config.max_wait_ms)
    classes = [str(c) for c in predictor.classes]

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        yield
        await batcher.stop()  # after uvicorn let requests in flight finish: their inputs are answered

    app = FastAPI(title=f"headstart · {name}", version=__version__, lifespan=lifespan,
                  description=f"{predictor.modality} classifier over {len(classes)} classes, served by headstart.")
    app.add_middleware(BodyGuard, max_bytes=config.max_body_bytes, timeout=config.body_timeout_s)
    app.state.batcher, app.state.predictor = batcher, predictor
    bearer = HTTPBearer(auto_error=False, description="the --token given to `headstart serve`")

    # Depends as a default value, not inside Annotated: under postponed annotations FastAPI evaluates them
    # in the module's globals, where this closure's `bearer` does not exist.
    def authorised(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if config.token is None:
            return
        given = credentials.credentials if credentials is not None else ""
        if not secrets.compare_digest(given.encode(), config.token.encode()):
            raise HTTPException(401, "missing or wrong bearer token: send 'Authorization: Bearer TOKEN'",
                                headers={"WWW-Authenticate": "Bearer"})

    guarded = [Depends(authorised)] if config.token is not None else []

    async def answer(inputs: list, names: list[str], top: int) -> Predictions:
        try:
            probs = await asyncio.wait_for(batcher.submit(inputs), config.request_timeout_s)
        except asyncio.TimeoutError:
            raise HTTPException(503, f"no answer within {config.request_timeout_s:g} s: the server is "
                                "overloaded; retry later", headers={"Retry-After": "1"}) from None
        out = []
        for n, p in zip(names, probs):
            order = p.argsort()[::-1]
            out.append(Prediction(input=n, label=classes[int(order[0])],
                                  top=[ClassScore(label=classes[int(i)], probability=float(p[i])) for i in order[:top]],
                                  probabilities={c: float(v) for c, v in zip(classes, p)}))
        return Predictions(model=name, predictions=out)

    def check_count(n: int) -> None:
        if n > config.max_inputs:
            raise HTTPException(413, f"{n} inputs in one request; at most {config.max_inputs} (serve --max-inputs)")

    top_param = Query(5, ge=1, le=1000, description="how many of the most probable classes to list")

    if predictor.modality == "image":
        size = predictor.clf.preprocess_

        def decode(data: bytes, filename: str):
            try:
                return preprocess(load_image(io.BytesIO(data)), size)
            except BadImage as exc:
                why = str(exc)
                if "UnidentifiedImageError" in why:  # PIL found no image format it knows in these bytes
                    raise HTTPException(415, f"{filename!r} is not an image (send JPEG, PNG, WebP, BMP, GIF or "
                                        "TIFF files)") from None
                raise HTTPException(413 if "decompression bomb" in why else 422, f"{filename!r}: {why}") from None

        @app.post("/predict", response_model=Predictions, dependencies=guarded, responses=ERRORS,
                  summary="Classify images (multipart: one or more `files`)")
        async def predict_images(files: list[UploadFile] = File(
                                     min_length=1, max_length=config.max_inputs,
                                     description=f"1 to {config.max_inputs} image files (JPEG, PNG, WebP, ...)"),
                                 top: int = top_param) -> Predictions:
            pixels, names = [], []
            for i, f in enumerate(files):
                filename = f.filename or f"file {i}"
                pixels.append(await run_in_threadpool(decode, await f.read(), filename))
                names.append(filename)
            return await answer(pixels, names, top)
    else:
        @app.post("/predict", response_model=Predictions, dependencies=guarded, responses=ERRORS,
                  summary='Classify texts (JSON: {"texts": [...]})')
        async def predict_texts(body: Texts, top: int = top_param) -> Predictions:
            check_count(len(body.texts))
            return await answer(list(body.texts), [str(i) for i in range(len(body.texts))], top)

    @app.get("/health", summary="Liveness: the model is loaded and answering")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": name, "modality": predictor.modality, "auth": config.token is not None}

    @app.get("/metadata", dependencies=guarded, responses={401: ERRORS[401]},
             summary="The model: classes, backbone, preprocessing, metrics, engine and batching")
    async def metadata() -> dict[str, Any]:
        return {"model": name, "modality": predictor.modality, "classes": classes, **(info or {}),
                "engine": predictor.describe(), "batching": {"max_batch": config.max_batch,
                                                              "max_wait_ms": config.max_wait_ms,
                                                              **batcher.stats.to_dict()},
                "limits": {"max_body_mb": config.max_body_mb, "max_inputs": config.max_inputs,
                           "body_timeout_s": config.body_timeout_s, "request_timeout_s": config.request_timeout_s}}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE)

    return app
