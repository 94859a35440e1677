"""`musiclm pipeline`'s step markers record each step's configuration: a rerun skips the steps
whose configuration is unchanged and reruns, from scratch, a changed step and the steps that read
it; markers of the previous version (no configuration) still count as done."""

import json
import os
import shutil
import uuid

import pytest
from conftest import PIPELINE_SECONDS as SECONDS

from musiclm_jax import pipeline

TINY = dict(size="tiny", seconds=SECONDS, num_prompts=2, train_captions_checked=64)


def _configs(model_dir, step_bindings=None, **overrides):
    options = dict(
        seconds=SECONDS,
        num_prompts=2,
        prompt_family="heldout",
        prompts=[],
        seed=0,
        num_candidates=1,
        settings={},
        train_captions_checked=64,
    )
    options.update(overrides)
    ctx = pipeline._Context(model_dir, "tiny", step_bindings or {}, options)
    configs, hashes = {}, {}
    for step in pipeline.STEPS:
        configs[step] = pipeline.step_config(ctx, step, hashes)
        hashes[step] = pipeline.config_hash(configs[step])
    return configs, hashes


def test_step_configurations_and_what_a_change_reaches():
    configs, hashes = _configs("/runs/a")
    moved, moved_hashes = _configs("/elsewhere/" + "long_directory_name/" * 5)
    assert moved_hashes == hashes  # the directory is written as D: a moved pipeline keeps its steps
    assert "MODEL_DIR = 'D/fine_stage'" in configs["fine_stage"] and "TRAIN_STEPS = 60" in configs["fine_stage"]
    assert "gin file: pipeline/tiny/w2v_bert.gin" in configs["semantic_kmeans"]
    assert "KMEANS_CLUSTERS = 16" in configs["semantic_kmeans"]  # the gin files as parsed, includes too

    fine, fine_hashes = _configs("/runs/a", {"fine_stage": ["TRAIN_STEPS = 12"]})
    assert {s for s in pipeline.STEPS if fine_hashes[s] != hashes[s]} == {"fine_stage", "generate", "evaluate"}
    assert pipeline.first_difference(configs["fine_stage"], fine["fine_stage"]) == "TRAIN_STEPS = 12 was 60"
    assert pipeline.first_difference(configs["generate"], fine["generate"]) == "fine_stage changed"

    _, codec_hashes = _configs("/runs/a", {"codec": ["TRAIN_STEPS = 30"]})  # precompute reads the codec
    assert {s for s in pipeline.STEPS if codec_hashes[s] != hashes[s]} == {
        "codec",
        "precompute",
        "semantic_stage",
        "coarse_stage",
        "fine_stage",
        "generate",
        "evaluate",
    }
    seeded, seed_hashes = _configs("/runs/a", seed=1)
    assert {s for s in pipeline.STEPS if seed_hashes[s] != hashes[s]} == {"generate", "evaluate"}
    assert pipeline.first_difference(configs["generate"], seeded["generate"]) == "seed: 1 was 0"


def test_first_difference():
    old = ["step: x", "A = 1", "B = 'p'", "C = 3"]
    assert pipeline.first_difference(old, ["step: x", "A = 1", "B = 'q'", "C = 3"]) == "B = 'q' was 'p'"
    assert pipeline.first_difference(old, old[:2] + ["Z = 0"] + old[2:]) == "new: Z = 0"
    assert pipeline.first_difference(old, old[:3]) == "gone: C = 3"
    assert pipeline.first_difference(old, ["step: x", "A = 1", "D = 2", "C = 3"]) == "D = 2 was B = 'p'"


def test_bindings_refused_before_any_step_runs(tmp_path):
    with pytest.raises(ValueError, match="read no gin file"):
        pipeline.run_pipeline(model_dir=str(tmp_path), step_bindings={"evaluate": ["X = 1"]}, **TINY)
    assert not os.listdir(tmp_path)
    with pytest.raises(ValueError, match="TRAIN_STEPZ"):  # a misspelled macro: no step runs on defaults
        pipeline.run_pipeline(model_dir=str(tmp_path), step_bindings={"fine_stage": ["TRAIN_STEPZ = 1"]}, **TINY)
    assert os.listdir(tmp_path) == ["steps"] and not os.listdir(tmp_path / "steps")


