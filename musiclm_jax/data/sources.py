"""Raw-audio sources: a JSONL manifest, the MusicCaps CSV, and a folder of files.

All sources share one small interface (the synthetic source and the seqio tasks use it
too): `name`, `sample_rate`, `report` (a `BadInputReport`) and `examples(split)`, an
iterator of `Example`s (float32 mono in [-1, 1] at `sample_rate`). Bad files are counted
by category and skipped or repaired (see `bad_input`); when a split is exhausted the
source logs the summary and raises `NoUsableExamplesError` if nothing was usable.

Splits are "train" and "validation". An explicit split in the data wins (a manifest's
"split" key, MusicCaps' `is_audioset_eval`); otherwise a hash of the example id puts
`validation_fraction` of the ids into validation, the same on every machine and run.
Each `examples(split)` pass gets a fresh report (`self.report`, also `self.reports[split]`);
a line too broken to know its split (`bad_manifest_line`) is counted in every split's report.

Every path (manifest, CSV, folder, audio files) may be local or an object-store URL
(gs://bucket/...), read through musiclm_jax.fileio; an audio file on a bucket is downloaded
whole to a temporary file to be decoded.
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import fnmatch
import glob
import hashlib
import io
import json
import logging
import os
from typing import IO, Any, Iterator, Protocol

import numpy as np

from musiclm_jax import fileio
from musiclm_jax.audio.io import AUDIO_EXTENSIONS, AudioDecodeError, load_audio
from musiclm_jax.data import bad_input
from musiclm_jax.data.bad_input import BadInputReport

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation")
# Split names found in the wild, mapped onto ours; "test" data is held out, so validation.
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "eval": "validation",
    "test": "validation",
}
_SIDECAR_EXTENSIONS = (".txt", ".json")


@dataclasses.dataclass
class Example:
    """One clip: float32 mono audio in [-1, 1] at `sample_rate`, its caption and labels."""

    id: str
    audio: np.ndarray
    sample_rate: int
    caption: str
    labels: dict = dataclasses.field(default_factory=dict)
    # Other captions of the same clip (`caption` first), for augmentation: a raw-audio task draws
    # one of them per training visit (data/audio_tasks.py). Empty: `caption` only.
    caption_variants: tuple = ()


class Source(Protocol):
    name: str
    sample_rate: int
    report: BadInputReport

    def examples(self, split: str) -> Iterator[Example]: ...


def hash_split(example_id: str, validation_fraction: float) -> str:
    """Deterministic split from the id alone (sha256, not Python's salted hash())."""
    digest = hashlib.sha256(example_id.encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    return "validation" if u < validation_fraction else "train"


def normalize_split(value: Any) -> str | None:
    """Maps a split name from the data onto "train"/"validation"; None if unknown."""
    return _SPLIT_ALIASES.get(str(value).strip().lower())


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


@dataclasses.dataclass
class _Entry:
    """A candidate example before decoding."""

    id: str
    path: str
    caption: str | None
    labels: dict
    start_s: float | None = None
    end_s: float | None = None


class _AudioSource:
    """Shared decode/validate/count loop; subclasses list `_Entry`s for a split."""

    name: str

    def __init__(
        self,
        *,
        sample_rate: int,
        min_seconds: float = 0.0,
        normalize_db: float | None = None,
        validation_fraction: float = 0.05,
        require_caption: bool = False,
    ):
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        if not 0.0 <= validation_fraction <= 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1], got {validation_fraction}")
        self.sample_rate = int(sample_rate)
        self.min_seconds = float(min_seconds)
        self.normalize_db = normalize_db
        self.validation_fraction = validation_fraction
        self.require_caption = require_caption
        self.report = BadInputReport(self.name)
        self.reports: dict[str, BadInputReport] = {}

    def _entries(self, split: str, report: BadInputReport) -> Iterator[_Entry]:
        raise NotImplementedError

    def splits_present(self) -> tuple[str, ...]:
        """The splits that have at least one entry (read from the listing; nothing is decoded)."""
        return tuple(s for s in SPLITS if next(iter(self._entries(s, BadInputReport())), None) is not None)

    def captions(self, split: str, limit: int | None = None) -> Iterator[str]:
        """The split's captions from the listing, without decoding audio (for caption vocabularies)."""
        _check_split(split)
        for i, entry in enumerate(self._entries(split, BadInputReport())):
            if limit is not None and i >= limit:
                return
            if entry.caption:
                yield entry.caption

    def examples(self, split: str) -> Iterator[Example]:
        """Yields the split's usable examples; counts the rest in a fresh `self.report`."""
        _check_split(split)
        report = self.report = self.reports[split] = BadInputReport(f"{self.name}:{split}")
        num_ok = num_entries = 0
        for entry in self._entries(split, report):
            num_entries += 1
            example = self._load(entry, report)
            if example is not None:
                num_ok += 1
                yield example
        if report:  # repairs alone (a 44.1 kHz collection) are routine: INFO, not WARNING
            logger.log(logging.WARNING if report.skipped() else logging.INFO, "%s", report.summary())
        hint = (
            ""
            if num_entries or report
            else (
                f"no entry falls in this split; validation_fraction={self.validation_fraction} of ids go to "
                "validation by hash unless the data names a split"
            )
        )
        report.check_usable(self.name, num_ok, split, hint=hint)

    def _load(self, entry: _Entry, report: BadInputReport) -> Example | None:
        if not entry.caption and self.require_caption:  # skip before paying for the decode
            report.add(bad_input.MISSING_CAPTION, entry.path, "no caption (require_caption=True)", skipped=True)
            return None
        try:
            audio, info = load_audio(
                entry.path,
                sample_rate=self.sample_rate,
                start_s=entry.start_s,
                end_s=entry.end_s,
                normalize_db=self.normalize_db,
            )
        except AudioDecodeError as e:
            report.add(e.category, e.path, e.detail)
            return None
        seconds = audio.shape[0] / self.sample_rate
        if seconds < self.min_seconds:
            report.add(bad_input.TOO_SHORT, entry.path, f"{seconds:.2f} s < min_seconds={self.min_seconds:g}")
            return None
        if info.resampled:
            report.add(bad_input.RESAMPLED, entry.path, f"{info.orig_sample_rate} Hz -> {self.sample_rate} Hz")
        if info.downmixed:
            report.add(bad_input.DOWNMIXED, entry.path, f"{info.orig_channels} channels -> mono")
        if not entry.caption:  # counted only for kept examples: a repair of something skipped is noise
            report.add(bad_input.MISSING_CAPTION, entry.path, 'no caption; using ""', skipped=False)
        return Example(
            id=entry.id, audio=audio, sample_rate=self.sample_rate, caption=entry.caption or "", labels=entry.labels
        )

    def _split_of(self, example_id: str, explicit: Any = None) -> str | None:
        if explicit is not None and explicit != "":
            return normalize_split(explicit)
        return hash_split(example_id, self.validation_fraction)


class ManifestSource(_AudioSource):
    """JSONL manifest, one `{"path", "caption", ...}` per line.

    Relative paths resolve against the manifest's folder. Optional keys: "id" (default: the
    path as written), "split" (train/validation/...), "start_s"/"end_s" (crop); every other
    key goes into `labels`. A line that is not a JSON object with a "path" counts as
    `bad_manifest_line`, logged with its line number.
    """

    _RESERVED = ("path", "caption", "id", "split", "start_s", "end_s")

    def __init__(self, manifest_path: str | os.PathLike, **kwargs: Any):
        self.manifest_path = fileio.resolve(manifest_path)
        self.name = f"manifest:{self.manifest_path}"
        super().__init__(**kwargs)
        if not fileio.isfile(self.manifest_path):
            raise FileNotFoundError(f"manifest not found: {self.manifest_path}")

    def _entries(self, split: str, report: BadInputReport) -> Iterator[_Entry]:
        root = fileio.dirname(self.manifest_path)
        with _open_text(self.manifest_path) as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{self.manifest_path}:{lineno}"
                record = _parse_manifest_line(line, where, report)
                if record is None:
                    continue
                example_id = str(record.get("id") or record["path"])
                entry_split = self._split_of(example_id, record.get("split"))
                if entry_split is None:
                    report.add(bad_input.BAD_MANIFEST_LINE, where, f"unknown split {record.get('split')!r}")
                    continue
                if entry_split != split:
                    continue
                labels = {k: v for k, v in record.items() if k not in self._RESERVED}
                yield _Entry(
                    example_id,
                    _resolve_against(root, record["path"]),
                    record.get("caption"),
                    labels,
                    _float_or_none(record.get("start_s")),
                    _float_or_none(record.get("end_s")),
                )


def _open_text(path: str, newline: str | None = None) -> IO[str]:
    """A UTF-8 text stream of a local file or an object (read as it goes, not loaded whole)."""
    return io.TextIOWrapper(fileio.open(path, "rb"), encoding="utf-8", newline=newline)


def _resolve_against(root: str, path: str) -> str:
    """A manifest's path: a URL as is, else relative to the manifest's folder (local or URL)."""
    if fileio.is_url(path):
        return fileio.resolve(path)
    if fileio.is_url(root):
        return fileio.resolve(fileio.join(root, path))
    return os.path.normpath(os.path.join(root, os.path.expanduser(path)))


def _parse_manifest_line(line: str, where: str, report: BadInputReport) -> dict | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        report.add(bad_input.BAD_MANIFEST_LINE, where, f"invalid JSON: {e.msg}")
        return None
    if not isinstance(record, dict) or not isinstance(record.get("path"), str) or not record["path"]:
        report.add(bad_input.BAD_MANIFEST_LINE, where, 'expected a JSON object with a "path" string')
        return None
    return record


def _float_or_none(value: Any) -> float | None:
    return None if value is None or value == "" else float(value)


class MusicCapsSource(_AudioSource):
    """The MusicCaps CSV (`ytid,start_s,end_s,caption,aspect_list`, ...) over local audio.

    The audio of `ytid` is `<audio_dir>/<ytid>.{wav,flac,ogg,mp3}` (or a file whose name
    starts with `[<ytid>]` or `<ytid>_`, as some downloaders write). The clip is cropped
    to [start_s, end_s] of that file, unless `already_cropped=True` (files that are the
    10 s clips already). `is_audioset_eval` true -> validation. `aspect_list` (a Python
    literal list) is parsed with `ast.literal_eval` into `labels["aspect_list"]`.
    """

    def __init__(
        self, csv_path: str | os.PathLike, audio_dir: str | os.PathLike, *, already_cropped: bool = False, **kwargs: Any
    ):
        self.csv_path = fileio.resolve(csv_path)
        self.audio_dir = fileio.resolve(audio_dir)
        self.already_cropped = already_cropped
        self.name = f"musiccaps:{self.csv_path}"
        super().__init__(**kwargs)
        if not fileio.isfile(self.csv_path):
            raise FileNotFoundError(f"MusicCaps CSV not found: {self.csv_path}")
        if not fileio.isdir(self.audio_dir):
            raise FileNotFoundError(f"MusicCaps audio_dir not found: {self.audio_dir}")
        self._listing: set[str] | None = None  # the names in a bucket's audio_dir, listed once

    def __getstate__(self) -> dict:  # shipped to pipeline workers: each lists for itself
        return {**self.__dict__, "_listing": None}

    def _entries(self, split: str, report: BadInputReport) -> Iterator[_Entry]:
        with _open_text(self.csv_path, newline="") as f:
            reader = csv.DictReader(f)
            missing = {"ytid", "start_s", "end_s", "caption"} - set(reader.fieldnames or ())
            if missing:
                raise ValueError(f"{self.csv_path}: MusicCaps CSV lacks columns {sorted(missing)}")
            for row in reader:
                where = f"{self.csv_path}:{reader.line_num}"
                parsed = _parse_musiccaps_row(row, where, report)
                if parsed is None:
                    continue
                ytid, start_s, end_s, labels = parsed
                explicit = None
                if row.get("is_audioset_eval") not in (None, ""):
                    explicit = "validation" if _truthy(row["is_audioset_eval"]) else "train"
                if self._split_of(ytid, explicit) != split:
                    continue
                path = self._find_audio(ytid)
                if path is None:
                    report.add(
                        bad_input.MISSING_FILE,
                        fileio.join(self.audio_dir, f"{ytid}.*"),
                        f"no audio for ytid {ytid} ({where})",
                    )
                    continue
                crop = (None, None) if self.already_cropped else (start_s, end_s)
                yield _Entry(ytid, path, row.get("caption", "").strip(), labels, *crop)

    def _find_audio(self, ytid: str) -> str | None:
        if fileio.is_url(self.audio_dir):
            return self._find_audio_listed(ytid)
        for ext in AUDIO_EXTENSIONS:
            candidate = os.path.join(self.audio_dir, ytid + ext)
            if os.path.isfile(candidate):
                return candidate
        escaped = glob.escape(ytid)
        for pattern in (f"[[]{escaped}]*", f"{escaped}_*"):
            hits = sorted(
                p
                for p in glob.glob(os.path.join(self.audio_dir, pattern))
                if os.path.splitext(p)[1].lower() in AUDIO_EXTENSIONS
            )
            if hits:
                return hits[0]
        return None

    def _find_audio_listed(self, ytid: str) -> str | None:
        """`_find_audio` on a bucket: the same rules over one listing of audio_dir (one request
        per listing page, not several per ytid)."""
        if self._listing is None:
            self._listing = set(fileio.listdir(self.audio_dir))
        for ext in AUDIO_EXTENSIONS:
            if ytid + ext in self._listing:
                return fileio.join(self.audio_dir, ytid + ext)
        escaped = glob.escape(ytid)
        for pattern in (f"[[]{escaped}]*", f"{escaped}_*"):
            hits = sorted(
                n for n in fnmatch.filter(self._listing, pattern) if os.path.splitext(n)[1].lower() in AUDIO_EXTENSIONS
            )
            if hits:
                return fileio.join(self.audio_dir, hits[0])
        return None


def _parse_musiccaps_row(row: dict, where: str, report: BadInputReport) -> tuple[str, float, float, dict] | None:
    ytid = (row.get("ytid") or "").strip()
    try:
        start_s, end_s = float(row["start_s"]), float(row["end_s"])
        if not ytid or end_s <= start_s or start_s < 0:
            raise ValueError(f"need a ytid and 0 <= start_s < end_s, got {ytid!r} [{start_s}, {end_s}]")
        labels: dict[str, Any] = {"aspect_list": _parse_literal_list(row.get("aspect_list"))}
    except (ValueError, SyntaxError, TypeError) as e:
        report.add(bad_input.BAD_MANIFEST_LINE, where, str(e))
        return None
    if row.get("audioset_positive_labels"):
        labels["audioset_positive_labels"] = [s for s in row["audioset_positive_labels"].split(",") if s]
    if row.get("author_id"):
        labels["author_id"] = row["author_id"]
    return ytid, start_s, end_s, labels


def _parse_literal_list(text: str | None) -> list[str]:
    """ "['pop', 'mellow']" -> ['pop', 'mellow'] via ast.literal_eval (no eval)."""
    if not text:
        return []
    value = ast.literal_eval(text)
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"aspect_list is not a list: {text[:80]!r}")
    return [str(v) for v in value]


