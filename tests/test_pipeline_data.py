"""`musiclm pipeline --data=PATH --from=D` (pipeline_data.py, run_pipeline's from_dir / reuse): the
steps on a folder of the user's own files (WAV, FLAC and MP3 with .txt / .json caption sidecars,
some without, one corrupt), reusing the session's tiny pipeline three ways at once (the codec,
w2v-BERT and its k-means copied, MuLan and the stages fine-tuned, the MuLan RVQ refitted), a rerun
that resumes, what decides the
data's and the reuse's part of each step's configuration, and collections or reuses that cannot
work stopped with one line before anything trains."""

import json
import os
import shutil

import numpy as np
import pytest
import soundfile

from musiclm_jax import main, pipeline, pipeline_data
from musiclm_jax.data import synthetic

NUM_CLIPS = 64
# Training steps cut to a few: the plumbing is under test here (test_pipeline checks that the
# tiny pipeline learns); each model still trains, evaluates and checkpoints.
FEW_STEPS = {s: ["TRAIN_STEPS = 4"] for s in ("mulan", "semantic_stage", "coarse_stage", "fine_stage")}
REUSE = {"mulan": "finetune", "mulan_rvq": "train"}  # over FROM_DEFAULTS: codec, w2v-BERT, k-means copied


def write_collection(folder, num_clips=NUM_CLIPS, captioned_every=1):
    """Synthetic pieces as a user's files: 22.05 kHz, 2 s, WAV / FLAC / MP3 in two sub-folders;
    captions in <name>.txt or <name>.json (every 10th clip has none; only every
    `captioned_every`-th has one at all), one file that is not audio, one corrupt MP3."""
    captions = {}
    for i in range(num_clips):
        piece = synthetic.render(7, i, sample_rate=22050, duration_s=2.0)
        sub = folder / ("album_a" if i % 2 else "album_b")
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"track_{i:03d}.{('wav', 'flac', 'mp3')[i % 3]}"
        soundfile.write(path, piece.audio, 22050)
        if i % 10 == 9 or i % captioned_every:
            continue
        captions[str(path.relative_to(folder))] = piece.caption
        if i % 4 == 0:
            (sub / f"track_{i:03d}.json").write_text(json.dumps({"caption": piece.caption, "mood": "test"}))
        else:
            (sub / f"track_{i:03d}.txt").write_text(piece.caption)
    (folder / "notes.pdf").write_bytes(b"%PDF-1.4")
    (folder / "album_a" / "broken.mp3").write_bytes(b"ID3" + bytes(200))
    return captions


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    folder = tmp_path_factory.mktemp("my_music")
    return folder, write_collection(folder)


@pytest.fixture(scope="module")
def data_pipeline(collection, tiny_pipeline, tmp_path_factory):
    folder, _ = collection
    model_dir = str(tmp_path_factory.mktemp("own_music"))
    kwargs = dict(
        model_dir=model_dir,
        size="tiny",
        seconds=1.0,
        num_prompts=3,
        data=str(folder),
        validation_fraction=0.25,
        step_bindings=FEW_STEPS,
        from_dir=tiny_pipeline[0],
        reuse=REUSE,
    )
    return model_dir, pipeline.run_pipeline(**kwargs), kwargs


