"""`musiclm export`: params-only checkpoints (optionally bfloat16) that the loaders read
unchanged; StableHLO samplers + codec decoder (cpu and tpu, symbolic batch) whose generation
equals the training checkpoint's for the same seed; corrupted exports refused; no pickle."""

import os
import pathlib

import numpy as np
import pytest

from musiclm_jax import export, model_io
from musiclm_jax import generate as gen
from musiclm_jax.models.musiclm import SamplingSettings

TEXTS = ["a slow sad piano melody", "fast drums and a bright organ"]
# 0.5 s with the paper's windows is one window per stage; a guided, top-k semantic stage
SETTINGS = {"semantic": SamplingSettings(1.0, top_k=8, guidance_scale=1.5)}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, musiclm_model_dirs):
    out = str(tmp_path_factory.mktemp("export") / "bundle")
    manifest = export.export_musiclm(
        out, seconds=0.5, settings=SETTINGS, platforms=("cpu", "tpu"), model_dirs=musiclm_model_dirs
    )
    return out, manifest


def test_exported_generation_equals_the_training_checkpoint(bundle, musiclm_model_dirs):
    out, manifest = bundle
    assert manifest["platforms"] == ["cpu", "tpu"] and len(manifest["samplers"]) == 3
    exported = export.load_exported_musiclm(out)
    reference = gen.load_musiclm(musiclm_model_dirs)
    a = exported.generate(TEXTS, 0.5, seed=4, settings=SETTINGS, num_candidates=2)
    b = reference.generate(TEXTS, 0.5, seed=4, settings=SETTINGS, num_candidates=2)
    np.testing.assert_array_equal(a.semantic_tokens, b.semantic_tokens)
    np.testing.assert_array_equal(a.acoustic_tokens, b.acoustic_tokens)
    np.testing.assert_allclose(a.audio, b.audio, atol=1e-5)
    one = exported.generate(TEXTS[:1], 0.5, seed=4, settings=SETTINGS)  # the batch dimension is symbolic
    assert one.acoustic_tokens.shape == (1, 100, 4)
    with pytest.raises(export.ExportError, match="exported for 0.5 s"):
        exported.generate(TEXTS, 1.0, seed=4, settings=SETTINGS)
    # the params-only exports load through the ordinary loaders (`musiclm generate` reads them)
    stage = os.path.join(out, "coarse_stage")
    items = os.listdir(os.path.join(stage, "checkpoints", "1"))
    assert "params" in items and "state" not in items  # no optimiser state
    assert (
        model_io.load(stage, kind="StageModel")[0].config
        == model_io.load(musiclm_model_dirs["coarse_stage_dir"], kind="StageModel")[0].config
    )


def test_bfloat16_export_halves_the_bytes_and_loads(tmp_path, musiclm_model_dirs):
    src = musiclm_model_dirs["semantic_stage_dir"]
    f32 = export.export_checkpoint(src, str(tmp_path / "f32"))
    bf16 = export.export_checkpoint(src, str(tmp_path / "bf16"), dtype="bfloat16")
    assert bf16["dtype"] == "bfloat16" and f32["step"] == 1

    def param_bytes(d):
        return sum(p.stat().st_size for p in pathlib.Path(d, "checkpoints").rglob("*") if p.is_file())

    assert param_bytes(tmp_path / "bf16") < 0.75 * param_bytes(tmp_path / "f32")
    _, params = model_io.load(str(tmp_path / "bf16"), kind="StageModel")
    _, reference = model_io.load(src, kind="StageModel")
    for leaf, ref_leaf in zip(_leaves(params), _leaves(reference)):
        assert leaf.dtype == ref_leaf.dtype  # restored in the dtype the model asks for
        np.testing.assert_allclose(leaf, ref_leaf, rtol=1e-2, atol=1e-2)  # bfloat16 rounding only
    with pytest.raises(FileExistsError):
        export.export_checkpoint(src, str(tmp_path / "bf16"))


def _leaves(tree):
    import jax

    return jax.tree_util.tree_leaves(tree)


