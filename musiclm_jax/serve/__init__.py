"""`musiclm serve`: a web page and a JSON API that make music with one loaded model.

    from musiclm_jax import serve
    serve.run_server(model_dir="/tmp/musiclm_run")        # a pipeline directory or an export bundle

`studio.py` holds the model, the queue and the worker; `app.py` the HTTP routes; `page.html` the
page (plain HTML and JavaScript, nothing fetched from elsewhere).
"""

from __future__ import annotations

import logging
from typing import Mapping, Optional

from musiclm_jax.models.musiclm import Window
from musiclm_jax.serve.studio import QueueFullError, RequestError, Served, Studio, load_served

__all__ = ["QueueFullError", "RequestError", "Served", "Studio", "create_app", "load_served", "run_server"]


def create_app(studio: Studio):
    from musiclm_jax.serve.app import create_app as create

    return create(studio)


def run_server(
    *,
    model_dir: Optional[str] = None,
    model_dirs: Optional[Mapping[str, Optional[str]]] = None,
    semantic_rate: float = 25.0,
    windows: Optional[Mapping[str, Window]] = None,
    output_dir: str = "musiclm_serve",
    host: str = "127.0.0.1",
    port: int = 8000,
    max_seconds: float = 30.0,
    default_seconds: float = 10.0,
    queue_size: int = 8,
    max_upload_mb: float = 20.0,
    max_candidates: int = 8,
) -> None:
    """Loads the model once, then serves until interrupted (Ctrl-C).

    Args:
      model_dir: a `musiclm pipeline` directory or a `musiclm export` bundle; or
      model_dirs: the model directories as `generate.load_musiclm` takes them (with
        `semantic_rate` and `windows`).
      output_dir: a local directory for each job's uploads, WAV, spectrogram and sidecar; a server
        started again on it lists the earlier results.
      host: the address to bind; 127.0.0.1 serves this machine only, 0.0.0.0 every network the
        machine is on (anyone who reaches it can queue generations and read the results).
      port: the TCP port.
      max_seconds, default_seconds, queue_size, max_candidates: as `Studio`.
      max_upload_mb: the largest upload (a tune or a clip to continue).
    """
    import uvicorn

    served = load_served(model_dir, model_dirs, semantic_rate=semantic_rate, windows=windows)
    studio = Studio(
        served,
        output_dir,
        max_seconds=max_seconds,
        default_seconds=default_seconds,
        queue_size=queue_size,
        max_upload_bytes=int(max_upload_mb * (1 << 20)),
        max_candidates=max_candidates,
    )
    logging.getLogger("musiclm_jax").info("serving %s", served.description)
    print(f"musiclm serve: {served.description}; results in {output_dir}")
    print(f"musiclm serve: open http://{'localhost' if host in ('127.0.0.1', 'localhost') else host}:{port}/")
    try:
        uvicorn.run(create_app(studio), host=host, port=port, log_level="warning")
    finally:
        studio.stop()