@pytest.mark.slow
def test_every_step_runs_on_the_folder_and_a_rerun_resumes(collection, data_pipeline, tiny_pipeline, capsys):
    folder, captions = collection
    model_dir, summary, kwargs = data_pipeline
    source = tiny_pipeline[0]
    data = json.loads((open(os.path.join(model_dir, pipeline_data.SUMMARY_FILE))).read())
    train, val = data["splits"]["train"], data["splits"]["validation"]
    assert train["clips"] + val["clips"] == NUM_CLIPS  # the corrupt MP3 and the PDF are skipped
    assert sum(data["splits"][s]["skipped"].get("unknown_extension", 0) for s in ("train", "validation")) == 1
    assert sum(sum(data["splits"][s]["skipped"].values()) for s in ("train", "validation")) == 2
    assert train["captioned"] + val["captioned"] == len(captions)
    m = summary["metrics"]
    # the token cache holds the folder's clips, not the synthetic source's 48 + 8
    assert m["precompute"]["train"]["clips"] == train["clips"]
    assert m["precompute"]["validation"]["clips"] == val["clips"]
    # each step as `reuse` said, and its marker says so
    modes = {s: pipeline.read_marker(model_dir, s)["mode"] for s in pipeline.STEPS}
    assert modes["codec"] == f"copied from {source}"
    for s in ("mulan", "semantic_stage", "coarse_stage", "fine_stage"):
        assert modes[s] == f"fine-tuned from {source}"
    assert modes["w2v_bert"] == modes["semantic_kmeans"] == f"copied from {source}"
    assert modes["mulan_rvq"] == modes["precompute"] == "run"
    ckpts = lambda d, name: sorted(os.listdir(os.path.join(d, name, "checkpoints")))  # noqa: E731
    assert ckpts(model_dir, "codec") == ckpts(source, "codec") and ckpts(model_dir, "w2v_bert") == ckpts(
        source, "w2v_bert"
    )
    for name in ("mulan", "semantic_stage", "coarse_stage", "fine_stage"):
        assert ckpts(model_dir, name) == ["4"]  # FEW_STEPS, here
    # fine-tuned MuLan kept the vocabulary its parameters' token ids belong to
    vocab = ("mulan", "text_vocab", "captions.model")
    with open(os.path.join(model_dir, *vocab), "rb") as a, open(os.path.join(source, *vocab), "rb") as b:
        assert a.read() == b.read()
    # the prompts are the validation clips' own captions; the eval compares with those clips
    assert len(summary["prompts"]) == 3
    assert {p["caption"] for p in summary["prompts"]} <= set(captions.values())
    t2m = m["text_to_music"]
    assert {"kad/mulan", "mcc", "mcc_reference"} <= set(t2m) and "kld" not in t2m
    assert m["adherence"] == {}  # real clips have no labels
    for wav in summary["wavs"]:
        assert soundfile.info(wav).duration == pytest.approx(1.0)
    assert os.path.exists(summary["report"])

    capsys.readouterr()
    pipeline.run_pipeline(**kwargs)
    out = capsys.readouterr().out
    assert out.count("already done") == len(pipeline.STEPS) and "train step compiled" not in out


def test_reuse_that_cannot_work_is_refused(tiny_pipeline, tmp_path, capsys):
    source = tiny_pipeline[0]
    with pytest.raises(pipeline.ReuseError, match="semantic_kmeans.*needs reuse\\['w2v_bert'\\] = 'copy'"):
        pipeline.run_pipeline(model_dir=str(tmp_path), size="tiny", from_dir=source, reuse={"w2v_bert": "train"})
    with pytest.raises(pipeline.ReuseError, match="one of"):
        pipeline.run_pipeline(model_dir=str(tmp_path), size="tiny", from_dir=source, reuse={"mulan_rvq": "finetune"})
    with pytest.raises(pipeline.ReuseError, match="needs from_dir"):
        pipeline.run_pipeline(model_dir=str(tmp_path), size="tiny", reuse={"codec": "copy"})
    with pytest.raises(pipeline.ReuseError, match="has not finished there"):
        pipeline.run_pipeline(model_dir=str(tmp_path / "a"), size="tiny", from_dir=str(tmp_path / "empty"))
    capsys.readouterr()
    assert main.main(["pipeline", "--size=tiny", f"--model_dir={tmp_path / 'b'}", f"--from={tmp_path / 'nope'}"]) == 2
    assert "has not finished there" in capsys.readouterr().err


