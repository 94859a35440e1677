"""The model behind `musiclm serve`: one loaded MusicLM, a bounded queue of generation jobs and
one worker thread that runs them in order. No web code here: `app.py` puts HTTP in front.

A request is checked whole before it is queued (`RequestError` names the field: an empty
prompt, a length beyond `max_seconds`, an unknown setting, an unreadable or silent upload), so
a queued job fails only for reasons found while sampling. Each job lives in its own directory
under `output_dir` (request.json, the uploads, then `generate`'s WAV, PNG and JSON sidecar); a
restarted server lists the earlier jobs again, and marks those it was running as interrupted.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from typing import Any, Mapping, Optional

import soundfile

from musiclm_jax import export, fileio, pipeline
from musiclm_jax import generate as generate_lib
from musiclm_jax.audio.io import AUDIO_EXTENSIONS, AudioDecodeError, load_audio
from musiclm_jax.models.musiclm import PAPER_SETTINGS, STAGES, MusicLM, SamplingSettings, Window
from musiclm_jax.tokenizers.melody import UnusableMelodyError

JOB_FILE = "job.json"
UPLOADS = ("melody", "continue_from")  # the audio a request may upload, by field name
FIELDS = ("prompt", "story", "seconds", "seed", "num_candidates", "settings")
SETTING_KEYS = tuple(f.name for f in dataclasses.fields(SamplingSettings))
MAX_PROMPT_CHARS = 2000
MIN_SECONDS = 0.1  # a piece or a story segment
MAX_SETTING = {"temperature": 10.0, "top_k": 4096, "top_p": 1.0, "guidance_scale": 20.0}
# The first bytes of each format `load_audio` reads (mp3: an ID3 tag or a frame sync).
AUDIO_MAGIC = ((b"RIFF", ".wav"), (b"fLaC", ".flac"), (b"OggS", ".ogg"), (b"ID3", ".mp3"), (b"\xff\xfb", ".mp3"))


class RequestError(ValueError):
    """Bad input, answered with `status` (400 bad field, 413 too large) and this message."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class QueueFullError(RuntimeError):
    """Every queue slot is taken (answered 503)."""


@dataclasses.dataclass
class Served:
    """A loaded MusicLM and what a page needs to know about it."""

    model: MusicLM
    model_dirs: dict[str, str]  # recorded in each sidecar
    source: str  # 'pipeline', 'export' or 'directories'
    description: str
    export_seconds: Optional[float] = None  # an export samples only the length it was exported for
    # Each stage's defaults: the paper's, or the settings an export bundle was exported with
    # (its samplers are compiled for their top-k, top-p and guidance; only temperature may change).
    settings: dict[str, SamplingSettings] = dataclasses.field(default_factory=lambda: dict(PAPER_SETTINGS))


