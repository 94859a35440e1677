"""`musiclm export`: trained models -> a self-contained, pickle-free generation bundle.

    export_checkpoint(model_dir, output_dir, dtype='bfloat16')    one model, parameters only
    export_musiclm(output_dir, model_dirs={...}, seconds=10)     the five models + StableHLO

A params-only export is a directory shaped like a `musiclm train` one (model.json, config.gin,
the tokenizer artifacts text_vocab/ mulan_rvq/ kmeans/, and checkpoints/<step>/params with no
optimiser state), so every loader (tokenizers, `musiclm generate`) reads it unchanged. Floating
parameters may be stored in bfloat16 (half the bytes); they are restored in the dtype the model
asks for. export.json lists the SHA-256 of every file: a loader refuses an export whose files
changed (`check_export`), naming the file.

`output_dir` and the model directories may be object-store URLs (gs://bucket/export). An export
writes export.incomplete first and export.json last (then deletes the marker), so a reader can
rely on this: a directory with export.json is complete (and its hashes check every file); one
with export.incomplete and no export.json is refused as incomplete (`ExportError`), whatever the
store (object stores have no atomic rename of a directory).

`export_musiclm` also serialises, with `jax.export` (StableHLO, for cpu and tpu), each stage's
sampling function for every window shape a generation of `seconds` needs, and the codec
decoder, with a symbolic batch dimension (prompts x candidates). The functions take the
parameters as arguments, so the bundle holds every weight once. `load_exported_musiclm` runs
generation through them: no model code is traced or compiled from Python at generation time,
and the tokens equal those of the training checkpoint for the same seed.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from musiclm_jax import fileio, model_io
from musiclm_jax.generate import MODEL_DIRS, load_musiclm
from musiclm_jax.model_io import EXPORT_FILE, INCOMPLETE_FILE, ExportError, check_export  # noqa: F401  (re-exported)
from musiclm_jax.models.musiclm import PAPER_SETTINGS, STAGES, Window

FUNCTIONS_DIR = "functions"
COPIED = ("model.json", "config.gin", "text_vocab", "mulan_rvq", "kmeans")


def _relative_files(directory: str, prefix: str = "") -> list[str]:
    """Every file under `directory`, as '/'-separated paths relative to it."""
    out = []
    for name in fileio.listdir(directory):
        path = fileio.join(directory, name)
        if fileio.isdir(path):
            out += _relative_files(path, f"{prefix}{name}/")
        else:
            out.append(prefix + name)
    return out


def _file_hashes(directory: str) -> dict[str, str]:
    return {
        rel: model_io.sha256(fileio.join(directory, *rel.split("/")))
        for rel in sorted(_relative_files(directory))
        if rel not in (EXPORT_FILE, INCOMPLETE_FILE)
    }


def _write_manifest(directory: str, info: Mapping[str, Any]) -> dict:
    """export.json, written last (whole: a temporary name renamed locally, one object on a store),
    then the export.incomplete marker is deleted: the export is complete once export.json exists."""
    manifest = {**info, "files": _file_hashes(directory)}
    fileio.write_text(fileio.join(directory, EXPORT_FILE), json.dumps(manifest, indent=1))
    fileio.remove(fileio.join(directory, INCOMPLETE_FILE))
    return manifest


def _fresh_dir(output_dir: str) -> None:
    """Creates the export directory (absent or empty) holding only the export.incomplete marker."""
    if fileio.exists(output_dir) and fileio.listdir(output_dir):
        raise FileExistsError(f"{output_dir} exists and is not empty: export into a new directory")
    fileio.makedirs(output_dir)
    fileio.write_text(
        fileio.join(output_dir, INCOMPLETE_FILE), f"an export in progress: complete once {EXPORT_FILE} exists\n"
    )


def export_checkpoint(
    model_dir: str, output_dir: str, *, step: Optional[int] = None, dtype: Optional[str] = None
) -> dict:
    """Parameters only (optionally cast to `dtype`, e.g. 'bfloat16') + model.json, config.gin and
    the tokenizer artifacts of `model_dir`, into the new directory `output_dir`.

    Args:
      model_dir: a `musiclm train` directory of any kind (StageModel, MuLan, W2vBert, SoundStream).
      output_dir: the new directory: absent or empty. Gets model.json, config.gin, text_vocab/,
        mulan_rvq/ and kmeans/ (those `model_dir` has), checkpoints/<step>/params and, last, export.json
        (export.incomplete is there meanwhile). A local path or an object-store URL.
      step: the checkpoint to export; None for the latest.
      dtype: cast floating parameters to this dtype (integer ones are kept); None stores them as trained.
    Returns:
      The export.json written: model (the kind), source (absolute `model_dir`, or its URL), step, dtype ('as
      trained' when None) and files ({relative path: SHA-256} of every other file).
    Raises:
      FileNotFoundError: `model_dir` has no model.json or no checkpoint.
      FileExistsError: `output_dir` exists and is not empty (checked after the parameters are loaded).
      ValueError: model.json names an unknown kind of model.
      ExportError: `model_dir` is itself an export whose files changed.
    """
    import orbax.checkpoint as ocp

    if step is None:
        step = model_io.latest_step(model_dir)
    spec = model_io.read_spec(model_dir)
    kind, files_from, lora = spec["model"], model_dir, None
    if kind == "LoRAModel":  # adapters merged into the base: the export is a plain model of the base's kind
        lora = {k: spec["config"][k] for k in ("base_dir", "rank", "alpha", "targets")}
        files_from = spec["config"]["base_dir"]
        kind = model_io.read_spec(files_from)["model"]
    _, params = model_io.load(model_dir, step)
    if dtype is not None:
        target = jnp.dtype(dtype)
        params = jax.tree.map(lambda x: x.astype(target) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)
    _fresh_dir(output_dir)
    for name in COPIED:
        src = fileio.join(files_from, name)
        if fileio.isdir(src):
            fileio.copytree(src, fileio.join(output_dir, name))
        elif fileio.exists(src):
            fileio.copy(src, fileio.join(output_dir, name))
    manager = ocp.CheckpointManager(
        fileio.join(output_dir, "checkpoints"),
        item_names=("params",),
        options=ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False),
    )
    manager.save(int(step), args=ocp.args.Composite(params=ocp.args.StandardSave(params)))
    manager.wait_until_finished()
    manager.close()
    return _write_manifest(
        output_dir,
        {
            "model": kind,
            "source": fileio.resolve(model_dir),
            "step": int(step),
            "dtype": str(dtype) if dtype else "as trained",
            **({"merged_lora": lora} if lora else {}),
        },
    )


# ---- StableHLO: the samplers and the codec decoder ------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Signature:
    """One compiled sampler: a stage, the tokens it samples, its settings and its batch's
    feature shapes without the batch dimension."""

    stage: str
    num_tokens: int
    top_k: int
    top_p: float
    guidance_scale: float
    features: tuple  # ((name, shape without batch), ...) sorted

    def file_name(self, index: int) -> str:
        return f"{self.stage}-{index:03d}.jaxexport"


def _signature(stage: str, batch: Mapping[str, np.ndarray], num_tokens: int, settings) -> _Signature:
    features = tuple(sorted((k, tuple(int(d) for d in np.shape(v)[1:])) for k, v in batch.items()))
    return _Signature(
        stage, int(num_tokens), int(settings.top_k), float(settings.top_p), float(settings.guidance_scale), features
    )


def _plan_signatures(model, texts: Sequence[str], seconds: float, settings) -> list[_Signature]:
    """Every sampler call a generation of `seconds` makes (the windows' shapes), found by running
    the generation with samplers that return zeros: nothing is sampled or compiled."""
    found: list[_Signature] = []

    def fake_run_stage(stage, batch, rng, num_tokens, stage_settings):
        sig = _signature(stage, batch, num_tokens, stage_settings)
        if sig not in found:
            found.append(sig)
        return np.zeros((len(next(iter(batch.values()))), num_tokens), np.int32)

    real_run, real_decode = model._run_stage, model.codec.decode
    model._run_stage = fake_run_stage
    model.codec.decode = lambda codes, num_samples=None: np.zeros((len(codes), num_samples or 1), np.float32)
    try:
        model.generate(list(texts), seconds, settings=settings)
    finally:
        model._run_stage, model.codec.decode = real_run, real_decode
    return found


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree)


def _export_sampler(model, sig: _Signature, platforms: Sequence[str]) -> bytes:
    from jax import export

    stage_model, params = model.stages[sig.stage]
    (batch_dim,) = export.symbolic_shape("b")

    def sample(params, batch, key_data, temperature):
        return stage_model.predict_batch(
            params,
            batch,
            jax.random.wrap_key_data(key_data),
            num_target_tokens=sig.num_tokens,
            temperature=temperature,
            top_k=sig.top_k,
            top_p=sig.top_p,
            guidance_scale=sig.guidance_scale,
        )

    batch = {name: jax.ShapeDtypeStruct((batch_dim, *shape), jnp.int32) for name, shape in sig.features}
    exported = export.export(jax.jit(sample), platforms=tuple(platforms))(
        _abstract(params), batch, jax.ShapeDtypeStruct((2,), jnp.uint32), jax.ShapeDtypeStruct((), jnp.float32)
    )
    return exported.serialize()


def _export_decoder(codec, levels: int, platforms: Sequence[str]) -> bytes:
    """The SoundStream decoder with a symbolic batch and a symbolic number of frames."""
    from jax import export

    batch_dim, frames = export.symbolic_shape("b, f")
    exported = export.export(jax.jit(codec.model.decode), platforms=tuple(platforms))(
        _abstract(codec.params), jax.ShapeDtypeStruct((batch_dim, frames, levels), jnp.int32)
    )
    return exported.serialize()


def export_musiclm(
    output_dir: str,
    *,
    model_dirs: Mapping[str, Optional[str]],
    seconds: float,
    semantic_rate: float = 25.0,
    windows: Optional[Mapping[str, Any]] = None,
    settings: Optional[Mapping[str, Any]] = None,
    dtype: Optional[str] = None,
    platforms: Sequence[str] = ("cpu", "tpu"),
) -> dict:
    """The five models as params-only exports (output_dir/<mulan|semantic_stage|...>/) and, in
    output_dir/functions/, the StableHLO samplers for generations of `seconds` with these
    windows and settings, and the codec decoder. Returns the bundle's export.json.

    Args:
      output_dir: the new bundle directory (a local path or an object-store URL): absent or empty;
        complete once its export.json, written last, exists. Each model goes to its key in
        `model_dirs` without `_dir` (mulan/, semantic_stage/, coarse_stage/, fine_stage/,
        soundstream/), the functions to functions/ (<stage>-NNN.jaxexport, codec_decode.jaxexport).
      model_dirs: the five directories, as `generate.load_musiclm` takes them. A w2v_bert_dir is
        not exported: a bundle cannot continue audio.
      seconds: the generation length the samplers are exported for (it fixes every window's shape).
      semantic_rate: semantic tokens per second, as `generate.load_musiclm`.
      windows: per-stage sliding windows, as `generate.load_musiclm`.
      settings: per-stage SamplingSettings over PAPER_SETTINGS; top-k, top-p and the guidance scale
        are compiled into the samplers, the temperature stays an argument.
      dtype: as `export_checkpoint`, for all five models.
      platforms: the platforms the functions are lowered for (jax.export names, e.g. 'cpu', 'tpu').
    Returns:
      The bundle's export.json: bundle ('musiclm'), seconds, semantic_rate, platforms, windows,
      settings, samplers (each signature and its file), decoder, dtype and files ({relative path:
      SHA-256}).
    Raises:
      FileExistsError: `output_dir` exists and is not empty.
      FileNotFoundError, ValueError: as `generate.load_musiclm`.
    """
    settings = {**PAPER_SETTINGS, **(settings or {})}
    model = load_musiclm(model_dirs, semantic_rate=semantic_rate, windows=windows)
    if model.melody_spec is not None:  # its samplers would need the melody stream's shapes too
        raise ValueError(
            "export: the semantic stage reads melody tokens; bundles of melody-conditioned models are not supported "
            "yet (generate from the model directories with MELODY_DIR)"
        )
    _fresh_dir(output_dir)
    for key in MODEL_DIRS:
        export_checkpoint(model_dirs[key], fileio.join(output_dir, key.removesuffix("_dir")), dtype=dtype)
    functions = fileio.join(output_dir, FUNCTIONS_DIR)
    fileio.makedirs(functions)
    samplers = []
    for i, sig in enumerate(_plan_signatures(model, ["a"], seconds, settings)):
        fileio.write_bytes(fileio.join(functions, sig.file_name(i)), _export_sampler(model, sig, platforms))
        samplers.append({**dataclasses.asdict(sig), "file": sig.file_name(i)})
    levels = model.coarse_levels + model.fine_levels
    fileio.write_bytes(
        fileio.join(functions, "codec_decode.jaxexport"), _export_decoder(model.codec, levels, platforms)
    )
    info = {
        "bundle": "musiclm",
        "seconds": seconds,
        "semantic_rate": semantic_rate,
        "platforms": list(platforms),
        "windows": {s: dataclasses.asdict(model.windows[s]) for s in STAGES},
        "settings": {s: dataclasses.asdict(settings[s]) for s in STAGES},
        "samplers": samplers,
        "decoder": "codec_decode.jaxexport",
        "dtype": str(dtype) if dtype else "as trained",
    }
    return _write_manifest(output_dir, info)


def read_functions(export_dir: str, manifest: Mapping) -> tuple[dict, Any]:
    """The bundle's deserialised functions: ({_Signature: sampler}, codec decoder)."""
    from jax import export

    def read(name):
        return export.deserialize(bytearray(fileio.read_bytes(fileio.join(export_dir, FUNCTIONS_DIR, name))))

    samplers = {}
    for entry in manifest["samplers"]:
        sig = _Signature(
            entry["stage"],
            entry["num_tokens"],
            entry["top_k"],
            entry["top_p"],
            entry["guidance_scale"],
            tuple((name, tuple(shape)) for name, shape in entry["features"]),
        )
        samplers[sig] = read(entry["file"])
    return samplers, read(manifest["decoder"])


def load_exported_musiclm(export_dir: str):
    """A MusicLM that samples and decodes through the bundle's StableHLO functions (any batch of
    prompts x candidates; the lengths, windows and settings it was exported for).

    Args:
      export_dir: a bundle written by `export_musiclm` (a local path or an object-store URL).
    Returns:
      The MusicLM (for `generate.generate(model=...)`), with the exported windows and no semantic
      tokenizer (it cannot continue audio). Any temperature works; a window shape or top-k / top-p
      / guidance scale the bundle has no sampler for raises ExportError when sampled, naming the
      seconds and settings it was exported for.
    Raises:
      ExportError: `export_dir` is not a `musiclm export` bundle, is incomplete (export.incomplete
        and no export.json: interrupted or still being written), or one of its files is missing or
        modified.
    """

    manifest = check_export(export_dir)
    if manifest is None or manifest.get("bundle") != "musiclm":
        raise ExportError(f"{export_dir} is not a `musiclm export` bundle (no {EXPORT_FILE} from export_musiclm)")
    model = load_musiclm(
        {k: fileio.join(export_dir, k.removesuffix("_dir")) for k in MODEL_DIRS},
        semantic_rate=manifest["semantic_rate"],
        windows={s: Window(**w) for s, w in manifest["windows"].items()},
    )

    samplers, decoder = read_functions(export_dir, manifest)

    def run_stage(stage, batch, rng, num_tokens, settings):
        sig = _signature(stage, batch, num_tokens, settings)
        if sig not in samplers:
            raise ExportError(
                f"{export_dir} has no {stage} sampler for {num_tokens} tokens with {sig.features} and "
                f"these settings: it was exported for {manifest['seconds']} s with settings "
                f"{manifest['settings']}"
            )
        params = model.stages[stage][1]
        out = samplers[sig].call(
            params,
            {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()},
            jax.random.key_data(rng),
            jnp.float32(settings.temperature),
        )
        return np.asarray(out)

    model._run_stage = run_stage
    model.codec._decode = lambda params, codes: decoder.call(params, codes)
    return model
