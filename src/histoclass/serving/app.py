"""The FastAPI app: the page (``/``), the REST API (``/api/...``) and its OpenAPI docs (``/docs``, offline).

The model is loaded once per worker; uploads are decoded on the thread pool and every model call goes through
the micro-batcher's single inference thread, so the event loop never blocks. The API key is checked before a
request's body is read, the whole body is capped (413) before it is buffered, and each file is held to its
limit as it streams in, in memory (``multipart.py``).
"""

from __future__ import annotations

import json
import os
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import quote

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.body_limit import RequestBodyLimitMiddleware

from histoclass.config import ServeConfig
from histoclass.deploy import open_predictor
from histoclass.inference.engines.torch_engine import TorchEngine
from histoclass.inference.predictor import Predictor, load
from histoclass.runs import RunDir
from histoclass.serving.batcher import MicroBatcher
from histoclass.serving.guard import API_KEY_PARAMETER, RequestGuard
from histoclass.serving.multipart import Upload, multipart_body, read_uploads
from histoclass.serving.uploads import (
    DecodeBudget,
    UploadRejected,
    UploadsRejected,
    checked_pixels,
    decode_resized,
    kept_name,
)
from histoclass.serving.viewer import open_library, slide_router

__all__ = ["SETTINGS_ENV", "create_app", "create_app_from_env"]

STATIC = Path(__file__).parent / "static"
SETTINGS_ENV = "HISTOCLASS_SERVE_SETTINGS"


def _model_card(predictor: Predictor, model: Path, tta: bool, explain: bool) -> dict:
    info = predictor.info
    folder = model if model.is_dir() else model.parent
    metrics_file = RunDir(folder).metrics
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    calibration = info.calibration
    return {
        "name": info.name or folder.name,
        "architecture": info.architecture,
        "labels": info.labels,
        "image_size": info.image_size,
        "format": predictor.engine.name,
        "explain": explain,
        "tta": tta,
        "validation_metrics": {k: v for k, v in metrics.items() if k.startswith("val_")},
        "parameters": info.parameters,
        "temperature": calibration.temperature,
        "set_coverage": calibration.coverage if calibration.has_sets else None,
    }


def _rejection(errors: list[UploadRejected], headers: dict | None = None) -> JSONResponse:
    """Every refusal's one shape: ``{"detail": one line, "errors": [{filename, status, error}, ...]}``."""
    detail = "; ".join(
        e.message if e.filename == "(request)" else f"{e.filename}: {e.message}" for e in errors
    )
    content = {"detail": detail, "errors": [e.as_dict() for e in errors]}
    return JSONResponse(status_code=errors[0].status, content=content, headers=headers)


def _result(
    name: str, probabilities: np.ndarray, members: np.ndarray | None, labels: list[str]
) -> dict:
    best = int(np.argmax(probabilities))
    result = {
        "filename": name,
        "label": labels[best],
        "confidence": float(probabilities[best]),
        "probabilities": dict(zip(labels, map(float, probabilities), strict=True)),
    }
    if members is not None:
        chosen = [label for label, inside in zip(labels, members, strict=True) if inside]
        result |= {"prediction_set": chosen, "set_size": len(chosen), "uncertain": len(chosen) != 1}
    return result


def _docs(app: FastAPI) -> None:
    """Swagger UI from the package's own copy (no CDN: lab machines are often offline)."""
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        # percent-encoded: never markup in the page's script
        key = request.query_params.get(API_KEY_PARAMETER)
        return get_swagger_ui_html(
            openapi_url="/openapi.json"
            + (f"?{API_KEY_PARAMETER}={quote(key, safe='')}" if key else ""),
            title=f"{app.title} API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-32x32.png",
        )


def _torch_or_none(model: str) -> Predictor | None:
    return load(model) if TorchEngine.accepts(Path(model)) else None


