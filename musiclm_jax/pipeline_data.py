"""`musiclm pipeline --data=PATH`: the pipeline's steps on a user's own collection.

PATH is a folder of audio files (captions from `<stem>.txt` or `<stem>.json` sidecars, data/sources.
FolderSource) or a JSONL manifest (ManifestSource). Every step that reads audio gets that source
in place of the synthetic one, at the rate and crop its gin file configures:

    codec            codec_task       every clip
    w2v_bert         w2v_task         every clip (semantic_kmeans: the same)
    mulan            mulan_task       captioned clips only (MuLan learns from the captions; the
                                      caption vocabulary is trained on them)
    mulan_rvq        mulan_clips      every clip
    precompute       pipeline_clips   every clip (the stages train on audio MuLan tokens, as the
                                      paper does: they need no captions)

The split is the data's own where it names one (a manifest's "split"), else a stable hash of each
clip's id (`validation_fraction` of them go to validation). Before any step runs, `scan` decodes
the collection once (saved in D/data_summary.json with the collection's fingerprint, so a rerun
reads it back) and `check` stops with one line when a split is empty, too few clips have
captions, or the validation split is smaller than a step's eval batch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Mapping

from musiclm_jax import fileio
from musiclm_jax.audio.io import AUDIO_EXTENSIONS
from musiclm_jax.data import sources
from musiclm_jax.data.bad_input import NoUsableExamplesError

# The gin scopes of each step's audio source (scope, captions required).
SCOPES: dict[str, tuple[tuple[str, bool], ...]] = {
    "codec": (("codec_task", False),),
    "w2v_bert": (("w2v_task", False),),
    "semantic_kmeans": (("w2v_task", False),),
    "mulan": (("mulan_task", True), ("mulan_clips", False)),
    "mulan_rvq": (("mulan_task", True), ("mulan_clips", False)),
    "precompute": (("pipeline_clips", False),),
}
# The rate of a scope without a source of its own (mulan_clips reads mulan_task's clips).
_RATE_SCOPE = {"mulan_clips": "mulan_task"}
KINDS = {"folder": "FolderSource", "manifest": "ManifestSource"}
SUMMARY_FILE = "data_summary.json"
# The rate the scan decodes at (every step's rate gives the same clip counts and durations).
SCAN_RATE = 16000


class DataError(ValueError):
    """The collection cannot feed the pipeline; the message is one line saying why."""


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """A user's collection: kind 'folder' or 'manifest', its path (absolute or a URL) and the
    share of clips sent to validation where the data names no split."""

    kind: str
    path: str
    validation_fraction: float = 0.1

    def source(self, sample_rate: int, require_caption: bool = False) -> sources._AudioSource:
        kwargs = dict(
            sample_rate=sample_rate, validation_fraction=self.validation_fraction, require_caption=require_caption
        )
        if self.kind == "folder":
            return sources.FolderSource(self.path, **kwargs)
        return sources.ManifestSource(self.path, **kwargs)


def resolve(path: str, validation_fraction: float = 0.1) -> DataSpec:
    """A folder or a .jsonl manifest, checked to exist (DataError otherwise)."""
    if not 0.0 < validation_fraction < 1.0:
        raise DataError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    resolved = fileio.resolve(path)
    if fileio.isdir(resolved):
        return DataSpec("folder", resolved, validation_fraction)
    if fileio.isfile(resolved):
        if not resolved.lower().endswith((".jsonl", ".json")):
            raise DataError(
                f"--data={path}: a file must be a JSONL manifest (.jsonl, one {{'path', 'caption'}} per line); "
                "for audio files give their folder"
            )
        return DataSpec("manifest", resolved, validation_fraction)
    raise DataError(f"--data={path}: no such folder or manifest")


def gin_bindings(spec: DataSpec, step: str, query) -> list[str]:
    """Bindings that replace `step`'s synthetic source with `spec`'s (parsed after the step's gin
    file; `query(name)` reads a bound value, e.g. gin.query_parameter)."""
    if step not in SCOPES:
        return []
    cls = KINDS[spec.kind]
    arg = "folder" if spec.kind == "folder" else "manifest_path"
    out = []
    for scope, require_caption in SCOPES[step]:
        rate = query(f"{_RATE_SCOPE.get(scope, scope)}/SyntheticSource.sample_rate")
        out += [
            f"{scope}/register_audio_task.source = @{scope}/{cls}()",
            f"{scope}/{cls}.{arg} = {spec.path!r}",
            f"{scope}/{cls}.sample_rate = {int(rate)}",
            f"{scope}/{cls}.validation_fraction = {spec.validation_fraction!r}",
            f"{scope}/{cls}.require_caption = {require_caption}",
        ]
    if step in ("mulan", "mulan_rvq"):
        # The vocabulary from the captioned clips; no held-out caption family on real data.
        lengths = {k: v for k, v in query("%TASK_FEATURE_LENGTHS").items() if k != "heldout_text_tokens"}
        out += [f"caption_vocabulary.source = @mulan_task/{cls}()", f"TASK_FEATURE_LENGTHS = {lengths!r}"]
    return out


def fingerprint(spec: DataSpec) -> str:
    """sha256 of what decides the clips and captions: a manifest's bytes; a folder's audio files
    (relative path and size) and its sidecars' bytes. Not the audio bytes (a collection can be
    large); a file replaced by one of the same size and name goes unnoticed."""
    h = hashlib.sha256()
    if spec.kind == "manifest":
        h.update(fileio.read_bytes(spec.path))
        return h.hexdigest()
    for path, _ in sources._walk_files(spec.path):  # the listing FolderSource reads
        rel = path[len(spec.path) + 1 :]
        ext = os.path.splitext(path)[1].lower()
        if ext in AUDIO_EXTENSIONS:
            h.update(f"{rel}\0{fileio.path(path).stat().length}\n".encode())
        elif ext in (".txt", ".json"):
            h.update(f"{rel}\0".encode() + fileio.read_bytes(path) + b"\n")
    return h.hexdigest()


def scan(spec: DataSpec, model_dir: str, progress: bool = True) -> dict:
    """Per split: usable clips, captioned clips, seconds (total, shortest), and what the sources
    skipped or repaired. Decodes every clip once; read back from D/data_summary.json when the
    collection's fingerprint is unchanged."""
    from tqdm import tqdm

    fp = fingerprint(spec)
    path = fileio.join(model_dir, SUMMARY_FILE)
    if fileio.exists(path):
        saved = fileio.read_json(path)
        if saved.get("fingerprint") == fp and saved.get("validation_fraction") == spec.validation_fraction:
            return saved
    source = spec.source(SCAN_RATE)
    summary = {
        "kind": spec.kind,
        "path": spec.path,
        "fingerprint": fp,
        "validation_fraction": spec.validation_fraction,
        "splits": {},
    }
    for split in ("train", "validation"):
        seconds, captioned = [], 0
        try:
            for ex in tqdm(source.examples(split), desc=f"scan {split} clips", unit="clip", disable=not progress):
                seconds.append(ex.audio.shape[0] / ex.sample_rate)
                captioned += bool(ex.caption.strip())
        except NoUsableExamplesError as e:
            raise DataError(f"--data={spec.path}: {str(e).splitlines()[0]}") from e
        report = source.reports[split]
        summary["splits"][split] = {
            "clips": len(seconds),
            "captioned": captioned,
            "seconds": round(sum(seconds), 2),
            "shortest_seconds": round(min(seconds), 3),
            "skipped": report.skipped(),
            "repaired": report.repaired(),
        }
    fileio.write_json(path, summary)
    return summary