def load_served(
    model_dir: Optional[str] = None,
    model_dirs: Optional[Mapping[str, Optional[str]]] = None,
    *,
    semantic_rate: float = 25.0,
    windows: Optional[Mapping[str, Window]] = None,
) -> Served:
    """The model of `model_dir` (a `musiclm pipeline` directory or a `musiclm export` bundle) or
    of `model_dirs` (the directories `generate.load_musiclm` takes).

    Raises:
      ValueError: neither or both given, or `model_dir` is neither kind.
      FileNotFoundError, ExportError: as `load_musiclm` and `load_exported_musiclm`.
    """
    if (model_dir is None) == (model_dirs is None):
        raise ValueError("give a pipeline directory or export bundle (model_dir), or the model directories")
    if model_dirs is not None:
        dirs = generate_lib.check_model_dirs(model_dirs)
        model = generate_lib.load_musiclm(dirs, semantic_rate=semantic_rate, windows=windows)
        return Served(model, dirs, "directories", f"models from {dirs['semantic_stage_dir']} and its siblings")
    if not fileio.isdir(model_dir):
        raise FileNotFoundError(f"{model_dir} is not a directory")
    if fileio.exists(fileio.join(model_dir, export.EXPORT_FILE)):
        manifest = export.check_export(model_dir)
        model = export.load_exported_musiclm(model_dir)
        dirs = {k: fileio.join(model_dir, k.removesuffix("_dir")) for k in generate_lib.MODEL_DIRS}
        settings = {stage: SamplingSettings(**v) for stage, v in manifest["settings"].items()}
        description = f"export bundle {model_dir}"
        return Served(model, dirs, "export", description, export_seconds=float(manifest["seconds"]), settings=settings)
    missing = [d for d in ("mulan", "semantic_stage", "coarse_stage", "fine_stage", "codec") if not _has(model_dir, d)]
    if missing:
        raise ValueError(
            f"{model_dir} is neither a `musiclm pipeline` directory (it has no {', '.join(missing)}) nor a "
            f"`musiclm export` bundle (no {export.EXPORT_FILE}); for separate model directories use "
            "--gin_file=runs/serve.gin with --gin.MULAN_DIR=... (as `musiclm generate`)"
        )
    dirs = pipeline.generate_model_dirs(
        model_dir,
        melody=_has(model_dir, pipeline.DIRS["melody"], "melody_rvq"),
        w2v_bert=_has(model_dir, pipeline.DIRS["w2v_bert"], "kmeans"),
    )
    model = generate_lib.load_musiclm(dirs, semantic_rate=semantic_rate, windows=windows)
    return Served(model, dirs, "pipeline", f"pipeline run {model_dir}")


def _has(*parts: str) -> bool:
    return fileio.exists(fileio.join(*parts))


@dataclasses.dataclass
class Job:
    id: str
    directory: str
    request: dict  # as checked: prompt or story, seconds, seed, num_candidates, settings, upload names
    created: float
    status: str = "queued"  # queued, running, done, failed, interrupted
    progress: Optional[dict] = None  # {stage, window, windows}: the stage now sampling
    started: Optional[float] = None
    finished: Optional[float] = None
    error: Optional[str] = None
    sidecar: Optional[dict] = None

    def record(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("directory", "progress")}

    def on_progress(self, stage: str, window: int, num_windows: int) -> None:
        self.progress = {"stage": stage, "window": window, "windows": num_windows}


