"""Model directories, export bundles and generated outputs on gs:// (a GCS emulator on localhost,
tests/emulators.py): the tiny models copied to the bucket load, export and generate there exactly
as locally; an interrupted bundle is refused as incomplete."""

import io
import uuid

import jax
import numpy as np
import pytest

from musiclm_jax import export, fileio, model_io
from musiclm_jax import generate as gen
from musiclm_jax.audio.io import AudioDecodeError
from musiclm_jax.models.musiclm import SamplingSettings

# one window per stage at 0.5 s; a guided, top-k semantic stage (as test_export)
SETTINGS = {"semantic": SamplingSettings(1.0, top_k=8, guidance_scale=1.5)}
TEXTS = ["calm strings", "loud bass"]


@pytest.fixture(scope="module")
def gcs_root(gcs_emulator):
    return f"{gcs_emulator}/models-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def gcs_dirs(gcs_root, musiclm_model_dirs):
    """The five tiny model directories, copied to the bucket."""
    out = {}
    for key, local in musiclm_model_dirs.items():
        out[key] = f"{gcs_root}/{key}"
        fileio.copytree(local, out[key])
    return out


@pytest.fixture(scope="module")
def gcs_bundle(gcs_root, gcs_dirs):
    out = f"{gcs_root}/bundle"
    manifest = export.export_musiclm(out, seconds=0.5, settings=SETTINGS, platforms=("cpu", "tpu"), model_dirs=gcs_dirs)
    return out, manifest


def _assert_trees_equal(a, b):
    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (_, x), (_, y) in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_model_dirs_and_tokenizer_files_load_from_gcs(gcs_root, gcs_dirs, musiclm_model_dirs):
    """model.json + orbax checkpoint, the RVQ codebooks and caption vocabulary, config.gin."""
    from musiclm_jax.tokenizers import kmeans
    from musiclm_jax.tokenizers import mulan as mulan_tok

    for key in ("coarse_stage_dir", "soundstream_dir"):
        (m1, p1), (m2, p2) = model_io.load(gcs_dirs[key]), model_io.load(musiclm_model_dirs[key])
        assert m1.config == m2.config
        _assert_trees_equal(p1, p2)
    assert model_io.latest_step(gcs_dirs["fine_stage_dir"]) == 1
    assert model_io.check_export(gcs_dirs["fine_stage_dir"]) is None  # a training directory
    tok = mulan_tok.MuLanTokenizer.from_model_dir(gcs_dirs["mulan_dir"])  # + caption vocabulary and RVQ
    ref = mulan_tok.MuLanTokenizer.from_model_dir(musiclm_model_dirs["mulan_dir"])
    assert [tok.vocabulary.encode(t) for t in TEXTS] == [ref.vocabulary.encode(t) for t in TEXTS]
    _assert_trees_equal(tok.codebooks, ref.codebooks)
    _assert_trees_equal(tok.params, ref.params)
    # a stage's config.gin (its training crop) and a prompt file, read from gs://
    fileio.write_text(f"{gcs_root}/gin-only/config.gin", "register_token_task.crop_seconds = 3\n")
    assert gen.training_crop_seconds(f"{gcs_root}/gin-only") == 3.0
    assert gen.training_crop_seconds(gcs_dirs["coarse_stage_dir"]) is None
    fileio.write_text(f"{gcs_root}/prompts.txt", "a calm piano\n\n  loud drums \n")
    assert gen.read_prompts(["x"], f"{gcs_root}/prompts.txt") == ["x", "a calm piano", "loud drums"]
    # tokenizer files written to and read back from gs:// (k-means centroids, RVQ codebooks)
    state = kmeans.KMeansState(np.eye(4, 3, dtype=np.float32), np.arange(4), 7, 2, (1.0, 0.5))
    kmeans.save_kmeans(f"{gcs_dirs['mulan_dir']}-kmeans", state, {"layer": 2})
    centroids, info = kmeans.load_kmeans(f"{gcs_dirs['mulan_dir']}-kmeans")
    np.testing.assert_array_equal(centroids, state.centroids)
    assert info["layer"] == 2 and info["num_points"] == 7
    codebooks, _ = mulan_tok.load_rvq(f"{gcs_dirs['mulan_dir']}/mulan_rvq")
    mulan_tok.save_rvq(f"{gcs_dirs['mulan_dir']}-rvq", codebooks, {"levels": 4})
    again, info = mulan_tok.load_rvq(f"{gcs_dirs['mulan_dir']}-rvq")
    _assert_trees_equal(again, codebooks)
    assert info == {"levels": 4}
    with pytest.raises(FileNotFoundError, match="fit_mulan_rvq"):
        mulan_tok.load_rvq(f"{gcs_dirs['mulan_dir']}-none")