def test_the_data_line_follows_the_collection_not_its_path(collection, tmp_path):
    folder, _ = collection
    moved = tmp_path / "moved"
    shutil.copytree(folder, moved)
    spec = pipeline_data.resolve(str(folder))
    assert spec.kind == "folder"
    assert pipeline_data.fingerprint(spec) == pipeline_data.fingerprint(pipeline_data.resolve(str(moved)))
    sidecar = next(moved.rglob("*.txt"))
    sidecar.write_text(sidecar.read_text() + " with strings")
    edited = pipeline_data.fingerprint(pipeline_data.resolve(str(moved)))
    assert edited != pipeline_data.fingerprint(spec)

    def configs(path, fp):
        options = dict(prompts=[], data_fingerprint=fp, seconds=1.0, seed=0)
        ctx = pipeline._Context("/x", "tiny", {}, options, pipeline_data.resolve(path))
        return {
            s: pipeline.step_config(ctx, s, {d: "h" for d in pipeline.STEPS}) for s in ("codec", "mulan", "fine_stage")
        }

    same, other = configs(str(folder), "a"), configs(str(moved), "a")
    assert same == other  # moved: the path is DATA in every line
    assert any(line.startswith("data: folder sha256:a") for line in same["codec"])
    assert not any(line.startswith("data:") for line in same["fine_stage"])  # reads the token cache only
    assert any("FolderSource.folder = 'DATA'" in line for line in same["mulan"])
    assert any("require_caption = True" in line for line in same["mulan"])
    assert configs(str(folder), "b")["codec"] != same["codec"]


