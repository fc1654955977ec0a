"""The serve job: load the model once, print the address, run uvicorn."""

from __future__ import annotations

import os

from histoclass.config import ServeConfig
from histoclass.console import console
from histoclass.serving.app import SETTINGS_ENV, create_app

__all__ = ["serve"]


def serve(settings: ServeConfig) -> None:
    """Serve ``settings.model`` until interrupted; more than one worker loads one model each."""
    host, port, workers = settings.host, settings.port, settings.workers
    import uvicorn

    app = create_app(settings)
    title = app.title.removeprefix("histoclass: ")
    labels = len(app.state.card["labels"])
    console.print(f"Serving {title} ({labels} classes) on [bold]http://{host}:{port}[/]  (API docs: /docs)")
    if workers == 1:
        uvicorn.run(app, host=host, port=port, log_level="warning")
        return
    os.environ[SETTINGS_ENV] = settings.model_dump_json()
    uvicorn.run(
        "histoclass.serving.app:create_app_from_env", factory=True, host=host, port=port, workers=workers,
        log_level="warning",
    )  # fmt: skip
