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


def create_app(studio: Studio, allowed_hosts=None):
    from musiclm_jax.serve.app import create_app as create

    return create(studio, allowed_hosts)


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
    default_seconds: Optional[float] = None,
    queue_size: int = 8,
    max_upload_mb: float = 20.0,
    max_upload_seconds: float = 60.0,
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
      max_seconds, default_seconds (default: 10 s or max_seconds), queue_size, max_candidates: as `Studio`.
      max_upload_mb: the largest request (its uploads together: a tune, a clip to continue).
      max_upload_seconds: the longest upload.
    """
    import socket

    import uvicorn

    default_seconds = min(10.0, max_seconds) if default_seconds is None else default_seconds
    if not 0 < default_seconds <= max_seconds or queue_size < 1 or max_candidates < 1 or max_upload_mb <= 0:
        raise ValueError(
            "need 0 < default_seconds <= max_seconds, queue_size >= 1, max_candidates >= 1 and max_upload_mb > 0; got "
            f"{default_seconds}, {max_seconds}, {queue_size}, {max_candidates}, {max_upload_mb}"
        )
    with socket.socket() as probe:  # a port in use is said now, not after minutes of loading
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
    served = load_served(model_dir, model_dirs, semantic_rate=semantic_rate, windows=windows)
    studio = Studio(
        served,
        output_dir,
        max_seconds=max_seconds,
        default_seconds=default_seconds,
        queue_size=queue_size,
        max_upload_bytes=int(max_upload_mb * (1 << 20)),
        max_upload_seconds=max_upload_seconds,
        max_candidates=max_candidates,
    )
    local = host in ("127.0.0.1", "localhost", "::1")
    logging.getLogger("musiclm_jax").info("serving %s", served.description)
    print(f"musiclm serve: {served.description}; results in {output_dir}")
    print(f"musiclm serve: open http://{'localhost' if host in ('127.0.0.1', 'localhost') else host}:{port}/")
    try:
        app = create_app(studio, allowed_hosts=["localhost", "127.0.0.1", "[::1]", "::1"] if local else None)
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        studio.stop(wait=False)  # Ctrl-C: do not wait for the piece being made
