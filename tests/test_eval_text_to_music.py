"""The text-to-music eval task: the metrics' wiring (a perfect generator scores the references'
own numbers; the same clips paired with the wrong captions keep FAD and lose KLD), and
`musiclm eval --gin_file=runs/eval_text_to_music.gin` on a tiny random MusicLM, whose HTML report
renders in headless Chromium with every plot and audio player loaded."""

import glob
import json
import os
import re
import subprocess
import tempfile

import numpy as np
import pytest
import soundfile
from browser import FLAGS, chromium
from model_dirs import CODEC_SR

from musiclm_jax import main
from musiclm_jax.evaluation import eval_sets, metrics, text_to_music
from musiclm_jax.evaluation.embedders import MuLanAudioEmbedder

SECONDS = 1.0
CLASSIFIER = {"steps": 30, "num_examples": 16, "seconds": 1.0}


def render_in_chromium(page: str) -> dict:
    """The <body> data attributes of `page` after headless Chromium loaded it (the report's
    script counts the plots and audio players the browser could load)."""
    with tempfile.TemporaryDirectory() as profile:
        out = subprocess.run(
            [
                chromium(),
                *FLAGS,
                f"--user-data-dir={profile}",
                "--virtual-time-budget=15000",
                "--dump-dom",
                f"file://{page}",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    body = re.search(r"<body([^>]*)>", out.stdout)
    assert body, f"Chromium rendered no page: {out.stderr[-2000:]}"
    return dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body.group(1)))


@pytest.fixture(scope="module")
def items():
    return eval_sets.synthetic_eval_set(4, SECONDS, sample_rate=CODEC_SR)


def test_a_perfect_generator_scores_the_references_own_numbers(tmp_path, items, musiclm_model_dirs):
    from musiclm_jax.tokenizers.acoustic import AcousticTokenizer
    from musiclm_jax.tokenizers.mulan import MuLanEmbedder

    mulan = MuLanEmbedder.from_model_dir(musiclm_model_dirs["mulan_dir"])
    common = dict(
        mulan=mulan,
        embedders={"mulan": MuLanAudioEmbedder(mulan)},
        generated_sample_rate=CODEC_SR,
        classifier=text_to_music.SyntheticAttributeClassifier(None, **CLASSIFIER),
        num_report_samples=1,
    )
    references = np.stack([i.reference for i in items])
    codec = AcousticTokenizer.from_model_dir(musiclm_model_dirs["soundstream_dir"])
    same = text_to_music.generate_and_score(str(tmp_path / "same"), items, generated=references, codec=codec, **common)
    # 4 clips: FAD and FAD-inf are not numbers ("too few clips", why); KAD is. Of a set with
    # itself the unbiased KAD is -2 (1 - mean off-diagonal kernel) / n: at most 0
    distances = same["distances"]["mulan"]
    assert distances["fad"] is None and distances["fad_inf"] is None and distances["n_generated"] == 4
    assert distances["too_few_clips"]["fad"].startswith(
        "too few clips"
    ) and "fad/mulan" not in text_to_music.scalar_metrics(same)
    assert distances["kad"] <= 0 and text_to_music.scalar_metrics(same)["kad/mulan"] == distances["kad"]
    assert same["kld"]["mean"] == pytest.approx(0.0, abs=1e-6)
    assert same["mcc"] == pytest.approx(same["mcc_reference"])
    assert same["adherence"] == same["adherence_reference"]
    assert {"register", "drums"} <= set(same["adherence"])
    for a in same["adherence"].values():  # each figure with its binomial test; 4 captions prove nothing
        assert a["p"] == pytest.approx(metrics.binomial_p(a["successes"], a["n"], a["null_chance"]))
        assert a["above_chance"] is (a["p"] < metrics.SIGNIFICANCE_LEVEL) and not a["above_chance"]
    codec_kad = same["distances_codec"]["mulan"]["kad"]
    assert codec_kad > distances["kad"] and same["codec"]["bitrate_kbps"] > 0  # the codec is lossy
    with open(tmp_path / "same" / text_to_music.REPORT_FILE) as f:
        page = f.read()
    assert "too few clips" in page and "binomial p" in page
    # The same clips, each paired with another caption: the set (FAD) is unchanged, the pairs (KLD) are not.
    swapped = text_to_music.generate_and_score(
        str(tmp_path / "swapped"), items, generated=references[[1, 2, 3, 0]], **common
    )
    assert swapped["distances"]["mulan"]["kad"] == pytest.approx(distances["kad"], abs=1e-6)
    assert swapped["kld"]["mean"] > 0.05
    with pytest.raises(ValueError, match="at least 2"):
        text_to_music.generate_and_score(str(tmp_path / "one"), items[:1], generated=references[:1], **common)