def _steps_run(out):
    """The steps that started, from run_pipeline's log."""
    return [line.split()[3].rstrip(":") for line in out.splitlines() if ": starting (pipeline time" in line]


def _copy(tiny_pipeline, tmp_path):
    model_dir = str(tmp_path / "pipeline")
    shutil.copytree(tiny_pipeline[0], model_dir)  # other tests read the original
    return model_dir


@pytest.mark.slow
def test_changed_bindings_rerun_the_last_training_and_what_reads_it(tiny_pipeline, tmp_path, capsys):
    """The real steps: an unchanged rerun skips all; a binding for fine_stage retrains it from
    step 0 (its old checkpoints deleted), then reruns generate (its old music deleted) and
    evaluate, nothing else (not the attribute classifier either); the same again skips all."""
    model_dir = _copy(tiny_pipeline, tmp_path)
    for step in pipeline.STEPS:
        assert len(pipeline.read_marker(model_dir, step)["config_hash"]) == 64
    checkpoints = os.path.join(model_dir, "fine_stage", "checkpoints")
    assert sorted(os.listdir(checkpoints)) == ["60"]
    classifier = os.path.join(model_dir, pipeline.CLASSIFIER_DIR, "config.json")
    classifier_mtime = os.path.getmtime(classifier)
    capsys.readouterr()
    pipeline.run_pipeline(model_dir=model_dir, **TINY)
    out = capsys.readouterr().out
    assert out.count("already done") == len(pipeline.STEPS) and not _steps_run(out)

    stale = os.path.join(model_dir, "generated", "stale.wav")
    shutil.copy(os.path.join(model_dir, pipeline.SUMMARY_FILE), stale)
    bindings = {"fine_stage": ["CHECKPOINT_PERIOD = 30"]}  # the same compiled programs: the session's XLA cache
    summary = pipeline.run_pipeline(model_dir=model_dir, step_bindings=bindings, **TINY)
    out = capsys.readouterr().out
    assert _steps_run(out) == ["fine_stage", "generate", "evaluate"]
    assert out.count("already done") == len(pipeline.STEPS) - 3
    assert [line for line in out.splitlines() if "configuration changed" in line] == [
        "pipeline step 9/11 fine_stage: configuration changed (CHECKPOINT_PERIOD = 30 was 60); "
        "rerunning it and the 2 steps that read it (generate, evaluate)"
    ]
    assert sorted(os.listdir(checkpoints)) == ["30", "60"]  # trained from step 0 again
    assert not os.path.exists(stale) and len(summary["wavs"]) == 2
    assert all(w.startswith(os.path.join(model_dir, "generated")) and os.path.exists(w) for w in summary["wavs"])
    assert os.path.getmtime(classifier) == classifier_mtime
    assert "CHECKPOINT_PERIOD = 30" in pipeline.read_marker(model_dir, "fine_stage")["config"]
    assert summary["wall_s"]["coarse_stage"] == round(tiny_pipeline[1]["wall_s"]["coarse_stage"], 1)

    pipeline.run_pipeline(model_dir=model_dir, step_bindings=bindings, **TINY)  # the same again: all done
    out = capsys.readouterr().out
    assert out.count("already done") == len(pipeline.STEPS) and not _steps_run(out)


