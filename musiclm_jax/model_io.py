"""Model directories, read back one way: what `musiclm train` and `musiclm export` write.

    model, params = model_io.load("/runs/semantic")                  # any registered kind
    model, params = model_io.load(d, step=500, kind="MuLan")         # refuses another kind

`model.json` names the model's kind (its class: StageModel, MuLan, MelodyModel, W2vBert, SoundStream) and
holds its config. The registry `KINDS` knows, per kind, how to rebuild the model from that config
and the smallest input shapes that give its parameter shapes; parameters are restored onto one
device from `checkpoints/<step>/` (the latest unless `step` is given). An export directory
(`musiclm export`, with export.json) is checked file by file (SHA-256) before anything is read,
so a corrupt or modified export fails naming the file; one whose export.json is missing but whose
export.incomplete marker is there (an interrupted export, or one still being written) fails too.

Every path may be a local path or an object-store URL (gs://bucket/run/semantic): files are read
through `musiclm_jax.fileio`, checkpoints through orbax.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Callable, Mapping, Optional, Sequence

import jax

from musiclm_jax import fileio
from musiclm_jax.models.base import BaseModel
from musiclm_jax.models.lora import DEFAULT_TARGETS as DEFAULT_LORA_TARGETS
from musiclm_jax.models.melody import MelodyConfig, MelodyModel
from musiclm_jax.models.mulan import MuLan, MuLanConfig
from musiclm_jax.models.soundstream import SoundStream, SoundStreamConfig
from musiclm_jax.models.stages import StageConfig, StageModel
from musiclm_jax.models.w2v_bert import W2vBert, W2vBertConfig
from musiclm_jax.training import checkpoints
from musiclm_jax.training.partitioning import unbox

MODEL_FILE = "model.json"
EXPORT_FILE = "export.json"
# Written first by `musiclm export` and deleted after EXPORT_FILE (written last): a directory with
# it and no EXPORT_FILE is an export that did not finish (object stores have no atomic rename).
INCOMPLETE_FILE = "export.incomplete"


@dataclasses.dataclass(frozen=True)
class Kind:
    """How to rebuild one kind of model: `build(config_dict)` and `init_shapes(model)`, the input
    shapes its parameters are initialised from (traced with eval_shape: nothing is allocated)."""

    build: Callable[[Mapping], BaseModel]
    init_shapes: Callable[[BaseModel], Mapping[str, Sequence[int]]]


def _stage_shapes(model: StageModel):  # parameter shapes do not depend on the sequence length
    return {s.feature: (1, 1) for s in (*model.config.conditions, model.config.target)}


def _codec_shapes(model: SoundStream):  # any length; the discriminators need a few windows
    hop = model.config.hop_length
    return {"audio": (1, hop * math.ceil(4 * model.config.discriminators.stft_window / hop))}


KINDS: dict[str, Kind] = {
    "StageModel": Kind(lambda c: StageModel(StageConfig.from_dict(c)), _stage_shapes),
    "MuLan": Kind(
        lambda c: MuLan(MuLanConfig.from_dict(c)),
        lambda m: {"audio": (1, m.config.window_samples), "text_tokens": (1, m.config.max_text_length)},
    ),
    "MelodyModel": Kind(
        lambda c: MelodyModel(MelodyConfig.from_dict(c)), lambda m: {"audio": (1, m.config.window_samples)}
    ),
    "W2vBert": Kind(lambda c: W2vBert(W2vBertConfig.from_dict(c)), lambda m: {"audio": (1, m.config.sample_rate)}),
    "SoundStream": Kind(lambda c: SoundStream(SoundStreamConfig.from_dict(c)), _codec_shapes),
}


class ExportError(ValueError):
    """A missing, incomplete or modified export."""


def read_spec(model_dir: str) -> dict:
    """model.json of a model directory ({"model": kind, "config": {...}}), after checking an
    export's files. Raises FileNotFoundError (no model.json) or ExportError."""
    path = fileio.join(model_dir, MODEL_FILE)
    if not fileio.exists(path):
        check_export(model_dir)  # an interrupted export says so rather than "not found"
        raise FileNotFoundError(f"{path} not found: is {model_dir!r} a `musiclm train` directory?")
    check_export(model_dir)
    return fileio.read_json(path)


def load(model_dir: str, step: Optional[int] = None, *, kind: Optional[str] = None) -> tuple[BaseModel, dict]:
    """(model, params) of a `musiclm train` (or params-only export) directory.

    Args:
      model_dir: the directory with model.json and checkpoints/.
      step: the checkpoint step to restore; None for the latest.
      kind: if given, the kind model.json must name (e.g. "StageModel"), else ValueError.
    Returns:
      The rebuilt model and its parameters (unboxed, on one local device).
    """
    spec = read_spec(model_dir)
    name = spec.get("model")
    if name == "LoRAModel":  # a LoRA directory: its base model, adapters merged in
        return _load_lora(model_dir, spec["config"], step, kind)
    if kind is not None and name != kind:
        raise ValueError(f"{fileio.join(model_dir, MODEL_FILE)} describes a {name!r} model, not {kind}")
    if name not in KINDS:
        raise ValueError(
            f"{fileio.join(model_dir, MODEL_FILE)} names an unknown model {name!r} (known: {', '.join(sorted(KINDS))})"
        )
    model = KINDS[name].build(spec["config"])
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def init():
        return unbox(model.get_initial_variables(jax.random.PRNGKey(0), KINDS[name].init_shapes(model))["params"])

    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), jax.eval_shape(init))
    source = fileio.join(model_dir, "checkpoints")
    if step is not None:
        source = fileio.join(source, str(step))
    params, _ = checkpoints.restore_params(source, abstract)
    return model, params


