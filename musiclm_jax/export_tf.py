"""A TF SavedModel of a `musiclm export` bundle, for serving stacks that run TensorFlow
(the `savedmodel` extra; TensorFlow also comes with seqio).

    export_savedmodel(bundle_dir, output_dir)
    m = tf.saved_model.load(output_dir)
    m.decode(codes)                                           # int32 [b, frames, levels] -> audio [b, samples]
    m.sample_coarse_000(batch_dict, key_data, temperature)    # one per exported sampler

jax2tf wraps the bundle's own StableHLO functions (native serialisation: the same StableHLO
runs inside TensorFlow's XlaCallModule op, for the bundle's platforms), with the batch (and
the decoder's frames) left symbolic. Weights are tf.Variables, saved once per model. The
samplers' names, stages, token counts and feature shapes are in savedmodel.json beside it.

The bundle and `output_dir` may be object-store URLs (gs://...). TensorFlow writes only to a
local directory here (its own GCS client has a fixed endpoint, see fileio); for a URL the
SavedModel is written to a local temporary directory and uploaded file by file with fileio,
savedmodel.json last: a reader can rely on a SavedModel being complete once savedmodel.json
exists (locally too: it is written after tf.saved_model.save returns).
"""

from __future__ import annotations

import json
from typing import Any

import jax
import numpy as np

from musiclm_jax import export, fileio

INFO_FILE = "savedmodel.json"


def _variables(tree) -> tuple[list, Any]:
    """(flat tf.Variables, the tree's structure): tf.Module would wrap a dict of variables in
    its own tracking types, which jax.export does not accept as the exported pytree."""
    import tensorflow as tf

    leaves, treedef = jax.tree.flatten(tree)
    return [tf.Variable(np.asarray(x), trainable=False) for x in leaves], treedef


def _bound(fn, params, stage):
    """fn with the stage's weights bound (a closure: tf.function signatures take no defaults)."""

    def sample(batch, key_data, temperature):
        return fn(params(stage), batch, key_data, temperature)

    return sample


def export_savedmodel(bundle_dir: str, output_dir: str) -> dict:
    """Writes the SavedModel of `bundle_dir` (from export_musiclm) to the new `output_dir` (local or
    a URL, complete once its savedmodel.json, written last, exists); returns that file's contents."""
    import tensorflow as tf
    from jax.experimental import jax2tf

    manifest = export.check_export(bundle_dir)
    if manifest is None or manifest.get("bundle") != "musiclm":
        raise export.ExportError(f"{bundle_dir} is not a `musiclm export` bundle")
    if fileio.exists(output_dir):
        raise FileExistsError(f"{output_dir} exists; a SavedModel is written to a new directory")
    model = export.load_exported_musiclm(bundle_dir)
    samplers, decoder = export.read_functions(bundle_dir, manifest)
    platforms = tuple(manifest["platforms"])
    module = tf.Module()
    trees = {s: _variables(p) for s, (_, p) in model.stages.items()}
    trees["codec"] = _variables(model.codec.params)
    module.weights = {name: leaves for name, (leaves, _) in trees.items()}  # tracked: saved once each

    def params(name):
        return jax.tree.unflatten(trees[name][1], list(module.weights[name]))

    levels = model.coarse_levels + model.fine_levels
    decode = jax2tf.convert(
        decoder.call,
        polymorphic_shapes=[None, "(b, f, _)"],
        with_gradient=False,
        native_serialization_platforms=platforms,
    )
    module.decode = tf.function(
        lambda codes: decode(params("codec"), codes),
        autograph=False,
        input_signature=[tf.TensorSpec([None, None, levels], tf.int32, name="codes")],
    )
    entries = []
    for i, (sig, fn) in enumerate(samplers.items()):
        name = f"sample_{sig.stage}_{i:03d}"
        features = dict(sig.features)
        convert = jax2tf.convert(
            fn.call,
            polymorphic_shapes=[None, {k: "(b, ...)" for k in features}, None, None],
            with_gradient=False,
            native_serialization_platforms=platforms,
        )
        spec = [
            {k: tf.TensorSpec([None, *shape], tf.int32, name=k) for k, shape in features.items()},
            tf.TensorSpec([2], tf.uint32, name="key_data"),
            tf.TensorSpec([], tf.float32, name="temperature"),
        ]
        setattr(module, name, tf.function(_bound(convert, params, sig.stage), autograph=False, input_signature=spec))
        entries.append(
            {
                "function": name,
                "stage": sig.stage,
                "num_tokens": sig.num_tokens,
                "features": {k: list(v) for k, v in features.items()},
                "top_k": sig.top_k,
                "top_p": sig.top_p,
                "guidance_scale": sig.guidance_scale,
            }
        )
    info = {
        "bundle": fileio.resolve(bundle_dir),
        "platforms": list(platforms),
        "decode_levels": levels,
        "samplers": entries,
        "seconds": manifest["seconds"],
        "windows": manifest["windows"],
    }
    with fileio.local_dir(output_dir) as local:  # a URL: staged here (TF's GCS client has a fixed endpoint)
        tf.saved_model.save(module, local)
    fileio.write_text(fileio.join(output_dir, INFO_FILE), json.dumps(info, indent=1))  # last: the marker
    return info
