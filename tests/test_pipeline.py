"""`musiclm pipeline` end to end at the tiny sizes: every step runs in order (five models trained
on the synthetic source, k-means, RVQ, token cache, generation, the text-to-music eval), the summary
and the music are written, and a rerun skips finished steps (no training again). What a changed
configuration reruns: test_pipeline_markers."""

import json
import os

import numpy as np
import pytest
import soundfile
from conftest import PIPELINE_SECONDS as SECONDS

from musiclm_jax import main, pipeline


@pytest.mark.slow
def test_tiny_pipeline_runs_end_to_end(tiny_pipeline):
    model_dir, summary = tiny_pipeline
    with open(os.path.join(model_dir, pipeline.SUMMARY_FILE)) as f:
        assert json.load(f) == json.loads(json.dumps(summary))
    assert list(summary["wall_s"]) == list(pipeline.STEPS)
    for step in pipeline.STEPS:
        assert os.path.exists(pipeline.marker_path(model_dir, step))
    with open(os.path.join(model_dir, pipeline.PLAN_FILE)) as f:  # what the run said it would do, as it started
        plan = json.load(f)
    assert [r["step"] for r in plan["plan"]] == list(summary["wall_s"]) and plan["size"] == "tiny"
    assert {r["action"] for r in plan["plan"]} == {"run"} and plan["storage"] == "local"
    for name in ("codec", "w2v_bert", "mulan", "semantic_stage", "coarse_stage", "fine_stage"):
        assert os.listdir(os.path.join(model_dir, name, "checkpoints"))
    assert os.path.exists(os.path.join(model_dir, "w2v_bert", "kmeans", "kmeans.npz"))
    assert os.path.exists(os.path.join(model_dir, "mulan", "mulan_rvq", "codebooks.npz"))
    m = summary["metrics"]
    assert m["precompute"]["train"]["clips"] == 48 and m["mulan_rvq"]["levels"] == 4
    for stage in ("semantic_stage", "coarse_stage"):  # each learnt more than the code histogram
        assert m[stage]["eval"]["accuracy"] > m[stage]["unigram_accuracy"] + 0.01, (stage, m[stage])
    # The tiny fine stage (60 steps on the tiny codec's levels 2-3) does not beat the histogram yet
    # (eval accuracy 0.084 vs 0.098); it has learnt which 64 codes it may emit: an untrained one
    # spreads its guesses over the whole shared vocabulary, log(64) = 4.16 nats and more.
    assert m["fine_stage"]["eval"]["loss"] < np.log(64) - 0.1, m["fine_stage"]
    # the music: one WAV (and PNG) per prompt, of the requested length, prompts held out
    assert len(summary["wavs"]) == 2 and len(summary["pngs"]) == 2
    for wav, png in zip(summary["wavs"], summary["pngs"]):
        info = soundfile.info(wav)
        assert info.frames == int(SECONDS * info.samplerate) and os.path.exists(png)
    captions = {p["caption"] for p in summary["prompts"]}
    assert len(captions) == 2
    # adherence per stated attribute, against chance
    adherence = m["adherence"]
    assert {"register", "drums"} <= set(adherence)
    assert adherence["register"]["chance"] == pytest.approx(1 / 3) and adherence["drums"]["chance"] == 0.5
    for a in adherence.values():
        assert 0 <= a["accuracy"] <= 1 and a["n"] >= 1
    # references: the detectors on the described held-out pieces and on their codec reconstructions
    assert set(m["adherence_reference"]) == set(adherence) == set(m["adherence_codec_ceiling"])
    # the text-to-music eval of that music, with its report page
    t2m = m["text_to_music"]
    # 2 clips: KAD is a number, FAD is not ("too few clips" in the eval's results.json)
    assert {"kad/mulan", "kad_codec/mulan", "kld", "mcc", "mcc_reference", "codec/bitrate_kbps"} <= set(t2m)
    assert "fad/mulan" not in t2m
    for a in adherence.values():
        assert 0 < a["p"] <= 1 and a["above_chance"] is (a["p"] < 0.01)
    assert t2m["kld"] >= 0 and -1 <= t2m["mcc"] <= 1
    assert os.path.exists(summary["report"]) and os.path.dirname(summary["report"]) == os.path.join(model_dir, "eval")