def test_corrupted_export_is_refused(bundle, tmp_path):
    import shutil

    out, manifest = bundle
    copy = tmp_path / "bundle"
    shutil.copytree(out, copy)
    sampler = copy / "functions" / manifest["samplers"][0]["file"]
    data = bytearray(sampler.read_bytes())
    data[len(data) // 2] ^= 0xFF
    sampler.write_bytes(bytes(data))
    with pytest.raises(export.ExportError, match=manifest["samplers"][0]["file"]):
        export.load_exported_musiclm(str(copy))
    # a params file of a params-only export, read by the ordinary loader
    stage = copy / "fine_stage"
    victim = next(p for p in sorted((stage / "checkpoints").rglob("*")) if p.is_file() and p.stat().st_size > 0)
    victim.write_bytes(victim.read_bytes()[:-1] + b"\0")
    with pytest.raises(export.ExportError, match="does not match"):
        model_io.load(str(stage), kind="StageModel")
    (copy / "export.json").write_text("{not json")
    with pytest.raises(export.ExportError, match="not a valid export manifest"):
        export.load_exported_musiclm(str(copy))


def test_no_pickle_in_the_package():
    root = pathlib.Path(export.__file__).parent
    offenders = [
        str(p)
        for p in root.rglob("*.py")
        if any(s in p.read_text() for s in ("import pickle", "allow_pickle=True", "cloudpickle", "dill"))
    ]
    assert offenders == []


def test_export_cli_and_gin(tmp_path, musiclm_model_dirs, capsys):
    """`musiclm export --model_dir --output_dir --dtype` (one model, no gin) and runs/export.gin's
    bindings (the generate macros, bound to export_musiclm), in-process."""
    import gin
    from musiclm_jax import gin_utils, main

    out = tmp_path / "mulan"
    assert (
        main.main(
            ["export", f"--model_dir={musiclm_model_dirs['mulan_dir']}", f"--output_dir={out}", "--dtype=bfloat16"]
        )
        == 0
    )
    assert "exported MuLan step 1 (bfloat16)" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["checkpoints", "export.json", "model.json", "mulan_rvq", "text_vocab"]
    assert main.main(["export", f"--model_dir={musiclm_model_dirs['mulan_dir']}", f"--output_dir={out}"]) == 2
    assert "not empty" in capsys.readouterr().err
    gin.clear_config()
    try:
        gin_utils.parse(
            ["runs/export.gin"], ["EXPORT_DIR = '/x'", "GENERATE_SECONDS = 20.0", "EXPORT_DTYPE = 'bfloat16'"]
        )
        assert gin.query_parameter("export_musiclm.seconds").scoped_configurable_fn() == 20.0  # the macro
        assert gin.query_parameter("%EXPORT_PLATFORMS") == ("cpu", "tpu")
    finally:
        gin.clear_config()


def test_tf_savedmodel_runs_the_bundles_functions(bundle, tmp_path):
    import jax
    import tensorflow as tf

    from musiclm_jax import export_tf

    out, manifest = bundle
    info = export_tf.export_savedmodel(out, str(tmp_path / "savedmodel"))
    assert len(info["samplers"]) == len(manifest["samplers"])
    loaded = tf.saved_model.load(str(tmp_path / "savedmodel"))
    samplers, decoder = export.read_functions(out, manifest)
    model = export.load_exported_musiclm(out)
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 8, size=(3, 7, info["decode_levels"]), dtype=np.int32)  # batch and frames symbolic
    np.testing.assert_allclose(
        loaded.decode(tf.constant(codes)).numpy(), np.asarray(decoder.call(model.codec.params, codes)), atol=1e-5
    )
    entry, (sig, fn) = info["samplers"][-1], list(samplers.items())[-1]
    batch = {k: rng.integers(0, 4, size=(2, *shape), dtype=np.int32) for k, shape in entry["features"].items()}
    key = np.asarray(jax.random.key_data(jax.random.key(3)))
    tokens = getattr(loaded, entry["function"])(
        {k: tf.constant(v) for k, v in batch.items()}, tf.constant(key), tf.constant(0.7)
    )
    np.testing.assert_array_equal(
        tokens.numpy(), np.asarray(fn.call(model.stages[sig.stage][1], batch, key, np.float32(0.7)))
    )
    with pytest.raises(FileExistsError):
        export_tf.export_savedmodel(out, str(tmp_path / "savedmodel"))


def test_serve_an_export_bundle(bundle, tmp_path):
    """`musiclm serve --model_dir=BUNDLE`: the bundle's length and compiled settings are the only
    ones offered; a request within them makes music through the exported samplers."""
    import time

    import soundfile

    from musiclm_jax.serve import RequestError, Studio, load_served

    studio = Studio(load_served(bundle[0]), str(tmp_path), start=False)
    info = studio.info()
    assert info["source"] == "export" and info["fixed_seconds"] and info["max_seconds"] == 0.5
    assert info["settings"]["semantic"]["top_k"] == 8 and not info["can_continue"]
    with pytest.raises(RequestError, match="at most 0.5"):
        studio.check({"prompt": "a calm piano", "seconds": 1})
    with pytest.raises(RequestError, match="only temperature may change"):
        studio.check({"prompt": "a calm piano", "settings": {"semantic": {"top_k": 0}}})
    job = studio.submit({"prompt": "a calm piano", "settings": {"coarse": {"temperature": 0.7}}})
    studio.start()
    deadline = time.time() + 120
    while job.status in ("queued", "running") and time.time() < deadline:
        time.sleep(0.1)
    studio.stop()
    assert job.status == "done", job.error
    assert soundfile.info(studio.result_file(job, "wav")).duration == pytest.approx(0.5, abs=1e-3)
