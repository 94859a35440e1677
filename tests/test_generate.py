"""Text -> music (models/musiclm.py, generate.py) on random-init tiny models: lengths and shapes,
determinism by seed, MuLan re-ranking of candidates, guidance, the files written, and clear
errors for bad input with nothing written."""

import json
import os

import numpy as np
import pytest
from model_dirs import CODEC_SR

from musiclm_jax import generate as gen
from musiclm_jax import model_io
from musiclm_jax.models.musiclm import SamplingSettings


@pytest.fixture(scope="module")
def dirs(musiclm_model_dirs):
    return musiclm_model_dirs


@pytest.fixture(scope="module")
def musiclm(dirs):
    return gen.load_musiclm(dirs)


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

    # from given tokens: the text's MuLan tokens give what the text gives; given semantic tokens
    # are kept and steer the acoustic stages
    mulan = np.repeat(musiclm.mulan.text_tokens(texts), 2, axis=0)
    t1 = musiclm.generate_from_tokens(mulan, 0.5, seed=1, settings=greedy)
    np.testing.assert_array_equal(t1.acoustic_tokens[::2], g1.acoustic_tokens)
    other = (t1.semantic_tokens + 1 + np.arange(13)) % 16
    t2 = musiclm.generate_from_tokens(mulan, 0.5, seed=1, settings=greedy, semantic_tokens=other)
    np.testing.assert_array_equal(t2.semantic_tokens, other)
    assert not np.array_equal(t2.acoustic_tokens, t1.acoustic_tokens)
    with pytest.raises(ValueError, match="semantic_tokens must be"):
        musiclm.generate_from_tokens(mulan, 0.5, semantic_tokens=other[:, :5])
    with pytest.raises(ValueError, match="mulan_tokens must be"):
        musiclm.generate_from_tokens(mulan[0], 0.5)


def test_generate_writes_wav_json_png_and_refuses_bad_input(tmp_path, dirs, musiclm):
    out = tmp_path / "out"
    sidecars = gen.generate(
        output_dir=str(out),
        seconds=0.5,
        prompts=["calm strings", "loud bass"],
        num_candidates=2,
        seed=7,
        model=musiclm,
        model_dirs=dirs,
    )
    names = sorted(os.listdir(out))
    assert names == [
        f"{i:03d}_{s}.{e}" for i, s in enumerate(["calm_strings", "loud_bass"]) for e in ("json", "png", "wav")
    ]
    meta = json.load(open(out / "000_calm_strings.json"))
    assert meta == sidecars[0] and meta["seed"] == 7 and meta["settings"]["fine"]["temperature"] == 0.4
    assert -1.0 <= meta["mulan_score"] <= 1.0
    bad = tmp_path / "bad"
    for kwargs, match in [
        (dict(prompts=[]), "no prompt"),
        (dict(prompts=["ok", " "]), "empty"),
        (dict(prompts=["ok"], seconds=0), "seconds"),
        (dict(prompts=["ok"], seconds=301), "seconds"),
    ]:
        with pytest.raises(ValueError, match=match):
            gen.generate(output_dir=str(bad), **{"seconds": 1.0, **kwargs}, model=musiclm, model_dirs=dirs)
    with pytest.raises(FileNotFoundError, match="coarse_stage_dir"):
        gen.generate(
            output_dir=str(bad),
            seconds=1.0,
            prompts=["ok"],
            model_dirs={**dirs, "coarse_stage_dir": str(tmp_path / "no")},
        )
    with pytest.raises(ValueError, match="StageModel"):  # a MuLan directory where a stage belongs
        model_io.load(dirs["mulan_dir"], kind="StageModel")
    assert not bad.exists()


def test_generate_gin_and_cli_flags(tmp_path, dirs, musiclm, capsys):
    """runs/generate.gin binds every argument of `generate` (model directories as macros, the
    paper's temperatures); the CLI refuses a run without prompts before loading anything.
    In-process with the already compiled model (a subprocess would compile everything again)."""
    import gin
    from musiclm_jax import configurables, gin_utils, main

    macros = {
        "mulan_dir": "MULAN_DIR",
        "semantic_stage_dir": "SEMANTIC_STAGE_DIR",
        "coarse_stage_dir": "COARSE_STAGE_DIR",
        "fine_stage_dir": "FINE_STAGE_DIR",
        "soundstream_dir": "SOUNDSTREAM_DIR",
    }
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
    story = ["--story=10:a calm intro", "--story=ten:drums"]
    assert (
        main.main(["generate", "--gin_file=runs/generate.gin", f"--output_dir={tmp_path / 'none'}", *story, *flags])
        == 2
    )
    assert "SECONDS:TEXT" in capsys.readouterr().err and not (tmp_path / "none").exists()
    assert gen.parse_story(["10:a calm intro", "2.5: drums: loud"]) == [("a calm intro", 10.0), ("drums: loud", 2.5)]