def artifact_path(model_dir: str, relative: str) -> str:
    """model_dir/relative (a caption vocabulary, an RVQ, a k-means); for a LoRA directory without
    it, its base directory's (the adapters change neither)."""
    path = fileio.join(model_dir, *relative.split("/"))
    if fileio.exists(path) or not fileio.exists(fileio.join(model_dir, MODEL_FILE)):
        return path
    spec = read_spec(model_dir)
    if spec.get("model") == "LoRAModel":
        return artifact_path(spec["config"]["base_dir"], relative)
    return path


def lora_model(
    base_dir: str,
    rank: int = 8,
    alpha: float = 16.0,
    targets: Sequence[str] = DEFAULT_LORA_TARGETS,
    step: Optional[int] = None,
) -> BaseModel:
    """LoRA adapters (models/lora.py) on the model of a trained directory, rebuilt from its
    model.json (gin: `LoRAModel`, runs/lora.gin)."""
    from musiclm_jax.models import lora

    spec = read_spec(base_dir)
    if spec.get("model") not in KINDS:
        raise ValueError(f"LoRA base {base_dir} is a {spec.get('model')!r} model; LoRA adapts {sorted(KINDS)}")
    base = KINDS[spec["model"]].build(spec["config"])
    return lora.LoRAModel(base, fileio.resolve(base_dir), rank, alpha, targets, step)


def _load_lora(model_dir: str, config: Mapping, step: Optional[int], kind: Optional[str]) -> tuple[BaseModel, dict]:
    from musiclm_jax.models import lora

    base_model, base_params = load(config["base_dir"], config.get("step"), kind=kind)
    model = lora.LoRAModel(
        base_model, config["base_dir"], config["rank"], config["alpha"], tuple(config["targets"]), config.get("step")
    )
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def init():
        shapes = KINDS[model.base_kind].init_shapes(base_model)
        return unbox(model.get_initial_variables(jax.random.PRNGKey(0), shapes)["params"][lora.ADAPTERS])

    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), jax.eval_shape(init))
    source = fileio.join(model_dir, "checkpoints")
    if step is not None:
        source = fileio.join(source, str(step))
    saved, _ = checkpoints.restore_params(source, {lora.ADAPTERS: abstract})
    return base_model, model.merged({lora.ADAPTERS: saved[lora.ADAPTERS], lora.BASE: base_params})


def latest_step(model_dir: str) -> int:
    """The newest checkpoint step of a model directory."""
    directory = fileio.join(model_dir, "checkpoints")
    if not fileio.isdir(directory):
        check_export(model_dir)  # an interrupted export says so
        raise FileNotFoundError(f"{directory} not found: is {model_dir!r} a `musiclm train` directory?")
    steps = checkpoints.committed_steps(directory)
    if not steps:
        raise FileNotFoundError(f"{model_dir}/checkpoints holds no checkpoint")
    return max(steps)


# ---- export integrity --------------------------------------------------------------------------
def sha256(path: str) -> str:
    h = hashlib.sha256()
    with fileio.open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_export(directory: str) -> Optional[dict]:
    """export.json of an export directory after checking every listed file's SHA-256 (None for a
    training directory, which has neither export.json nor export.incomplete). Raises ExportError
    naming the first bad file, or saying the export is incomplete (export.incomplete and no
    export.json: interrupted, or still being written)."""
    path = fileio.join(directory, EXPORT_FILE)
    if not fileio.exists(path):
        if fileio.exists(fileio.join(directory, INCOMPLETE_FILE)):
            raise ExportError(
                f"export {directory} is incomplete: {EXPORT_FILE}, written last, is missing (the export was "
                "interrupted or is still being written); export again into a new directory"
            )
        return None
    try:
        manifest = fileio.read_json(path)
        files = manifest["files"]
    except (ValueError, KeyError) as e:
        raise ExportError(f"{path} is not a valid export manifest: {e}") from e
    for rel, digest in files.items():
        full = fileio.join(directory, *rel.split("/"))
        if not fileio.exists(full):
            raise ExportError(f"export {directory}: {rel} is missing")
        if sha256(full) != digest:
            raise ExportError(
                f"export {directory}: {rel} does not match its SHA-256 in {EXPORT_FILE} "
                "(corrupt or modified); export again"
            )
    return manifest