class Studio:
    """One model, a bounded queue and one worker thread.

    Args:
      served: the model (`load_served`).
      output_dir: a local directory; each job gets a subdirectory.
      max_seconds: the longest music a request may ask for.
      default_seconds: the page's initial length.
      queue_size: jobs that may wait (the running one not counted); one more is refused.
      max_upload_bytes: the largest request body (the uploads together).
      max_upload_seconds: the longest upload (a tune, a clip to continue), checked before decoding.
      max_candidates: the most candidates per request (each costs a full generation).
      start: start the worker now (tests start it later to fill the queue).
    """

    def __init__(
        self,
        served: Served,
        output_dir: str,
        *,
        max_seconds: float = 30.0,
        default_seconds: float = 10.0,
        queue_size: int = 8,
        max_upload_bytes: int = 20 << 20,
        max_upload_seconds: float = 60.0,
        max_candidates: int = 8,
        start: bool = True,
    ):
        if fileio.is_url(output_dir):
            raise ValueError(f"output_dir must be a local directory (uploads are read from it), got {output_dir}")
        if served.export_seconds is not None:
            max_seconds = default_seconds = served.export_seconds
        if not 0 < default_seconds <= max_seconds:
            raise ValueError(f"default_seconds must be in (0, max_seconds={max_seconds}], got {default_seconds}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.served, self.output_dir = served, os.path.abspath(output_dir)
        self.max_seconds, self.default_seconds, self.queue_size = max_seconds, default_seconds, queue_size
        self.max_upload_bytes, self.max_candidates = max_upload_bytes, max_candidates
        self.max_upload_seconds = max_upload_seconds
        self._decoding = threading.BoundedSemaphore(2)
        os.makedirs(self.output_dir, exist_ok=True)
        self._lock = threading.Condition()
        self._jobs: dict[str, Job] = {j.id: j for j in self._earlier_jobs()}
        self._waiting: collections.deque[str] = collections.deque()
        self._stopping = self._paused = False
        self._worker: Optional[threading.Thread] = None
        if start:
            self.start()

    # ---- what the page and the API read ----

    def info(self) -> dict:
        model = self.served.model
        return {
            "model": self.served.description,
            "source": self.served.source,
            "max_seconds": self.max_seconds,
            "default_seconds": self.default_seconds,
            "fixed_seconds": self.served.export_seconds is not None,
            "max_candidates": self.max_candidates,
            "max_upload_bytes": self.max_upload_bytes,
            "max_upload_seconds": self.max_upload_seconds,
            "queue_size": self.queue_size,
            "sample_rate": model.codec.sample_rate,
            "settings": {s: vars(self.served.settings[s]) for s in STAGES},
            "can_continue": model.semantic_tokenizer is not None,
            "can_follow_melody": model.melody_spec is not None,
        }

    def job(self, job_id: str) -> Optional[Job]:
        with self._lock:
            return self._jobs.get(job_id)

    def jobs(self, limit: int = 100) -> list[Job]:
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: j.created, reverse=True)[:limit]

    def position(self, job: Job) -> Optional[int]:
        """1 for the next job to run; None once it runs."""
        with self._lock:
            return self._waiting.index(job.id) + 1 if job.id in self._waiting else None

    def result_file(self, job: Job, kind: str) -> Optional[str]:
        """The finished job's 'wav', 'png' or 'json' path."""
        if job.status != "done" or not job.sidecar:
            return None  # by name in the job's own directory: the output directory may have moved
        return os.path.join(job.directory, os.path.basename(job.sidecar["file"])[: -len(".wav")] + "." + kind)

    # ---- submitting ----

    def submit(self, fields: Mapping[str, Any], uploads: Optional[Mapping[str, tuple[str, bytes]]] = None) -> Job:
        """Checks a request (`fields` as JSON types or form strings; `uploads` {field: (file
        name, bytes)}) and queues it.

        Raises:
          RequestError: bad input (nothing is kept).
          QueueFullError: the queue is full.
        """
        request = self.check(fields)
        uploads = dict(uploads or {})
        unknown = sorted(set(uploads) - set(UPLOADS))
        if unknown:
            raise RequestError(f"unknown upload {unknown[0]!r}; uploads are {list(UPLOADS)}")
        with self._lock:
            if len(self._waiting) >= self.queue_size:
                raise QueueFullError(f"the queue is full ({self.queue_size} waiting); try again in a minute")
        job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        directory = os.path.join(self.output_dir, job_id)
        os.makedirs(directory)
        try:
            for field, (name, data) in uploads.items():
                request[field] = self._check_upload(field, name, data, directory)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        job = Job(job_id, directory, request, created=time.time())
        with self._lock:
            if len(self._waiting) >= self.queue_size:  # filled while the uploads were read
                shutil.rmtree(directory, ignore_errors=True)
                raise QueueFullError(f"the queue is full ({self.queue_size} waiting); try again in a minute")
            self._save(job)
            self._jobs[job.id] = job
            self._waiting.append(job.id)
            self._lock.notify_all()
        return job

    def check(self, fields: Mapping[str, Any]) -> dict:
        """The request as `generate` takes it, or RequestError naming the bad field."""
        if not isinstance(fields, Mapping):
            raise RequestError("the request must be a JSON object or a form")
        unknown = sorted(set(fields) - set(FIELDS) - set(UPLOADS))
        if unknown:
            raise RequestError(f"unknown field {unknown[0]!r}; the fields are {list(FIELDS + UPLOADS)}")
        for field in UPLOADS:
            if field in fields and fields[field] not in ("", None):
                raise RequestError(f"{field} must be an uploaded audio file (multipart/form-data)")
        story = _parse_json_field(fields, "story")
        prompt = fields.get("prompt")
        prompt = prompt.strip() if isinstance(prompt, str) else prompt
        request: dict[str, Any] = {}
        if story == [] and not prompt:
            raise RequestError("the story has no segments: add one (text and seconds)")
        if story not in (None, [], ""):
            if prompt:
                raise RequestError("give a prompt or a story, not both")
            if fields.get("seconds") not in (None, ""):
                raise RequestError("with a story each segment has its own seconds: leave seconds out")
            request["story"] = self._check_story(story)
            seconds = sum(s["seconds"] for s in request["story"])
        else:
            if prompt is not None and not isinstance(prompt, str):
                raise RequestError("prompt must be text")
            if not prompt:
                raise RequestError("the prompt is empty: describe the music, e.g. 'a calm piano melody with soft rain'")
            request["prompt"] = self._check_text("prompt", prompt)
            seconds = _number(fields, "seconds", float, self.default_seconds)
        # Tenths of a second: each new length compiles samplers, so lengths come in steps.
        seconds = round(seconds, 1)
        if not MIN_SECONDS <= seconds <= self.max_seconds:
            raise RequestError(
                f"seconds must be at least {MIN_SECONDS:g} and at most {self.max_seconds:g}, got {seconds:g}"
            )
        if self.served.export_seconds is not None and abs(seconds - self.served.export_seconds) > 1e-6:
            raise RequestError(f"this export bundle makes {self.served.export_seconds:g} s of music only")
        request["seconds"] = seconds
        request["seed"] = _number(fields, "seed", int, 0, low=0, high=2**31 - 1)
        request["num_candidates"] = _number(fields, "num_candidates", int, 1, low=1, high=self.max_candidates)
        request["settings"] = self._check_settings(_parse_json_field(fields, "settings") or {})
        return request

    def _check_text(self, what: str, text: str) -> str:
        if len(text) > MAX_PROMPT_CHARS:
            raise RequestError(f"{what} is {len(text)} characters; at most {MAX_PROMPT_CHARS}")
        return text

    def _check_story(self, story) -> list[dict]:
        if not isinstance(story, list) or len(story) > 20:
            raise RequestError("story must be a list of at most 20 {'text': ..., 'seconds': ...} segments")
        out = []
        for i, segment in enumerate(story):
            if not isinstance(segment, Mapping) or set(segment) - {"text", "seconds"}:
                raise RequestError(f"story segment {i + 1} must be {{'text': ..., 'seconds': ...}}")
            text = segment.get("text")
            if not isinstance(text, str) or not text.strip():
                raise RequestError(f"story segment {i + 1} has no text")
            seconds = round(_number(segment, "seconds", float, None, what=f"story segment {i + 1} seconds"), 1)
            if not seconds >= MIN_SECONDS:
                raise RequestError(f"story segment {i + 1} must last at least {MIN_SECONDS:g} s")
            out.append({"text": self._check_text(f"story segment {i + 1}", text.strip()), "seconds": seconds})
        return out

    def _check_settings(self, settings) -> dict:
        if not isinstance(settings, Mapping):
            raise RequestError("settings must be {stage: {setting: value}}")
        out = {}
        for stage, values in settings.items():
            if stage not in STAGES:
                raise RequestError(f"settings: unknown stage {stage!r}; the stages are {list(STAGES)}")
            if not isinstance(values, Mapping):
                raise RequestError(f"settings.{stage} must be {{setting: value}}")
            unknown = sorted(set(values) - set(SETTING_KEYS))
            if unknown:
                raise RequestError(
                    f"settings.{stage}: unknown setting {unknown[0]!r}; the settings are {list(SETTING_KEYS)}"
                )
            merged = dict(vars(self.served.settings[stage]))
            for key, value in values.items():
                kind = int if key == "top_k" else float
                number = _number(values, key, kind, None, what=f"settings.{stage}.{key}", high=MAX_SETTING[key])
                # Two decimals: top-k, top-p and guidance are compiled into the samplers.
                merged[key] = number if kind is int else round(number, 2)
            try:
                SamplingSettings(**merged)
            except ValueError as e:
                raise RequestError(f"settings.{stage}: {e}") from None
            out[stage] = merged
        if self.served.export_seconds is not None:
            for stage, values in out.items():
                fixed = {k: v for k, v in vars(self.served.settings[stage]).items() if k != "temperature"}
                changed = sorted(k for k, v in fixed.items() if values[k] != v)
                if changed:
                    raise RequestError(
                        f"settings.{stage}: this export bundle was compiled with {fixed}; only temperature may change"
                    )
        return {s: out.get(s, dict(vars(self.served.settings[s]))) for s in STAGES}

    def _check_upload(self, field: str, name: str, data: bytes, directory: str) -> str:
        model = self.served.model
        if field == "melody" and model.melody_spec is None:
            raise RequestError(
                "this model cannot follow a melody: its semantic stage was trained without melody tokens"
            )
        if field == "continue_from" and model.semantic_tokenizer is None:
            raise RequestError("this model cannot continue audio: it has no w2v-BERT semantic tokenizer")
        if len(data) > self.max_upload_bytes:
            raise RequestError(f"{field}: the file is larger than {self.max_upload_bytes >> 20} MiB", status=413)
        if not data:
            raise RequestError(f"{field}: the uploaded file is empty")
        suffix = os.path.splitext(os.path.basename(name or ""))[1].lower()
        if suffix not in AUDIO_EXTENSIONS:  # a recording sent without a name: its first bytes say what it is
            suffix = next((ext for magic, ext in AUDIO_MAGIC if data.startswith(magic)), suffix)
        path = os.path.join(directory, field + (suffix if re.fullmatch(r"\.[a-z0-9]{1,5}", suffix) else ""))
        with open(path, "wb") as f:
            f.write(data)
        rate = model.melody.sample_rate if field == "melody" else model.codec.sample_rate
        try:
            with self._decoding:  # decoding and the melody check: a few at once, beside the worker
                return self._check_audio(field, name, path, rate)
        except AudioDecodeError as e:
            shown = name or "the upload"
            detail = str(e.detail).replace(path, shown)  # the client's file name, not the server's path
            raise RequestError(f"{field}: cannot read {shown} as audio ({e.category}: {detail})") from None
        except UnusableMelodyError as e:
            raise RequestError(f"{field}: {e}") from None

    def _check_audio(self, field: str, name: str, path: str, rate: int) -> str:
        """Refuses audio too long to be worth decoding (a small compressed file can hold hours),
        then decodes it, and checks that a tune is not silent."""
        try:
            seconds = soundfile.info(path).duration
        except (RuntimeError, soundfile.LibsndfileError):
            seconds = None  # load_audio says why it cannot be read
        if seconds is not None and seconds > self.max_upload_seconds:
            raise RequestError(
                f"{field}: {name or 'the upload'} lasts {seconds:.0f} s; at most {self.max_upload_seconds:g} s",
                status=413,
            )
        audio, info = load_audio(path, sample_rate=rate)
        if field == "melody":
            self.served.model.tune_tokens(audio, info.sample_rate, None)
        elif len(audio) < info.sample_rate / 4:
            raise RequestError(f"{field}: the clip is {len(audio) / info.sample_rate:.2f} s; give at least 0.25 s")
        return path

    # ---- running ----

    def start(self) -> None:
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, name="musiclm-serve-worker", daemon=True)
            self._worker.start()

    def pause(self) -> None:
        """Holds queued jobs (the one running finishes); `resume` lets them run."""
        with self._lock:
            self._paused = True

    def resume(self) -> None:
        with self._lock:
            self._paused = False
            self._lock.notify_all()

    def stop(self, wait: bool = True) -> None:
        """Stops the worker after its current job (`wait`: until then; else it ends with the process)."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._worker is not None and wait:
            self._worker.join()

    def _work(self) -> None:
        while True:
            with self._lock:
                while (self._paused or not self._waiting) and not self._stopping:
                    self._lock.wait()
                if self._stopping:
                    return
                job = self._jobs[self._waiting.popleft()]
                job.status, job.started = "running", time.time()
            self._save(job)
            self._run(job)

    def _run(self, job: Job) -> None:
        r = job.request
        text = (
            {"story": [(s["text"], s["seconds"]) for s in r["story"]]} if "story" in r else {"prompts": [r["prompt"]]}
        )
        try:
            (sidecar,) = generate_lib.generate(
                output_dir=job.directory,
                seconds=r["seconds"],
                model_dirs=self.served.model_dirs,
                max_seconds=self.max_seconds,
                seed=r["seed"],
                num_candidates=r["num_candidates"],
                settings={s: SamplingSettings(**v) for s, v in r["settings"].items()},
                continue_from=r.get("continue_from"),
                melody=r.get("melody"),
                model=self.served.model,
                progress=job.on_progress,
                **text,
            )
            job.sidecar, job.status, job.progress = sidecar, "done", None
        except Exception as e:  # noqa: BLE001  (the page shows why; the log has the traceback)
            logging.exception("musiclm serve: job %s failed", job.id)
            lines = str(e).strip().splitlines()
            job.error, job.status = f"{type(e).__name__}: {lines[0] if lines else ''}", "failed"
        job.finished = time.time()
        self._save(job)

    # ---- persistence ----

    def _save(self, job: Job) -> None:
        path = os.path.join(job.directory, JOB_FILE)
        with open(path + ".tmp", "w") as f:
            json.dump(job.record(), f, indent=1)
        os.replace(path + ".tmp", path)

    def _earlier_jobs(self) -> list[Job]:
        jobs = []
        for name in sorted(os.listdir(self.output_dir)):
            path = os.path.join(self.output_dir, name, JOB_FILE)
            if not os.path.isfile(path):
                continue
            try:
                with open(path) as f:
                    job = Job(directory=os.path.dirname(path), **json.load(f))
            except (ValueError, TypeError) as e:
                logging.warning("musiclm serve: skipping %s: %s", path, e)
                continue
            if job.status in ("queued", "running"):
                job.status, job.error = "interrupted", "the server stopped before this job finished; submit it again"
            jobs.append(job)
        return jobs


def _parse_json_field(fields: Mapping[str, Any], name: str):
    """A field that is structured in JSON and a JSON string in a form."""
    value = fields.get(name)
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise RequestError(f"{name} is not valid JSON: {e}") from None
    return value


def _number(fields, name, kind, default, *, low=None, high=None, what=None):
    """fields[name] as `kind` (a number, or its text from a form), within [low, high]."""
    what = what or name
    value = fields.get(name)
    if value is None or value == "":
        if default is None:
            raise RequestError(f"{what} is missing")
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise RequestError(f"{what} must be a number, got {value!r}")
    try:
        number = float(value)
    except (ValueError, OverflowError):
        raise RequestError(f"{what} must be a number, got {value!r}") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise RequestError(f"{what} must be a finite number, got {value!r}")
    if kind is int:
        if number != int(number):
            raise RequestError(f"{what} must be a whole number, got {value!r}")
        number = int(number)
    if (low is not None and number < low) or (high is not None and number > high):
        bounds = (
            f"between {low} and {high}"
            if low is not None and high is not None
            else (f"at most {high}" if low is None else f"at least {low}")
        )
        raise RequestError(f"{what} must be {bounds}, got {value!r}")
    return number