def test_plan_windows_cover_the_length_with_overlaps_and_story_changes():
    from musiclm_jax.models.musiclm import plan_windows

    assert plan_windows(10, 4, 2) == [(0, 0, 4), (2, 4, 6), (4, 6, 8), (6, 8, 10)]
    assert plan_windows(10, 4, 4) == [(0, 0, 4), (4, 4, 8), (8, 8, 10)]  # no overlap
    assert plan_windows(3, 4, 2) == [(0, 0, 3)]  # within one window
    assert plan_windows(10, 4, 2, done=3) == [(1, 3, 5), (3, 5, 7), (5, 7, 9), (7, 9, 10)]  # continuation
    assert plan_windows(10, 4, 2, changes=[5]) == [(0, 0, 4), (2, 4, 5), (3, 5, 7), (5, 7, 9), (7, 9, 10)]
    with pytest.raises(ValueError, match="stride"):
        plan_windows(10, 4, 5)


@pytest.fixture(scope="module")
def windowed(dirs, tokenizer_model_dirs):
    """The same models with short windows (semantic 0.4 s / 0.2 s stride = 10 / 5 tokens;
    acoustic 0.1 s / 0.05 s = 20 / 10 frames at 200 Hz) and the semantic tokenizer, with every
    stage call recorded."""
    model = gen.load_musiclm(
        {**dirs, "w2v_bert_dir": tokenizer_model_dirs["w2v_bert_dir"]},
        windows={"semantic": (0.4, 0.2), "coarse": (0.1, 0.05), "fine": (0.1, 0.05)},
    )
    calls = []
    run_stage = model._run_stage

    def recorded(stage, batch, rng, num_tokens, settings):
        out = run_stage(stage, batch, rng, num_tokens, settings)
        calls.append((stage, {k: np.asarray(v) for k, v in batch.items()}, out))
        return out

    model._run_stage = recorded
    return model, calls


def _check_windows(calls, result, *, semantic_tokens, coarse_levels=2):
    """Each window's prefix is the already generated tail and its aligned condition the span's
    tokens; returns the recorded calls per stage."""
    from musiclm_jax.models.stages import TARGET_PREFIX_KEY

    per_stage = {s: [c for c in calls if c[0] == s] for s in ("semantic", "coarse", "fine")}
    semantic, acoustic = result.semantic_tokens, result.acoustic_tokens
    for stage, windows in per_stage.items():
        for _, batch, _ in windows[1:]:
            prefix = batch[TARGET_PREFIX_KEY]
            assert prefix.shape[1] > 0  # every later window reads back an overlap
    assert semantic.shape[1] == semantic_tokens
    # the last coarse window's semantic condition is the end of the semantic tokens
    last = per_stage["coarse"][-1][1]["semantic_tokens"][:, :, 0]
    np.testing.assert_array_equal(last, semantic[:, semantic.shape[1] - last.shape[1] :])
    # the last fine window reads the final coarse frames, and its prefix is the fine levels before
    fine = per_stage["fine"][-1][1]
    frames = fine["acoustic_tokens"].shape[1]
    np.testing.assert_array_equal(fine["acoustic_tokens"], acoustic[:, -frames:, :coarse_levels])
    prefix = fine[TARGET_PREFIX_KEY]
    np.testing.assert_array_equal(prefix, acoustic[:, -frames : -frames + prefix.shape[1], coarse_levels:])
    return per_stage


def _sampling_starts(calls, stage, rate, levels):
    """(batch, second from which the window samples) per recorded window of `stage`: windows
    extend the generated frames in order, each reading back its prefix."""
    done, out = 0, []
    for name, batch, codes in calls:
        if name == stage:
            prefix = batch.get("target_prefix", np.zeros((1, 0))).shape[1]
            out.append((batch, done / rate))
            done += codes.shape[1] // levels - prefix
    return out


