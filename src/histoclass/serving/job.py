"""The serve job: bind the port, load the model, say where it listens, run uvicorn."""

from __future__ import annotations

import errno
import os
import socket

from histoclass.config import ServeConfig
from histoclass.console import console
from histoclass.errors import HistoclassError
from histoclass.heap import limit_arenas
from histoclass.serving.app import SETTINGS_ENV, create_app
from histoclass.serving.viewer import check_slides

__all__ = ["bind", "serve"]


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or one line saying why there cannot be one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise HistoclassError(
                f"--port: {port} is in use on {host}; pass another --port"
            ) from None
        if error.errno == errno.EACCES:
            raise HistoclassError(
                f"--port: {port} needs administrator rights; pass a port above 1023"
            ) from None
        raise HistoclassError(
            f"--host: cannot listen on {host}:{port} ({error.strerror})"
        ) from None
    sock.set_inheritable(True)
    return sock


def serve(settings: ServeConfig) -> None:
    """Serve ``settings.model`` until interrupted; more than one worker loads one model each."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    limit_arenas()  # before the server starts its threads
    sock = bind(settings.host, settings.port)  # a taken port is one line before the model loads
    if settings.slides:
        check_slides(settings)  # so is a slide folder that cannot be shown
    app = create_app(settings)  # also builds a run's engine cache once, before any worker starts
    title = app.title.removeprefix("histoclass: ")
    url = f"http://{settings.host}:{settings.port}"
    console.print(
        f"Serving {title} ({len(app.state.card['labels'])} classes) on [bold]{url}[/]  (API docs: /docs)"
    )
    if settings.workers == 1:
        config = uvicorn.Config(app, log_level="warning")
        uvicorn.Server(config).run(sockets=[sock])
        return
    os.environ[SETTINGS_ENV] = settings.model_dump_json()
    config = uvicorn.Config(
        "histoclass.serving.app:create_app_from_env",
        factory=True,
        workers=settings.workers,
        log_level="warning",
    )
    Multiprocess(config, sockets=[sock]).run()