def _truthy(text: str) -> bool:
    return str(text).strip().lower() in ("true", "1", "yes", "t")


class FolderSource(_AudioSource):
    """Every audio file under `folder` (recursive, sorted), captions from sidecars.

    The caption of `a/b.wav` is `a/b.txt` (the whole text, stripped) or the "caption" key
    of `a/b.json` (whose other keys become labels). No caption counts `missing_caption`:
    the caption is "" unless `require_caption=True` (then skipped). Other files count
    `unknown_extension`; sidecars and hidden files/folders are ignored. Ids are the paths
    relative to `folder`.
    """

    def __init__(self, folder: str | os.PathLike, **kwargs: Any):
        self.folder = fileio.resolve(folder)
        self.name = f"folder:{self.folder}"
        super().__init__(**kwargs)
        if not fileio.isdir(self.folder):
            raise FileNotFoundError(f"audio folder not found: {self.folder}")

    def _entries(self, split: str, report: BadInputReport) -> Iterator[_Entry]:
        for path, siblings in _walk_files(self.folder):
            rel = path[len(self.folder) + 1 :] if fileio.is_url(self.folder) else os.path.relpath(path, self.folder)
            stem, ext = os.path.splitext(path)
            ext = ext.lower()
            if ext in _SIDECAR_EXTENSIONS:
                continue
            if self._split_of(rel) != split:
                continue
            if ext not in AUDIO_EXTENSIONS:
                report.add(bad_input.UNKNOWN_EXTENSION, path, f"extension {ext!r} not in {AUDIO_EXTENSIONS}")
                continue
            caption, labels = _read_sidecar(stem, siblings, report)
            yield _Entry(rel, path, caption, labels)