@pytest.fixture(scope="module")
def gcs_musiclm(gcs_dirs):
    return gen.load_musiclm(gcs_dirs)


def test_generate_from_gcs_dirs_writes_to_gcs(gcs_root, gcs_dirs, gcs_musiclm):
    """`generate` with the five gs:// directories writes WAV + PNG + sidecar (last) to gs://."""
    import soundfile as sf

    out = f"{gcs_root}/samples"
    sidecars = gen.generate(
        output_dir=out,
        seconds=0.5,
        prompts=TEXTS,
        num_candidates=2,
        seed=7,
        settings=SETTINGS,
        model=gcs_musiclm,
        model_dirs=gcs_dirs,
    )
    assert fileio.listdir(out) == [
        f"{i:03d}_{s}.{e}" for i, s in enumerate(["calm_strings", "loud_bass"]) for e in ("json", "png", "wav")
    ]
    meta = fileio.read_json(f"{out}/000_calm_strings.json")
    assert meta == sidecars[0] and meta["file"] == f"{out}/000_calm_strings.wav" and meta["models"] == gcs_dirs
    audio, sr = sf.read(io.BytesIO(fileio.read_bytes(meta["file"])), dtype="float32")
    assert sr == meta["sample_rate"] and audio.shape == (sr // 2,)
    assert fileio.read_bytes(f"{out}/001_loud_bass.png").startswith(b"\x89PNG")
    # an audio prompt (continue_from) on gs://: read through a local copy, named by its URL
    prompt, info = gen._load_prompt_audio(meta["file"], sr)
    assert info.path == meta["file"] and prompt.shape == audio.shape
    with pytest.raises(AudioDecodeError, match=f"missing_file: {out}/none.wav"):
        gen._load_prompt_audio(f"{out}/none.wav", sr)


def test_gcs_bundle_equals_its_gcs_models(gcs_root, gcs_bundle, gcs_musiclm):
    """The bundle exported to gs:// holds the same parameters and samples the same tokens."""
    bundle, manifest = gcs_bundle
    assert fileio.isfile(f"{bundle}/{model_io.EXPORT_FILE}")
    assert not fileio.exists(f"{bundle}/{model_io.INCOMPLETE_FILE}")
    assert fileio.read_json(f"{bundle}/mulan/{model_io.EXPORT_FILE}")["source"] == f"{gcs_root}/mulan_dir"
    exported = export.load_exported_musiclm(bundle)
    for stage in ("semantic", "coarse", "fine"):
        _assert_trees_equal(exported.stages[stage][1], gcs_musiclm.stages[stage][1])
    _assert_trees_equal(exported.codec.params, gcs_musiclm.codec.params)
    a = exported.generate(TEXTS, 0.5, seed=7, settings=SETTINGS, num_candidates=2)
    b = gcs_musiclm.generate(TEXTS, 0.5, seed=7, settings=SETTINGS, num_candidates=2)
    np.testing.assert_array_equal(a.semantic_tokens, b.semantic_tokens)
    np.testing.assert_array_equal(a.acoustic_tokens, b.acoustic_tokens)
    np.testing.assert_allclose(a.audio, b.audio, atol=1e-5)


def test_incomplete_or_modified_gcs_bundle_is_refused(gcs_root, gcs_bundle):
    bundle, manifest = gcs_bundle
    broken = f"{gcs_root}/broken"
    fileio.copytree(bundle, broken)
    victim = f"{broken}/functions/{manifest['samplers'][0]['file']}"
    data = bytearray(fileio.read_bytes(victim))
    data[len(data) // 2] ^= 0xFF
    fileio.write_bytes(victim, bytes(data))
    with pytest.raises(export.ExportError, match=manifest["samplers"][0]["file"]):
        export.load_exported_musiclm(broken)
    # interrupted before export.json: the marker says so, for the bundle and its models
    fileio.remove(f"{broken}/{model_io.EXPORT_FILE}")
    fileio.write_text(f"{broken}/{model_io.INCOMPLETE_FILE}", "")
    with pytest.raises(export.ExportError, match="incomplete"):
        export.load_exported_musiclm(broken)
    fileio.remove(f"{broken}/fine_stage/{model_io.EXPORT_FILE}")
    fileio.write_text(f"{broken}/fine_stage/{model_io.INCOMPLETE_FILE}", "")
    with pytest.raises(export.ExportError, match="incomplete"):
        model_io.load(f"{broken}/fine_stage")
    fileio.remove(f"{broken}/fine_stage/model.json")
    with pytest.raises(export.ExportError, match="incomplete"):
        model_io.read_spec(f"{broken}/fine_stage")
    with pytest.raises(export.ExportError, match="not a `musiclm export` bundle"):
        export.load_exported_musiclm(f"{gcs_root}/coarse_stage_dir")
