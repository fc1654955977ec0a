"""The slide viewer: ``/slides`` (the page), and the API it reads: Deep Zoom tiles of the served
folder's slides, the model's map of each (computed in the background when there is none) and the
make-up of drawn regions.

Tiles, maps and regions are plain ``def`` routes: FastAPI runs them on its thread pool, so slide reads (which
release the GIL) proceed in parallel and never block the event loop. The request guard's API key applies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Body, HTTPException, Query
from fastapi.responses import FileResponse, JSONResponse, Response

from histoclass.config import ServeConfig, SlideConfig
from histoclass.errors import HistoclassError
from histoclass.inference.predictor import Predictor
from histoclass.slides.library import SlideLibrary, SlideNotFound
from histoclass.slides.readers import has_slide_reader

__all__ = ["check_slides", "open_library", "slide_router"]

STATIC = Path(__file__).parent / "static"
_EXTRA = "pip install 'histoclass[slides]'"


def _answer(error: HistoclassError) -> HTTPException:
    return HTTPException(
        status_code=404 if isinstance(error, SlideNotFound) else 422, detail=str(error)
    )


def check_slides(settings: ServeConfig) -> None:
    """One line (exit 2) before the model loads when ``--slides`` cannot be shown."""
    folder = Path(settings.slides)
    if not folder.is_dir():
        raise HistoclassError(
            f"--slides: '{folder}' is not a folder; pass the folder that holds the slides"
        )
    if not has_slide_reader():
        raise HistoclassError(f"--slides: viewing slides needs OpenSlide or tiffslide: {_EXTRA}")
    if settings.workers > 1:  # each worker would map the same slide into the same folder at once
        raise HistoclassError(
            "--slides: maps are made by the serving process; serve slides with --workers 1"
        )


def open_library(settings: ServeConfig, predictor: Predictor) -> SlideLibrary:
    """The slides of ``settings.slides``, mapped with ``predictor``."""
    check_slides(settings)
    folder = Path(settings.slides)
    # maps made here carry each tile's shift score where the run can
    shift = predictor.shift is not None
    maps = SlideConfig(
        model=settings.model, slides=[str(folder)], out=settings.slide_maps, shift=shift
    )
    return SlideLibrary(folder, Path(settings.slide_maps), predictor, maps)


def slide_router(library: SlideLibrary) -> APIRouter:
    """The viewer's page and API over ``library``."""
    router = APIRouter()

    def guarded(call, *args):
        try:
            return call(*args)
        except HistoclassError as error:
            raise _answer(error) from None

    @router.get("/slides", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "viewer.html")

    @router.get("/api/slides")
    def slides() -> dict:
        """The slides of the served folder and whether each has a map."""
        return {
            "slides": [
                {"name": name, "map": library.state(name).status} for name in library.names()
            ]
        }

    @router.get("/api/slides/{name:path}.dzi")
    def dzi(name: str) -> Response:
        """The slide's Deep Zoom descriptor (OpenSeadragon opens it)."""
        return Response(guarded(library.dzi, name), media_type="application/xml")

    @router.get("/api/slides/{name:path}_files/{level}/{column}_{row}.jpeg")
    def tile(name: str, level: int, column: int, row: int) -> Response:
        """One Deep Zoom tile, read from the slide's own pyramid."""
        data = guarded(library.tile, name, level, column, row)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @router.get("/api/slides/{name:path}/info")
    def info(name: str) -> dict:
        """Size, resolution, pyramid levels and map status of one slide."""
        return guarded(library.describe, name)

    @router.post("/api/slides/{name:path}/map")
    def start_map(name: str) -> dict:
        """Map the slide with the served model in the background (a map that exists is kept)."""
        state = guarded(library.start_map, name)
        return {"status": state.status, "error": state.error}

    @router.get("/api/slides/{name:path}/map")
    def slide_map(name: str) -> dict:
        """The map's status, tiles done while it runs, and when done the tile grid with each tile's
        probabilities (and prediction set, where the run has them) in level-0 pixels."""
        guarded(library.path, name)
        state = library.state(name)
        answer = {
            "status": state.status,
            "error": state.error,
            "tiles_done": library.progress(name),
        }
        return answer | guarded(library.map_json, name) if state.status == "done" else answer

    @router.post("/api/slides/{name:path}/region")
    def region(
        name: str,
        polygon: list[list[float]] = Body(
            ..., embed=True, description="[[x, y], ...] in level-0 pixels"
        ),
        answer: Literal["json", "geojson"] = Query("json", alias="format"),
    ) -> Response:
        """Tissue area and class make-up of the tiles whose centres lie in ``polygon``;
        ``?format=geojson``: the region and those tiles as QuPath GeoJSON."""
        if answer == "geojson":
            text = guarded(library.region_geojson, name, polygon)
            headers = {"Content-Disposition": 'attachment; filename="region.geojson"'}
            return Response(text, media_type="application/geo+json", headers=headers)
        summary = guarded(library.region, name, polygon)[0]
        return JSONResponse(summary)

    return router