def _walk_files(folder: str) -> Iterator[tuple[str, frozenset[str]]]:
    """Files under `folder` in a sorted, deterministic order, skipping hidden entries; each with
    the names of the files beside it (its sidecars are found there, without asking again)."""
    for root, dirs, files in _walk_url(folder) if fileio.is_url(folder) else os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        siblings = frozenset(files)
        for name in sorted(files):
            if not name.startswith("."):
                yield fileio.join(root, name), siblings


def _walk_url(folder: str) -> Iterator[tuple[str, list[str], list[str]]]:
    """os.walk of a bucket folder (one listing per folder; pruning `dirs` in place works)."""
    scheme = folder.split("://", 1)[0]
    for root, dirs, files in fileio.path(folder).walk():
        root = os.fspath(root)  # epath drops the scheme of the folders it walks
        yield (root if fileio.is_url(root) else f"{scheme}://{root}"), dirs, files


def _read_sidecar(stem: str, siblings: frozenset[str], report: BadInputReport) -> tuple[str | None, dict]:
    name = fileio.basename(stem)
    if name + ".txt" in siblings:
        with _open_text(stem + ".txt") as f:
            return f.read().strip(), {}
    if name + ".json" in siblings:
        try:
            with _open_text(stem + ".json") as f:
                record = json.load(f)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except (json.JSONDecodeError, ValueError) as e:
            report.add(bad_input.BAD_MANIFEST_LINE, stem + ".json", f"sidecar: {e}")
            return None, {}
        caption = record.get("caption")
        return (str(caption).strip() if caption else None), {k: v for k, v in record.items() if k != "caption"}
    return None, {}
