"""HTTP in front of a Studio: the page (`page.html`, no asset from elsewhere) and a JSON API.

    GET  /                          the page
    GET  /api/info                  limits, defaults and what the model can do
    POST /api/jobs                  submit (JSON, or multipart/form-data with uploads) -> 202 {id, url, ...}
    GET  /api/jobs                  every job, newest first
    GET  /api/jobs/{id}             status, queue position, progress, error, result
    GET  /api/jobs/{id}/audio.wav   the music (also spectrogram.png, sidecar.json; ?download=1 to save)

Errors are JSON {"error": message}: 400 bad input, 404 unknown job, 409 not finished, 411/413
request size, 415 content type, 403 a post from another site's page, 503 queue full; never a
traceback.
"""

from __future__ import annotations

import json
import logging
import os
import re
import urllib.parse
from importlib import resources
from typing import Optional, Sequence

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse
from starlette.routing import Route

from musiclm_jax.serve.studio import FIELDS, UPLOADS, Job, QueueFullError, RequestError, Studio

# A result's files by URL name: (the kind `Studio.result_file` takes, media type).
RESULT_FILES = {
    "audio.wav": ("wav", "audio/wav"),
    "spectrogram.png": ("png", "image/png"),
    "sidecar.json": ("json", "application/json"),
}
FORM_SLACK = 64 << 10  # the form's own fields and boundaries beside the uploads


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def job_view(studio: Studio, job: Job) -> dict:
    """A job as the API shows it (the page reads the same)."""
    url = f"/api/jobs/{job.id}"
    out = {
        "id": job.id,
        "url": url,
        "status": job.status,
        # Uploads by file name: the server's paths are its own business.
        "request": {k: os.path.basename(v) if k in UPLOADS else v for k, v in job.request.items()},
        "created": job.created,
        "started": job.started,
        "finished": job.finished,
        "position": studio.position(job),
        "progress": job.progress,
        "error": job.error,
    }
    if job.status == "done":
        s = job.sidecar
        out["result"] = {
            "mulan_score": s.get("mulan_score"),
            "seconds": s["seconds"] + s.get("prompt_seconds", 0.0),
            "sample_rate": s["sample_rate"],
            "generation_seconds": s["generation_seconds_all_prompts"],
            "files": {name: f"{url}/{name}" for name in RESULT_FILES},
        }
    return out


def public_sidecar(sidecar: dict) -> dict:
    """A sidecar as clients see it: file names, not the server's paths or model directories."""
    out = {k: v for k, v in sidecar.items() if k != "models"}
    for key in ("file", *UPLOADS):
        if out.get(key):
            out[key] = os.path.basename(out[key])
    return out


def _download_name(job: Job, kind: str) -> str:
    text = job.request.get("prompt") or " ".join(s["text"] for s in job.request.get("story", []))
    slug = re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:40] or "music"
    return f"musiclm_{job.id}_{slug}.{kind}"


def create_app(studio: Studio, allowed_hosts: Optional[Sequence[str]] = None) -> Starlette:
    """The app. `allowed_hosts`: the Host names it answers (a server bound to this machine answers
    only localhost names, so a web page cannot reach it by rebinding a domain name to 127.0.0.1)."""
    page = resources.files("musiclm_jax.serve").joinpath("page.html").read_text()

    async def index(request: Request):
        return HTMLResponse(page)

    async def info(request: Request):
        return JSONResponse(studio.info())

    async def jobs(request: Request):
        if request.method == "GET":
            return JSONResponse({"jobs": [job_view(studio, j) for j in studio.jobs()]})
        origin = request.headers.get("origin")
        if origin and urllib.parse.urlsplit(origin).netloc != request.headers.get("host"):
            # A form on another site may post here (browsers send that without asking): refused.
            return _error(f"requests from {origin} are refused: use this server's own page", 403)
        try:
            fields, uploads = await _read_request(request, studio.max_upload_bytes)
            job = await run_in_threadpool(studio.submit, fields, uploads)  # decodes uploads: off the event loop
        except RequestError as e:
            return _error(str(e), e.status)
        except QueueFullError as e:
            return _error(str(e), 503)
        view = job_view(studio, job)
        return JSONResponse(view, status_code=202, headers={"Location": view["url"]})

    async def one_job(request: Request):
        job = studio.job(request.path_params["job_id"])
        if job is None:
            return _error(f"no job {request.path_params['job_id']!r}", 404)
        return JSONResponse(job_view(studio, job))

    async def job_file(request: Request):
        job = studio.job(request.path_params["job_id"])
        name = request.path_params["name"]
        if job is None or name not in RESULT_FILES:
            return _error(f"no {name!r} of job {request.path_params['job_id']!r}", 404)
        kind, media_type = RESULT_FILES[name]
        path = studio.result_file(job, kind)
        if path is None:
            return _error(f"job {job.id} is {job.status}: it has no {name}", 409)
        if not os.path.isfile(path):
            return _error(f"{name} of job {job.id} was deleted from the server", 404)
        if kind == "json":  # the sidecar without the server's own paths
            headers = {"Content-Disposition": f'attachment; filename="{_download_name(job, kind)}"'}
            return JSONResponse(
                public_sidecar(job.sidecar), headers=headers if request.query_params.get("download") else None
            )
        filename = _download_name(job, kind) if request.query_params.get("download") else None
        return FileResponse(path, media_type=media_type, filename=filename)

    async def http_error(request: Request, exc: HTTPException):
        return _error(exc.detail or "error", exc.status_code)

    async def server_error(request: Request, exc: Exception):
        logging.exception("musiclm serve: %s %s", request.method, request.url.path, exc_info=exc)
        return _error(f"internal error ({type(exc).__name__}); the server log has the details", 500)

    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))] if allowed_hosts else []
    return Starlette(
        middleware=middleware,
        routes=[
            Route("/", index),
            Route("/api/info", info),
            Route("/api/jobs", jobs, methods=["GET", "POST"]),
            Route("/api/jobs/{job_id}", one_job),
            Route("/api/jobs/{job_id}/{name}", job_file),
        ],
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )


async def _read_request(request: Request, max_upload_bytes: int) -> tuple[dict, dict]:
    """(fields, uploads {field: (file name, bytes)}) of a JSON or form body, size-checked first."""
    length = request.headers.get("content-length")
    if length is None or not length.isdigit():
        raise RequestError("the request needs a Content-Length", status=411)
    if int(length) > max_upload_bytes + FORM_SLACK:
        raise RequestError(f"the request is larger than the {max_upload_bytes >> 20} MiB upload limit", status=413)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        try:
            fields = json.loads(await request.body() or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RequestError(f"the body is not valid JSON: {e}") from None
        if not isinstance(fields, dict):
            raise RequestError("the body must be a JSON object")
        return fields, {}
    if content_type not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raise RequestError(
            f"send application/json or multipart/form-data, not {content_type or 'no content type'}", status=415
        )
    try:
        form = await request.form(max_files=len(UPLOADS), max_fields=len(FIELDS) + len(UPLOADS))
    except MultiPartException as e:
        raise RequestError(f"cannot read the form: {e.message}") from None
    fields, uploads = {}, {}
    try:
        for key, value in form.multi_items():
            if key in fields or key in uploads:
                raise RequestError(f"field {key!r} is given twice")
            if isinstance(value, UploadFile):
                data = await value.read()
                if value.filename or data:  # a file input left empty sends an empty part
                    uploads[key] = (value.filename or "", data)
            else:
                fields[key] = value
    finally:
        await form.close()  # its spooled temporary files
    return fields, uploads