def create_app(settings: ServeConfig) -> FastAPI:
    """Build the app for ``settings`` (loads the model now, so a bad model fails before serving)."""
    predictor = open_predictor(settings.model, settings.engine)
    # Heatmaps need gradients: a run served on a faster engine keeps its PyTorch model for them.
    explainer = (
        predictor
        if predictor.can_explain or settings.engine != "auto"
        else _torch_or_none(settings.model)
    )
    card = _model_card(
        predictor,
        Path(settings.model),
        settings.tta,
        explainer is not None and explainer.can_explain,
    )
    limit, request_limit = (
        int(settings.max_megapixels * 1e6),
        int(settings.max_request_megapixels * 1e6),
    )
    budget, image_size = DecodeBudget(settings.decode_pixels), predictor.info.image_size
    batcher = MicroBatcher(predictor, tta=settings.tta)

    library = open_library(settings, predictor) if settings.slides else None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        await batcher.stop()
        if library is not None:
            library.close()

    app = FastAPI(
        title=f"histoclass: {card['name']}",
        version="1",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    # Chunked bodies are cut off as they stream in; the guard (outermost) refuses announced ones unread.
    app.add_middleware(RequestBodyLimitMiddleware, max_body_size=settings.max_request_bytes)
    app.add_middleware(
        RequestGuard,
        api_key=settings.api_key,
        max_bytes=settings.max_request_bytes,
        body_timeout=settings.body_timeout,
    )
    app.state.card = card
    _docs(app)

    async def read_images(
        request: Request, field: str, max_files: int
    ) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """The request's images, size-checked from their headers, then decoded within the worker's budget:
        (name, pixels as the model sees them, pixels the shift score sees)."""
        uploads = await read_uploads(
            request.headers.get("content-type"),
            request.stream(),
            field,
            settings.max_bytes,
            max_files,
        )
        pixels, rejected = [], []
        for upload in uploads:
            try:
                pixels.append(
                    checked_pixels(
                        upload.filename, upload.data, upload.size, settings.max_bytes, limit
                    )
                )
            except UploadRejected as error:
                rejected.append(error)
        if not rejected and sum(pixels) > request_limit:
            megapixels = sum(pixels) / 1e6
            message = (
                f"{megapixels:.0f} megapixels in one request; the limit is {request_limit / 1e6:g}"
            )
            rejected.append(
                UploadRejected(413, "(request)", message + " (send fewer images a request)")
            )
        if rejected:
            raise UploadsRejected(rejected)
        decoded = []
        for upload, count in zip(uploads, pixels, strict=True):
            try:
                decoded.append(await decode(upload, count))
            except UploadRejected as error:
                rejected.append(error)
        if rejected:
            raise UploadsRejected(rejected)
        if settings.keep_uploads:  # only a request accepted whole is kept
            folder = Path(settings.keep_uploads)
            folder.mkdir(parents=True, exist_ok=True)
            for upload in uploads:
                (folder / kept_name(upload.filename, uuid.uuid4().hex)).write_bytes(upload.data)
        return decoded

    async def decode(upload: Upload, pixels: int) -> tuple[str, np.ndarray, np.ndarray]:
        async with budget.hold(pixels):
            name, data, framing = upload.filename, upload.data, predictor.info.framing
            image = await run_in_threadpool(decode_resized, name, data, image_size, framing)
            # the shift score sees whole images (histoclass.shift.scorer.build_reference)
            whole = image
            if framing != "field" and predictor.shift is not None:
                whole = await run_in_threadpool(decode_resized, name, data, image_size)
        return name, image, whole

    @app.exception_handler(UploadsRejected)
    async def upload_rejected(request: Request, error: UploadsRejected) -> JSONResponse:
        return _rejection(error.errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return _rejection(
            [UploadRejected(error.status_code, "(request)", str(error.detail))], error.headers
        )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        return _rejection(
            [UploadRejected(422, "(request)", f"{where}: {first.get('msg', 'invalid')}")]
        )

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/api/health")
    async def health() -> dict:
        """Liveness: always answers while the server runs (no API key needed)."""
        return {"status": "ok", "model": card["name"]}

    @app.get("/api/model")
    async def model_card() -> dict:
        """The model card: name, architecture, classes, image size, calibration, validation metrics."""
        return card

    @app.post("/api/predict", openapi_extra=multipart_body("files", many=True))
    async def predict(request: Request):
        """Classify images: label, confidence, every class's probability and the prediction set for each.

        ``prediction_set`` holds the true class with the model's stated coverage (``/api/model``);
        when it has more than one class, ``uncertain`` is true: the model cannot tell those classes
        apart on this image. ``shift_score`` (run directories) is the image's distance from the
        training images; ``unlike_training`` is true above the threshold 95% of unseen same-source
        images stay under: expect lower accuracy.
        """
        images = await read_images(request, "files", settings.max_files)
        pixels = np.stack([image for _, image, _ in images])
        probabilities = await batcher.predict(pixels)
        sets = predictor.prediction_sets(probabilities)
        results = [
            _result(name, probs, None if sets is None else sets[i], predictor.labels)
            for i, ((name, _, _), probs) in enumerate(zip(images, probabilities, strict=True))
        ]
        if predictor.shift is not None:  # on the inference thread, like every model call
            whole = np.stack([image for _, _, image in images])
            scores = await batcher.call(predictor.shift_scores, whole)
            for result, score in zip(results, scores, strict=True):
                unlike = bool(predictor.shift.reference.unlike(np.asarray([score]))[0])
                result |= {"shift_score": float(score), "unlike_training": unlike}
        return {"results": results}

    @app.post(
        "/api/explain", response_class=Response, openapi_extra=multipart_body("file", many=False)
    )
    async def explain(request: Request) -> Response:
        """A PNG of the image with its Grad-CAM heatmap for the predicted class (run directories only)."""
        if not card["explain"]:
            raise HTTPException(
                status_code=409,
                detail="heatmaps need a run directory (a PyTorch model), not an export",
            )
        [(_, pixels, _)] = await read_images(request, "file", 1)
        png, label = await batcher.call(explainer.explain, pixels)
        return Response(content=png, media_type="image/png", headers={"X-Predicted-Label": label})

    if library is not None:
        app.include_router(slide_router(library))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def create_app_from_env() -> FastAPI:
    """Factory for uvicorn workers: the settings travel in an environment variable."""
    return create_app(ServeConfig.model_validate_json(os.environ[SETTINGS_ENV]))