@pytest.mark.slow
def test_rerun_resumes_without_training_again(tiny_pipeline, capsys):
    model_dir, first = tiny_pipeline
    checkpoints = {
        name: sorted(os.listdir(os.path.join(model_dir, name, "checkpoints")))
        for name in ("codec", "w2v_bert", "mulan", "semantic_stage", "coarse_stage", "fine_stage")
    }
    markers = {s: os.path.getmtime(pipeline.marker_path(model_dir, s)) for s in pipeline.STEPS}
    os.remove(pipeline.marker_path(model_dir, "evaluate"))  # as if stopped during the last step
    capsys.readouterr()
    again = pipeline.run_pipeline(
        model_dir=model_dir, size="tiny", seconds=SECONDS, num_prompts=2, train_captions_checked=64
    )
    out = capsys.readouterr().out
    assert out.count("already done") == len(pipeline.STEPS) - 1
    assert "train step compiled" not in out  # nothing was trained
    for s in pipeline.STEPS[:-1]:
        assert os.path.getmtime(pipeline.marker_path(model_dir, s)) == markers[s]
    assert {
        name: sorted(os.listdir(os.path.join(model_dir, name, "checkpoints"))) for name in checkpoints
    } == checkpoints
    assert again["metrics"]["adherence"] == first["metrics"]["adherence"]  # same music, same detectors
    assert again["wall_s"]["codec"] == first["wall_s"]["codec"]


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="size"):
        pipeline.run_pipeline(model_dir=str(tmp_path), size="huge")
    with pytest.raises(ValueError, match="unknown steps"):
        pipeline.run_pipeline(model_dir=str(tmp_path), size="tiny", step_bindings={"codek": ["TRAIN_STEPS = 1"]})
    with pytest.raises(ValueError, match="prompt_family"):
        pipeline.run_pipeline(model_dir=str(tmp_path), size="tiny", prompt_family="poetry")
    assert main.main(["pipeline"]) == 2  # no --model_dir
    assert not os.listdir(tmp_path)


@pytest.mark.slow
def test_melody_pipeline_from_a_finished_run(tiny_pipeline, tmp_path):
    """`run_pipeline(melody=True)` over a finished run: its tokenizers copied, the melody model and
    its RVQ trained, the clips tokenized again with melody tokens, the semantic stage trained on
    [MuLan, melody] (its vocabulary grew: not fine-tuned), and music made for a hummed tune."""
    model_dir = str(tmp_path / "melody_run")
    options = dict(size="tiny", seconds=SECONDS, num_prompts=2, train_captions_checked=64, melody=True)
    reuse = {"coarse_stage": "copy", "fine_stage": "copy"}
    plan = pipeline.run_pipeline(model_dir=model_dir, from_dir=tiny_pipeline[0], reuse=reuse, plan=True, **options)
    actions = {row["step"]: row["action"] for row in plan["plan"]}
    assert list(actions) == list(pipeline.ALL_STEPS)
    assert actions["melody"] == actions["semantic_stage"] == "run" and actions["mulan"] == "copy"
    summary = pipeline.run_pipeline(
        model_dir=model_dir, from_dir=tiny_pipeline[0], reuse=reuse, num_melody_prompts=1, **options
    )
    assert list(summary["wall_s"]) == list(pipeline.ALL_STEPS)
    m = summary["metrics"]
    assert m["melody_rvq"]["levels"] == 4 and m["precompute"]["train"]["tokens"]["melody_tokens"] == 48 * 2 * 4
    config = json.load(open(os.path.join(model_dir, "semantic_stage", "model.json")))["config"]
    assert [c[0] for c in config["conditions"]] == ["mulan_tokens", "melody_tokens"]
    [tune] = json.load(open(pipeline.marker_path(model_dir, "generate")))["metrics"]["melody"]["tunes"]
    made, hum = soundfile.info(tune["wav"]), soundfile.info(tune["tune"])
    assert made.frames == hum.frames == int(SECONDS * made.samplerate)
    assert os.path.exists(tune["png"])
    for kind in ("with_tune", "text_only", "played_tune"):
        assert 0 <= tune[kind]["chroma_cosine"] <= 1 and tune[kind]["voiced_frames"] > 0
    assert tune["played_tune"]["chroma_cosine"] > 0.5  # the ceiling: the same tune on an instrument
    assert set(m["melody_following"]) == {"with_tune", "text_only", "played_tune"}
    page = open(summary["report"]).read()  # the hum, the music and both pitch curves, beside the report
    assert "Melody: music following hummed tunes" in page
    for name in ("tune.wav", "music.wav", "pitch_curves.png"):
        assert f"melody/tune_000/{name}" in page and os.path.exists(
            os.path.join(model_dir, "eval/melody/tune_000", name)
        )