def test_collections_that_cannot_feed_a_step_stop_before_any_step(collection, tmp_path, capsys):
    folder, _ = collection
    d = tmp_path / "run"
    # 64 clips, 10% to validation: fewer than the tiny stages' eval batch of 8
    with pytest.raises(pipeline_data.DataError, match="validation_fraction"):
        pipeline.run_pipeline(model_dir=str(d), size="tiny", data=str(folder))
    few = tmp_path / "few_captions"
    write_collection(few, num_clips=24, captioned_every=8)
    with pytest.raises(pipeline_data.DataError, match="MuLan needs at least 16"):
        pipeline.run_pipeline(model_dir=str(d), size="tiny", data=str(few), validation_fraction=0.5)
    with pytest.raises(pipeline_data.DataError, match="no such folder"):
        pipeline_data.resolve(str(tmp_path / "nowhere"))
    wav = next(folder.rglob("*.wav"))
    with pytest.raises(pipeline_data.DataError, match="JSONL manifest"):
        pipeline_data.resolve(str(wav))
    assert not [p for p in d.iterdir() if p.name not in ("steps", pipeline_data.SUMMARY_FILE)]
    assert not os.listdir(d / "steps")  # nothing ran
    capsys.readouterr()
    code = main.main(["pipeline", "--size=tiny", f"--model_dir={d}", f"--data={folder}"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("musiclm:")]
    assert code == 1 and len(errors) == 1 and "validation_fraction" in errors[0]


def test_a_manifest_names_its_splits(tmp_path):
    rng = np.random.default_rng(0)
    lines = []
    for i in range(6):
        soundfile.write(tmp_path / f"c{i}.wav", rng.uniform(-0.3, 0.3, 8000).astype(np.float32), 16000)
        lines.append(json.dumps({"path": f"c{i}.wav", "caption": f"clip {i}", "split": "test" if i < 2 else "train"}))
    manifest = tmp_path / "music.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    spec = pipeline_data.resolve(str(manifest))
    summary = pipeline_data.scan(spec, str(tmp_path), progress=False)
    assert (summary["splits"]["train"]["clips"], summary["splits"]["validation"]["clips"]) == (4, 2)
    assert summary["splits"]["train"]["shortest_seconds"] == pytest.approx(0.5)
    notes = pipeline_data.check(summary, {"codec": {"crop_seconds": 1.0}}, min_captioned=4)
    assert len(notes) == 2 and "zero-padded" in notes[0]
    # a manifest whose clips are all 'train': an empty validation split, said in one line
    manifest.write_text("\n".join(line.replace('"test"', '"train"') for line in lines) + "\n")
    with pytest.raises(pipeline_data.DataError, match="validation"):
        pipeline_data.scan(pipeline_data.resolve(str(manifest)), str(tmp_path), progress=False)


def test_the_cli_refuses_a_data_gin_and_a_size_it_would_not_honour(tmp_path, capsys):
    """A data gin's task is read by no pipeline step (the pipeline takes --data), and --size layers
    under the user's gin files: a file that sets another size is refused, not silently obeyed."""
    d = str(tmp_path / "run")
    manifest = ["--gin_file=data/manifest.gin", "--gin.MANIFEST='/data/music.jsonl'"]
    assert main.main(["pipeline", "--size=tiny", f"--model_dir={d}", *manifest]) == 2
    assert "--data=FOLDER or --data=MANIFEST.jsonl" in capsys.readouterr().err
    assert main.main(["pipeline", "--size=tiny", f"--model_dir={d}", "--gin_file=pipeline/small.gin"]) == 2
    assert "--size=tiny, but a --gin_file binds run_pipeline.size = 'small'" in capsys.readouterr().err
    assert not os.path.exists(d)


def test_copied_steps_bring_their_own_outputs_only(tiny_pipeline, tmp_path):
    source = tiny_pipeline[0]
    ctx = pipeline._Context(str(tmp_path), "tiny", {}, {}, None, source, pipeline.FROM_DEFAULTS)
    w2v = pipeline._copy(ctx, "w2v_bert")
    assert not (tmp_path / "w2v_bert" / "kmeans").exists()  # the k-means step's to copy
    assert w2v["model_dir"] == str(tmp_path / "w2v_bert")
    pipeline._copy(ctx, "semantic_kmeans")
    assert (tmp_path / "w2v_bert" / "kmeans" / "kmeans.npz").exists()
    assert sorted(os.listdir(tmp_path / "w2v_bert" / "checkpoints")) == sorted(
        os.listdir(os.path.join(source, "w2v_bert", "checkpoints"))
    )


def test_plan_says_what_a_run_would_do_and_runs_nothing(tiny_pipeline, collection, tmp_path):
    """`--plan` on the session's finished tiny pipeline: every step skipped; with a changed
    binding, that step and what reads it rerun; on a fresh directory with --data and --from, the
    reuse modes. No marker or checkpoint is written."""
    source, _ = tiny_pipeline
    same = dict(size="tiny", seconds=1.0, num_prompts=2, train_captions_checked=64, plan=True)
    markers = {s: os.path.getmtime(pipeline.marker_path(source, s)) for s in pipeline.STEPS}
    plan = pipeline.run_pipeline(model_dir=source, **same)["plan"]
    assert [r["step"] for r in plan] == list(pipeline.STEPS) and {r["action"] for r in plan} == {"skip"}
    coarse = next(r for r in plan if r["step"] == "coarse_stage")
    assert coarse["model"] == "StageModel" and coarse["parameters"] > 0 and coarse["train_steps"] == 60
    changed = pipeline.run_pipeline(model_dir=source, step_bindings={"coarse_stage": ["TRAIN_STEPS = 61"]}, **same)
    actions = {r["step"]: r["action"] for r in changed["plan"]}
    assert {s for s, a in actions.items() if a == "rerun"} == {"coarse_stage", "generate", "evaluate"}
    assert markers == {s: os.path.getmtime(pipeline.marker_path(source, s)) for s in pipeline.STEPS}
    folder, _ = collection
    fresh = pipeline.run_pipeline(
        model_dir=str(tmp_path / "mine"), data=str(folder), validation_fraction=0.25, from_dir=source, **same
    )
    actions = {r["step"]: r["action"] for r in fresh["plan"]}
    assert actions["codec"] == actions["mulan_rvq"] == "copy" and actions["fine_stage"] == "fine-tune"
    assert actions["precompute"] == actions["generate"] == "run"
    assert os.listdir(tmp_path / "mine" / "steps") == []
