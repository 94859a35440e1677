"""Text -> music (models/musiclm.py, generate.py) on random-init tiny models: lengths and shapes,
determinism by seed, MuLan re-ranking of candidates, guidance, the files written, and clear
errors for bad input with nothing written."""
import json
import os

import numpy as np
import pytest
from model_dirs import CODEC_SR, save_random_model

from musiclm_jax import generate as gen
from musiclm_jax.models.musiclm import SamplingSettings
from musiclm_jax.models.stages import StageConfig, StageModel
from musiclm_jax.models.token_layout import TokenLayout

LAYOUT = TokenLayout(streams=(("mulan", 4, 32), ("semantic", 1, 16), ("acoustic", 4, 64)))
SIZE = dict(num_layers=1, num_heads=2, head_dim=8, d_model=16, d_ff=32, dropout_rate=0.0, layout=LAYOUT)
STAGES = {
    "semantic_stage_dir": StageConfig(conditions=(("mulan_tokens", "mulan", 0, 4),),
                                      target=("semantic_tokens", "semantic", 0, 1), **SIZE),
    "coarse_stage_dir": StageConfig(conditions=(("mulan_tokens", "mulan", 0, 4), ("semantic_tokens", "semantic", 0, 1)),
                                    target=("acoustic_tokens", "acoustic", 0, 2), **SIZE),
    "fine_stage_dir": StageConfig(conditions=(("mulan_tokens", "mulan", 0, 4), ("acoustic_tokens", "acoustic", 0, 2)),
                                  target=("acoustic_tokens", "acoustic", 2, 2), **SIZE),
}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, tokenizer_model_dirs):
    root = tmp_path_factory.mktemp("musiclm")
    out = dict(tokenizer_model_dirs)
    out.pop("w2v_bert_dir")  # generation needs no w2v-BERT: the semantic stage emits its tokens
    for name, config in STAGES.items():
        model = StageModel(config)
        shapes = {s.feature: (1, 1) for s in (*config.conditions, config.target)}
        save_random_model(root / name, model, shapes)
        out[name] = str(root / name)
    return out


@pytest.fixture(scope="module")
def musiclm(dirs):
    return gen.load_musiclm(**dirs)