def test_sliding_windows_and_story_mode(windowed):
    """0.6 s through windows of 0.4 s (semantic) and 0.1 s (acoustic), with the text changing at
    0.4 s (on window boundaries, so that few window shapes compile): the requested length; each
    window reads back the overlap and the aligned span; every window samples under the text of
    its time; deterministic by seed (one generation, as each new window shape compiles)."""
    model, calls = windowed
    calls.clear()
    story = [("a calm piano melody", 0.4), ("loud fast drums", 0.2)]
    result = model.generate_story(story, seed=2)
    assert result.audio.shape == (1, int(0.6 * CODEC_SR)) and result.acoustic_tokens.shape == (1, 120, 4)
    per_stage = _check_windows(calls, result, semantic_tokens=15)
    # semantic windows (start, sampled from, end): (0, 0, 10), (5, 10, 15); acoustic: 20 frames
    # at a stride of 10 (plan_windows' own test covers windows cut short by a change)
    assert [len(per_stage[s]) for s in ("semantic", "coarse", "fine")] == [2, 11, 11]
    np.testing.assert_array_equal(
        per_stage["semantic"][1][1]["target_prefix"][:, :, 0], result.semantic_tokens[:, 5:10]
    )
    first, second = model.mulan.text_tokens([t for t, _ in story])
    for stage, rate, levels in [
        ("semantic", model.semantic_rate, 1),
        ("coarse", model.acoustic_rate, 2),
        ("fine", model.acoustic_rate, 2),
    ]:
        starts = _sampling_starts(calls, stage, rate, levels)
        assert any(abs(t - 0.4) < 1e-9 for _, t in starts), stage  # a window begins at the change
        for batch, t in starts:
            expected = first if t < 0.4 - 1e-9 else second
            np.testing.assert_array_equal(batch["mulan_tokens"][0], expected, err_msg=f"{stage} window at {t} s")
    again = model.generate_story(story, seed=2)
    np.testing.assert_array_equal(result.acoustic_tokens, again.acoustic_tokens)


def test_continuation_starts_with_the_prompt_tokens(windowed, dirs, tmp_path):
    from musiclm_jax.audio.io import resample, write_wav
    from musiclm_jax.data import synthetic

    model, _ = windowed
    clip = next(iter(synthetic.SyntheticSource(num_examples=1, duration_s=0.5, sample_rate=CODEC_SR).examples("train")))
    audio = clip.audio[: int(0.3 * CODEC_SR)]
    result = model.generate(["bright organ"], 0.3, seed=3, prompt_audio=audio, prompt_sample_rate=CODEC_SR)
    assert result.prompt_seconds == pytest.approx(0.28)  # 7 whole semantic tokens of 0.3 s
    assert result.audio.shape == (1, int(round(0.58 * CODEC_SR))) and result.acoustic_tokens.shape[1] == 116
    np.testing.assert_array_equal(result.acoustic_tokens[0, :56], model.codec.encode(audio[None])[0, :56])
    semantic = model.semantic_tokenizer.tokenize([resample(audio, CODEC_SR, model.semantic_tokenizer.sample_rate)])[0]
    np.testing.assert_array_equal(result.semantic_tokens[0, :7], semantic[:7])
    # through `musiclm generate`: the sidecar records the prompt; a bad audio file is a clear error
    write_wav(tmp_path / "prompt.wav", audio, CODEC_SR)
    kwargs = dict(seconds=0.3, prompts=["bright organ"], model=model, model_dirs=dirs)
    [meta] = gen.generate(output_dir=str(tmp_path / "out"), continue_from=str(tmp_path / "prompt.wav"), **kwargs)
    assert meta["prompt_seconds"] == pytest.approx(0.28) and meta["continue_from"].endswith("prompt.wav")
    (tmp_path / "bad.wav").write_bytes(b"RIFF....WAVE")
    with pytest.raises(Exception, match="bad.wav"):
        gen.generate(output_dir=str(tmp_path / "none"), continue_from=str(tmp_path / "bad.wav"), **kwargs)
    assert not (tmp_path / "none").exists()


def test_compiled_samplers_are_kept_least_recently_used_first(musiclm, monkeypatch):
    from musiclm_jax.models.musiclm import SamplingSettings

    monkeypatch.setattr(musiclm, "max_samplers", 2)
    monkeypatch.setattr(musiclm, "_samplers", type(musiclm._samplers)())
    a, b, c = (musiclm._sampler("coarse", n, SamplingSettings()) for n in (10, 20, 30))
    assert list(k[1] for k in musiclm._samplers) == [20, 30]  # 10 dropped
    assert musiclm._sampler("coarse", 20, SamplingSettings()) is b  # a hit moves it last
    musiclm._sampler("coarse", 40, SamplingSettings())
    assert list(k[1] for k in musiclm._samplers) == [20, 40]