@pytest.mark.slow
def test_eval_cli_writes_results_tensorboard_and_a_report_that_renders(tmp_path, musiclm_model_dirs):
    out = tmp_path / "eval"
    dirs = [f"--gin.{k.upper()}='{v}'" for k, v in musiclm_model_dirs.items()]
    flags = [
        "eval",
        "--gin_file=runs/eval_text_to_music.gin",
        f"--gin.EVAL_DIR='{out}'",
        *dirs,
        "--gin.NUM_EVAL_ITEMS=3",
        f"--gin.EVAL_SECONDS={SECONDS}",
        "--gin.EVAL_BATCH_SIZE=3",
        "--gin.NUM_REPORT_SAMPLES=2",
        f"--gin.KLD_CLASSIFIER_KWARGS={CLASSIFIER}",
    ]
    assert main.main(flags) == 0
    with open(out / text_to_music.RESULTS_FILE) as f:
        results = json.load(f)
    assert results["num_items"] == 3 and results["task"] == "synthetic"
    assert set(results["distances"]) == {"mulan"} and np.isfinite(results["distances"]["mulan"]["kad"])
    assert results["distances"]["mulan"]["fad"] is None and "fad" in results["distances"]["mulan"]["too_few_clips"]
    assert all("p" in a and "n" in a for a in results["adherence"].values())
    assert results["kld"]["mean"] >= 0 and -1 <= results["mcc"] <= 1
    assert {"register", "drums"} <= set(results["adherence"]) and results["generation"]["realtime_factor"] > 0
    for row in results["items"]:
        info = soundfile.info(str(out / row["generated_wav"]))
        assert info.frames == int(SECONDS * info.samplerate)
    assert glob.glob(str(out / "tensorboard" / "events.out.tfevents.*"))
    assert os.path.exists(out / "attribute_classifier" / "config.json")  # trained once, reused next time
    page = str(out / text_to_music.REPORT_FILE)
    with open(page) as f:
        assert f.read().count("<audio") == 4  # two samples: generated and reference each
    loaded = render_in_chromium(page)
    assert loaded["audio-loaded"] == loaded["audio-total"] == "4"
    assert loaded["images-loaded"] == loaded["images-total"] and int(loaded["images-total"]) >= 5


def test_eval_refuses_a_bad_eval_set_before_loading_anything(tmp_path, musiclm_model_dirs, capsys):
    dirs = [f"--gin.{k.upper()}='{v}'" for k, v in musiclm_model_dirs.items()]
    flags = ["eval", "--gin_file=runs/eval_text_to_music.gin", f"--gin.EVAL_DIR='{tmp_path / 'eval'}'", *dirs]
    assert main.main([*flags, "--gin.NUM_EVAL_ITEMS=1"]) == 2
    assert "num_items >= 2" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "eval")


def test_prompts_are_held_out_and_state_register_and_drums():
    prompts = eval_sets.held_out_prompts(12, train_examples=500)
    assert len({p["caption"] for p in prompts}) == 12
    assert {(p["labels"]["register"], p["labels"]["drums"]) for p in prompts} == {
        (r, d) for r in ("low", "mid", "high") for d in (True, False)
    }
    for p in prompts:
        assert {"register", "drums"} <= set(p["mentioned"])
    a = eval_sets.adherence(prompts, [p["labels"] for p in prompts])  # a perfect generator
    assert a["register"]["accuracy"] == 1.0 and a["register"]["shuffled_chance"] == pytest.approx(1 / 3)
    assert a["drums"]["above_chance"] and a["drums"]["p"] == pytest.approx(0.5**12)  # 12 of 12 at chance 1/2


def test_task_eval_set_reads_a_captioned_audio_task(tmp_path):
    """Any captioned raw-audio task (MusicCaps in practice) gives eval items: captions kept,
    clips cut or zero-padded to the eval length, uncaptioned clips skipped."""
    from musiclm_jax.audio.io import write_wav
    from musiclm_jax.data import audio_tasks
    from musiclm_jax.data.sources import ManifestSource

    sr, lines = 16000, []
    for i, (seconds, caption) in enumerate(
        [(0.5, "a short bell"), (2.0, "a long organ chord"), (1.0, ""), (1.5, "soft strings")]
    ):
        write_wav(tmp_path / f"{i}.wav", 0.1 * np.sin(np.arange(int(seconds * sr)) * 0.05), sr)
        lines.append(json.dumps({"path": f"{i}.wav", "caption": caption, "split": "validation"}))
    (tmp_path / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    name = audio_tasks.register_audio_task(
        "test_eval_captions", ManifestSource(tmp_path / "manifest.jsonl", sample_rate=sr)
    )
    items = eval_sets.task_eval_set(name, "validation", 3, 1.0)  # the rate is the source's
    assert [i.caption for i in items] == ["a short bell", "a long organ chord", "soft strings"]
    assert all(len(i.reference) == sr and i.sample_rate == sr and not i.labels for i in items)
    assert np.all(items[0].reference[sr // 2 + 1 :] == 0) and np.any(items[1].reference[-100:] != 0)