@pytest.mark.slow
def test_driver_starts_a_changed_step_over_and_resumes_an_interrupted_one(tiny_pipeline, tmp_path, capsys, monkeypatch):
    """The driver, with the last three steps faked (the real ones: the test above): a binding for
    fine_stage deletes its old training directory and reruns it, generate and evaluate; an
    interrupted rerun resumes (keeps what it wrote); markers of the previous version count as done."""
    model_dir = _copy(tiny_pipeline, tmp_path)
    fine_dir = os.path.join(model_dir, "fine_stage")
    metrics = {s: pipeline.read_marker(model_dir, s)["metrics"] for s in pipeline.STEPS}
    ran, fail = [], []

    def fake(ctx, step, done=None):
        ran.append((step, os.path.exists(fine_dir) and sorted(os.listdir(fine_dir))))
        if step == "fine_stage":
            os.makedirs(os.path.join(fine_dir, "checkpoints", "5"), exist_ok=True)
            if fail:
                raise fail.pop()
        return metrics[step]

    for step in ("fine_stage", "generate"):
        monkeypatch.setitem(pipeline._STEP_FNS, step, fake)
    monkeypatch.setattr(pipeline, "_evaluate", fake)
    bindings = {"fine_stage": ["CHECKPOINT_PERIOD = 30"]}

    fail.append(KeyboardInterrupt())
    capsys.readouterr()
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_pipeline(model_dir=model_dir, step_bindings=bindings, **TINY)
    out = capsys.readouterr().out
    assert ran == [("fine_stage", False)]  # the old checkpoints went first
    assert [line for line in out.splitlines() if "configuration changed" in line] == [
        "pipeline step 9/11 fine_stage: configuration changed (CHECKPOINT_PERIOD = 30 was 60); "
        "rerunning it and the 2 steps that read it (generate, evaluate)"
    ]
    assert pipeline.read_marker(model_dir, "fine_stage") is None
    assert pipeline.read_marker(model_dir, "generate") is not None  # still the old configuration

    ran.clear()
    pipeline.run_pipeline(model_dir=model_dir, step_bindings=bindings, **TINY)
    out = capsys.readouterr().out
    # fine_stage resumes from what the interrupted run wrote; generate's old marker is stale
    assert ran == [("fine_stage", ["checkpoints"]), ("generate", ["checkpoints"]), ("evaluate", ["checkpoints"])]
    assert _steps_run(out) == ["fine_stage", "generate", "evaluate"]
    assert [line for line in out.splitlines() if "configuration changed" in line] == [
        "pipeline step 10/11 generate: configuration changed (fine_stage changed); "
        "rerunning it and the 1 step that reads it (evaluate)"
    ]
    marker = pipeline.read_marker(model_dir, "fine_stage")
    assert "CHECKPOINT_PERIOD = 30" in marker["config"] and marker["config_hash"] == pipeline.config_hash(
        marker["config"]
    )

    ran.clear()
    for step in ("codec", "fine_stage"):  # as written by the previous version
        marker = pipeline.read_marker(model_dir, step)
        del marker["config_hash"], marker["config"]
        with open(pipeline.marker_path(model_dir, step), "w") as f:
            json.dump(marker, f)
    pipeline.run_pipeline(model_dir=model_dir, **TINY)  # fine_stage's bindings dropped: not recorded, so done
    out = capsys.readouterr().out
    assert out.count("did not record configurations") == 1 and "codec, fine_stage done by" in out
    assert out.count("already done") == len(pipeline.STEPS) - 2 and _steps_run(out) == ["generate", "evaluate"]
    assert [s for s, _ in ran] == ["generate", "evaluate"]  # their recorded configuration read the bound one


@pytest.mark.slow
def test_pipeline_directory_on_gcs(tiny_pipeline, gcs_emulator):
    """D as a gs:// URL (the local GCS emulator): markers read and written through fileio."""
    from musiclm_jax import fileio

    model_dir = f"{gcs_emulator}/pipeline-{uuid.uuid4().hex[:8]}/"
    fileio.copytree(os.path.join(tiny_pipeline[0], "steps"), fileio.join(model_dir, "steps"))
    summary = pipeline.run_pipeline(model_dir=model_dir, **TINY)
    assert summary["model_dir"] == model_dir.rstrip("/")  # never made a local path
    assert fileio.read_json(fileio.join(model_dir, pipeline.SUMMARY_FILE))["wall_s"] == summary["wall_s"]
    assert (
        pipeline.read_marker(model_dir, "evaluate")["config_hash"]
        == pipeline.read_marker(tiny_pipeline[0], "evaluate")["config_hash"]
    )
    assert not os.path.exists("gs:") and not os.path.exists(model_dir)