def check(summary: dict, needs: Mapping[str, dict], min_captioned: int) -> list[str]:
    """Raises DataError (one line) when the collection cannot feed a step: `needs[step]` holds
    'eval_batch' (validation clips a step's eval needs; 0 = no eval), 'captions' (whether it
    trains on captioned clips only) and 'crop_seconds' (the longest crop it takes). Returns notes
    for the log (clips shorter than a crop: zero-padded by the audio tasks, dropped by the stages)."""
    splits = summary["splits"]
    train, val = splits["train"], splits["validation"]
    if train["captioned"] < min_captioned:
        raise DataError(
            f"{train['captioned']} of {train['clips']} training clips have a caption; MuLan needs at least "
            f"{min_captioned} (run_pipeline.min_captioned_clips): add captions (a <name>.txt beside each file, "
            "or a manifest's 'caption')"
        )
    for step, need in needs.items():
        clips = val["captioned"] if need.get("captions") else val["clips"]
        if need.get("eval_batch", 0) > clips:
            raise DataError(
                f"step {step} evaluates batches of {need['eval_batch']} validation clips but the validation split has "
                f"{clips}{' with captions' if need.get('captions') else ''}: raise validation_fraction "
                f"(now {summary['validation_fraction']}) or add clips"
            )
    notes = []
    longest = max((n.get("crop_seconds") or 0.0 for n in needs.values()), default=0.0)
    for split, s in splits.items():
        if s["shortest_seconds"] < longest:
            notes.append(
                f"{split}: the shortest clip is {s['shortest_seconds']:g} s, shorter than the longest crop "
                f"({longest:g} s): such clips are zero-padded for the models' training and skipped by the stages"
            )
    return notes