def test_generate_lengths_determinism_and_reranking(musiclm):
    texts = ["a slow sad piano melody", "fast drums and a bright organ"]
    a = musiclm.generate(texts, 0.5, seed=3, num_candidates=2)
    assert a.audio.shape == (2, CODEC_SR // 2) and a.sample_rate == CODEC_SR
    assert a.semantic_tokens.shape == (2, 13)  # ceil(0.5 s x 25 Hz)
    assert a.acoustic_tokens.shape == (2, 100, 4) and a.mulan_tokens.shape == (2, 4)
    assert a.acoustic_tokens.min() >= 0 and a.acoustic_tokens.max() < 64 and np.isfinite(a.audio).all()
    # the returned candidate is the best by MuLan text-audio cosine
    np.testing.assert_allclose(a.mulan_score, a.candidate_scores.max(axis=1))
    np.testing.assert_allclose(musiclm.mulan_scores(texts, a.audio), a.mulan_score, atol=1e-5)
    b = musiclm.generate(texts, 0.5, seed=3, num_candidates=2)
    np.testing.assert_array_equal(a.acoustic_tokens, b.acoustic_tokens)
    c = musiclm.generate(texts, 0.5, seed=4, num_candidates=2)
    assert not np.array_equal(a.acoustic_tokens, c.acoustic_tokens)
    # greedy sampling does not depend on the seed; guidance changes the tokens
    greedy = {s: SamplingSettings(temperature=0.0) for s in ("semantic", "coarse", "fine")}
    # (2 prompts x 2 candidates x 0.5 s in every call of this file: one compile per stage)
    g1, g2 = (musiclm.generate(texts, 0.5, seed=s, settings=greedy, num_candidates=2) for s in (1, 2))
    np.testing.assert_array_equal(g1.acoustic_tokens, g2.acoustic_tokens)
    guided = {**greedy, "semantic": SamplingSettings(temperature=0.0, guidance_scale=3.0)}
    g3 = musiclm.generate(texts, 0.5, seed=1, settings=guided, num_candidates=2)
    assert not np.array_equal(g1.semantic_tokens, g3.semantic_tokens)


def test_generate_writes_wav_json_png_and_refuses_bad_input(tmp_path, dirs, musiclm):
    out = tmp_path / "out"
    sidecars = gen.generate(output_dir=str(out), seconds=0.5, prompts=["calm strings", "loud bass"], num_candidates=2,
                            seed=7, model=musiclm, **dirs)
    names = sorted(os.listdir(out))
    assert names == [f"{i:03d}_{s}.{e}" for i, s in enumerate(["calm_strings", "loud_bass"]) for e in ("json", "png", "wav")]
    meta = json.load(open(out / "000_calm_strings.json"))
    assert meta == sidecars[0] and meta["seed"] == 7 and meta["settings"]["fine"]["temperature"] == 0.4
    assert -1.0 <= meta["mulan_score"] <= 1.0
    bad = tmp_path / "bad"
    for kwargs, match in [(dict(prompts=[]), "no prompt"), (dict(prompts=["ok", " "]), "empty"),
                          (dict(prompts=["ok"], seconds=0), "seconds"), (dict(prompts=["ok"], seconds=31), "seconds")]:
        with pytest.raises(ValueError, match=match):
            gen.generate(output_dir=str(bad), **{"seconds": 1.0, **kwargs}, model=musiclm, **dirs)
    with pytest.raises(FileNotFoundError, match="coarse_stage_dir"):
        gen.generate(output_dir=str(bad), seconds=1.0, prompts=["ok"], **{**dirs, "coarse_stage_dir": str(tmp_path / "no")})
    with pytest.raises(ValueError, match="StageModel"):  # a MuLan directory where a stage belongs
        gen.load_stage(dirs["mulan_dir"])
    assert not bad.exists()


def test_generate_gin_and_cli_flags(tmp_path, dirs, musiclm, capsys):
    """runs/generate.gin binds every argument of `generate` (model directories as macros, the
    paper's temperatures); the CLI refuses a run without prompts before loading anything.
    In-process with the already compiled model (a subprocess would compile everything again)."""
    import gin

    from musiclm_jax import configurables, gin_utils, main

    macros = {"mulan_dir": "MULAN_DIR", "semantic_stage_dir": "SEMANTIC_STAGE_DIR", "coarse_stage_dir": "COARSE_STAGE_DIR",
              "fine_stage_dir": "FINE_STAGE_DIR", "soundstream_dir": "SOUNDSTREAM_DIR"}
    bindings = [f"{macros[k]} = '{v}'" for k, v in dirs.items()]
    bindings += ["GENERATE_SECONDS = 0.5", "NUM_CANDIDATES = 2", f"GENERATE_DIR = '{tmp_path}'"]
    gin.clear_config()
    try:
        gin_utils.parse(["runs/generate.gin"], bindings)
        sidecars = configurables.generate(prompts=["a happy bell tune", "dark bass"], model=musiclm)
    finally:
        gin.clear_config()
    assert sidecars[0]["file"] == str(tmp_path / "000_a_happy_bell_tune.wav") and os.path.exists(sidecars[0]["file"])
    assert [sidecars[0]["settings"][s]["temperature"] for s in ("semantic", "coarse", "fine")] == [1.0, 0.95, 0.4]
    assert sidecars[1]["models"] == dirs
    flags = [f"--gin.{macros[k]}='{v}'" for k, v in dirs.items()]
    assert main.main(["generate", "--gin_file=runs/generate.gin", f"--output_dir={tmp_path / 'none'}", *flags]) == 2
    assert "no prompt" in capsys.readouterr().err and not (tmp_path / "none").exists()
