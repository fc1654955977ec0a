"""The FastAPI app: the page (``/``), the REST API (``/api/...``) and its OpenAPI docs (``/docs``).

The model is loaded once per worker; decoding runs on the thread pool and inference through the micro-batcher,
so the event loop never blocks.
"""

from __future__ import annotations

import json
import os
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
from fastapi import Depends, FastAPI, File, HTTPException, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.formparsers import MultiPartParser

from histoclass.config import ServeConfig
from histoclass.data.images import resize_square
from histoclass.inference.predictor import Predictor, load
from histoclass.runs import RunDir
from histoclass.serving.batcher import MicroBatcher
from histoclass.serving.uploads import UploadRejected, decode_upload

__all__ = ["create_app", "create_app_from_env"]

STATIC = Path(__file__).parent / "static"
SETTINGS_ENV = "HISTOCLASS_SERVE_SETTINGS"


class _UploadBatchRejected(Exception):
    """Uploads of one request that were refused; answered as JSON with the first one's status."""

    def __init__(self, errors: list[UploadRejected]) -> None:
        super().__init__(errors[0].message)
        self.errors = errors


def _model_card(predictor: Predictor) -> dict:
    info = predictor.info
    folder = predictor.source if predictor.source.is_dir() else predictor.source.parent
    metrics_file = RunDir(folder).metrics
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    return {
        "name": info.name or folder.name,
        "architecture": info.architecture,
        "labels": info.labels,
        "image_size": info.image_size,
        "format": predictor.engine.name,
        "explain": predictor.can_explain,
        "validation_metrics": {k: v for k, v in metrics.items() if k.startswith("val_")},
        "parameters": info.parameters,
    }


def _rejection(error: UploadRejected | list[UploadRejected]) -> JSONResponse:
    errors = error if isinstance(error, list) else [error]
    detail = "; ".join(f"{e.filename}: {e.message}" for e in errors)
    return JSONResponse(
        status_code=errors[0].status, content={"detail": detail, "errors": [e.as_dict() for e in errors]}
    )


def create_app(settings: ServeConfig) -> FastAPI:
    """Build the app for ``settings`` (loads the model now, so a bad model fails before serving)."""
    predictor = load(settings.model)
    card = _model_card(predictor)
    # Keep uploads in memory: Starlette spools parts over 1 MB to temporary files otherwise.
    MultiPartParser.spool_max_size = settings.max_bytes + 1
    batcher = MicroBatcher(predictor)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title=f"histoclass: {card['name']}", version="1", lifespan=lifespan)
    app.state.card = card

    def require_key(request: Request) -> None:
        if settings.api_key and request.headers.get("X-API-Key") != settings.api_key:
            raise HTTPException(status_code=401, detail="missing or wrong X-API-Key header")

    async def read_images(files: list[UploadFile]) -> list[tuple[str, np.ndarray]]:
        if len(files) > settings.max_files:
            raise _UploadBatchRejected(
                [UploadRejected(413, "(request)", f"{len(files)} files; the limit is {settings.max_files} a request")]
            )
        decoded, rejected = [], []
        size = predictor.info.image_size
        for upload in files:
            data = await upload.read(settings.max_bytes + 1)
            name = upload.filename or "upload"
            try:
                image = await run_in_threadpool(
                    decode_upload, name, data, settings.max_bytes, int(settings.max_megapixels * 1e6), size
                )
            except UploadRejected as error:
                rejected.append(error)
                continue
            if settings.keep_uploads:
                Path(settings.keep_uploads).mkdir(parents=True, exist_ok=True)
                (Path(settings.keep_uploads) / f"{uuid.uuid4().hex}-{Path(name).name}").write_bytes(data)
            decoded.append((name, resize_square(image, size)))
        if rejected:
            raise _UploadBatchRejected(rejected)
        return decoded

    @app.exception_handler(_UploadBatchRejected)
    async def upload_rejected(request: Request, error: _UploadBatchRejected) -> JSONResponse:
        return _rejection(error.errors)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/api/health")
    async def health() -> dict:
        """Liveness: always answers while the server runs (no API key needed)."""
        return {"status": "ok", "model": card["name"]}

    @app.get("/api/model", dependencies=[Depends(require_key)])
    async def model_card() -> dict:
        """The model card: name, architecture, classes, image size, validation metrics."""
        return card

    @app.post("/api/predict", dependencies=[Depends(require_key)])
    async def predict(files: list[UploadFile] = File(..., description="one or more images, field name 'files'")):
        """Classify one or more images: label, confidence and every class's probability for each."""
        images = await read_images(files)
        probabilities = await batcher.predict(np.stack([pixels for _, pixels in images]))
        results = []
        for (name, _), probs in zip(images, probabilities, strict=True):
            best = int(np.argmax(probs))
            results.append(
                {
                    "filename": name,
                    "label": predictor.labels[best],
                    "confidence": float(probs[best]),
                    "probabilities": dict(zip(predictor.labels, map(float, probs), strict=True)),
                }
            )
        return {"results": results}

    @app.post("/api/explain", dependencies=[Depends(require_key)], response_class=Response)
    async def explain(file: UploadFile = File(..., description="one image")) -> Response:
        """A PNG of the image with its Grad-CAM heatmap for the predicted class (run directories only)."""
        if not card["explain"]:
            raise HTTPException(
                status_code=409, detail="heatmaps need a run directory (a PyTorch model), not an export"
            )
        [(_, pixels)] = await read_images([file])
        png, label = await run_in_threadpool(predictor.explain, pixels)
        return Response(content=png, media_type="image/png", headers={"X-Predicted-Label": label})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def create_app_from_env() -> FastAPI:
    """Factory for uvicorn workers: the settings travel in an environment variable."""
    return create_app(ServeConfig.model_validate_json(os.environ[SETTINGS_ENV]))
