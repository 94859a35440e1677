"""The `musiclm` CLI: bad configuration exits 2 with one line; train survives SIGKILL; aot."""

import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from cli import env, musiclm

TINY = "--gin_file=experiments/local_tiny.gin"


@pytest.mark.parametrize(
    "args, culprit",
    [
        (["--gin.StageConfig.num_layerz=3"], "num_layerz"),
        (["--gin.NoSuchThing.x=1"], "NoSuchThing"),
        (["--gin.TRAIN_STEPS='many'"], "train_steps"),
        (["--gin.OptimizerConfig.learning_rate='fast'"], "learning_rate"),
        (["--gin.StageConfig.cond_dropout_rate=1.5"], "cond_dropout_rate"),
        # a macro that no gin file reads: refused, naming the one meant (not 300 default steps)
        (["--gin.TRAIN_STPES=2"], "did you mean TRAIN_STEPS"),
    ],
)
def test_bad_binding_exits_2_with_one_line(tmp_path, args, culprit):
    r = musiclm("train", TINY, f"--gin.MODEL_DIR='{tmp_path}'", *args)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and culprit in lines[0], r.stderr[-2000:]


def test_missing_required_macro_and_missing_file(tmp_path):
    r = musiclm("train", TINY)  # MODEL_DIR is %gin.REQUIRED
    assert r.returncode == 2 and ("MODEL_DIR" in r.stderr or "model_dir" in r.stderr), r.stderr[-2000:]
    assert len(r.stderr.strip().splitlines()) == 1
    r = musiclm("train", "--gin_file=experiments/no_such.gin")
    assert r.returncode == 2 and "no_such.gin" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def _final_params(model_dir):
    from musiclm_jax.training import checkpoints

    ckpt = checkpoints.Checkpointer(os.path.join(model_dir, "checkpoints"))
    step = ckpt.latest_step()
    import orbax.checkpoint as ocp

    mgr = ocp.CheckpointManager(os.path.join(model_dir, "checkpoints"), item_names=("params", "state", "data"))
    params = mgr.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore()))["params"]
    return step, jax.tree.map(np.asarray, params)


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    # Batch 8 (local_tiny's 32 is for learning the copy; bit-exact resume does not need it) and
    # 40 steps: each process is mostly start-up and compilation, so steps are kept few and cheap.
    # Killing at the first checkpoint (10) still leaves 30 steps (~3 s on one core) before the
    # run would end; the directory is polled every 50 ms.
    steps = [
        "--gin.TRAIN_STEPS=40",
        "--gin.CHECKPOINT_PERIOD=10",
        "--gin.EVAL_PERIOD=0",
        "--gin.BATCH_SIZE_PER_DEVICE=8",
    ]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    procs = []

    def start(*args, output=subprocess.PIPE):
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "musiclm_jax.main", *args],
                env=env(),
                cwd="/",
                text=True,
                stdout=output,
                stderr=output,
            )
        )
        return procs[-1]

    try:
        # The uninterrupted run and the run to be killed are independent, so they run side by side
        # (each is mostly single-threaded start-up and compilation: two cores halve the wait);
        # later the resumed run trains while `musiclm eval` reads the uninterrupted run.
        proc = start("train", TINY, f"--gin.MODEL_DIR='{killed}'", *steps, output=subprocess.DEVNULL)
        straight_proc = start("train", TINY, f"--gin.MODEL_DIR='{straight}'", *steps)
        ckpt_dir = killed / "checkpoints"
        deadline = time.time() + 240
        while time.time() < deadline:
            done = [d for d in (os.listdir(ckpt_dir) if ckpt_dir.exists() else []) if d.isdigit()]
            if any(int(d) >= 10 for d in done):
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        steps_at_kill = sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())
        assert steps_at_kill and max(steps_at_kill) < 40, steps_at_kill
        resume_proc = start("train", TINY, f"--gin.MODEL_DIR='{killed}'", *steps)

        _, err = straight_proc.communicate(timeout=300)
        assert straight_proc.returncode == 0, err[-3000:]
        assert (straight / "config.gin").exists() and "StageConfig.num_layers" in (straight / "config.gin").read_text()
        info = (straight / "model-info.txt").read_text()
        assert "parameters:" in info and "logical=('vocab', 'embed')" in info

        # `musiclm eval` restores the final checkpoint and writes its metrics.
        r = musiclm(
            "eval",
            "--gin_file=runs/eval.gin",
            "--gin_file=models/semantic_stage/tiny.gin",
            "--gin.MIXTURE_OR_TASK_NAME='permuted_copy_32'",
            f"--gin.MODEL_DIR='{straight}'",
            "--gin.EVAL_STEPS=2",
        )
        assert r.returncode == 0, r.stderr[-3000:]
        import json

        report = json.loads((straight / "eval-40.json").read_text())
        assert report["step"] == 40 and report["metrics"]["num_tokens"] == 2 * 8 * 24
        assert 0.0 <= report["metrics"]["accuracy"] <= 1.0 and np.isfinite(report["metrics"]["loss"])

        out, err = resume_proc.communicate(timeout=300)
        assert resume_proc.returncode == 0, err[-3000:]
        assert "resumed from step" in out
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    step_a, a = _final_params(straight)
    step_b, b = _final_params(killed)
    assert step_a == step_b == 40
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_aot_compiles_tiny_for_tpu_and_reports_memory():
    pytest.importorskip("libtpu")
    # v4 compiles for one device per chip (megacore), as a v4 VM runs: 4 devices on v4:2x2x1, not 8 cores.
    r = musiclm("aot", "--gin_file=models/semantic_stage/tiny.gin", "--topology=v4:2x2x1")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "(4 x TPU v4)" in r.stdout and "temporaries / chip" in r.stdout and "FLOPs / step / chip" in r.stdout
    # A batch that cannot fit in 16 GiB of HBM: non-zero exit and a clear message.
    r = musiclm(
        "aot",
        "--gin_file=models/semantic_stage/tiny.gin",
        "--topology=v5e:2x2",
        "--gin.BATCH_SIZE_PER_DEVICE=65536",
        "--gin.TASK_FEATURE_LENGTHS={'mulan_tokens': 12, 'semantic_tokens': 1024}",
    )
    assert r.returncode == 3 and "DoesNotFit" in r.stderr and "TPU v5 lite" in r.stderr, (
        r.stdout[-2000:],
        r.stderr[-2000:],
    )


def test_gin_names_its_renamed_modules_and_unread_macros(tmp_path):
    """In process (no CLI start-up): an old module name in a user's gin file is named with its
    replacement; a macro bound on the command line that no gin file reads is refused."""
    import gin
    from musiclm_jax import gin_utils

    old = tmp_path / "old.gin"
    old.write_text("import musiclm_jax.models.gin_registry\n")
    try:
        with pytest.raises(gin_utils.ConfigError, match="is now musiclm_jax.gin_registry"):
            gin_utils.parse([str(old)], [])
        gin.clear_config()
        ok = tmp_path / "ok.gin"
        ok.write_text("import musiclm_jax.gin_registry\nSTEPS = 3\nOptimizerConfig.warmup_steps = %STEPS\n")
        gin_utils.parse([str(ok)], ["STEPS = 4"])  # read: fine
        gin.clear_config()
        with pytest.raises(gin_utils.ConfigError, match="STEPZ.*did you mean STEPS"):
            gin_utils.parse([str(ok)], ["STEPZ = 4"])
        gin.clear_config()
        with pytest.raises(gin_utils.ConfigError, match="now generate.model_dirs .* MULAN_DIR"):
            gin_utils.parse(["runs/generate.gin"], ["generate.mulan_dir = '/runs/mulan'"])
    finally:
        gin.clear_config()


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize(
    "mode, flag, takers",
    [
        ("train", "--prompt=a calm piano", "generate"),
        ("generate", "--size=tiny", "pipeline"),
        ("serve", "--plan", "pipeline, train"),
        ("export", "--host=0.0.0.0", "serve"),
        ("pipeline", "--topology=v4:2x2x2", "aot"),
        ("aot", "--model_dir=/tmp/x", "pipeline, export, serve"),
    ],
)
def test_a_flag_of_another_mode_is_refused_in_one_line(mode, flag, takers, capsys):
    from musiclm_jax import main

    assert main.main([mode, flag, "--gin_file=runs/generate.gin"]) == 2
    line = _one_line(capsys)
    assert f"--{flag[2:].partition('=')[0]} is a flag of {takers}, not of {mode}" in line


def test_each_mode_helps_with_its_own_flags_only(capsys):
    import re

    from musiclm_jax import main

    for mode in main.MODES:
        with pytest.raises(SystemExit) as e:
            main._parser(mode).parse_args(["--help"])
        assert e.value.code == 0
        shown = set(re.findall(r"--([a-z_]+)", capsys.readouterr().out)) - {"help", "gin"}
        assert shown == set(main.flags_of(mode)), (mode, shown ^ set(main.flags_of(mode)))
    assert main.main(["generate", "--help"]) == 0 and "--prompt" in capsys.readouterr().out
    assert main.main(["trian"]) == 2 and "did you mean train?" in _one_line(capsys)


def test_size_given_twice_and_gin_files_for_another_mode_are_refused(tmp_path, capsys):
    """Every setting applies or is refused: a second --size, a gin file none of whose bindings the
    mode reads, a --gin binding the mode never reads, --model_dir beside --gin_file."""
    from musiclm_jax import main

    d = f"--model_dir={tmp_path / 'run'}"
    assert main.main(["pipeline", "--size=tiny", "--size=small", d]) == 2
    assert "--size given twice (tiny and small)" in _one_line(capsys)
    assert main.main(["pipeline", "--size=tiny", d, "--gin_file=experiments/mulan_tiny.gin"]) == 2
    assert "experiments/mulan_tiny.gin: `musiclm pipeline` reads none of its bindings" in _one_line(capsys)
    # a data gin whose task the experiment does not read (it trains on its own task): refused
    mulan = ["train", "--gin_file=experiments/mulan_tiny.gin", f"--gin.MODEL_DIR='{tmp_path / 'm'}'"]
    assert main.main([*mulan, "--gin_file=data/manifest.gin", "--gin.MANIFEST='/data/music.jsonl'"]) == 2
    assert "data/manifest.gin: `musiclm train` reads none of its bindings" in _one_line(capsys)
    assert main.main([*mulan, "--gin.manifest/register_audio_task.crop_seconds=3"]) == 2  # another scope's
    assert "`musiclm train` never reads it" in _one_line(capsys)
    generate = ["generate", "--gin_file=runs/generate.gin", "--prompt=x", "--gin.MULAN_DIR='/x'"]
    assert main.main([*generate, "--gin_file=models/mulan/tiny.gin"]) == 2
    assert "models/mulan/tiny.gin: `musiclm generate` reads none of its bindings" in _one_line(capsys)
    serve = ["serve", "--gin_file=runs/serve.gin", "--gin.MULAN_DIR='/x'"]
    assert main.main([*serve, "--gin.generate.seed=4"]) == 2  # generate's, not serve's
    assert "--gin.generate.seed: `musiclm serve` never reads it" in _one_line(capsys)
    assert main.main([*serve, "--gin.NUM_CANDIDATES=4"]) == 2  # read by generate.gin only
    assert "NUM_CANDIDATES" in _one_line(capsys)
    assert main.main(["serve", d, "--gin_file=runs/serve.gin"]) == 2
    assert "give --model_dir or --gin_file, not both" in _one_line(capsys)
    assert main.main(["export", d, "--output_dir=/tmp/o", "--gin.EXPORT_DTYPE='bfloat16'"]) == 2
    assert "give --model_dir or --gin.EXPORT_DTYPE, not both" in _one_line(capsys)
    assert not os.path.exists(tmp_path / "run")


def test_train_plan_times_a_step_and_writes_no_checkpoint(tmp_path, capsys):
    from musiclm_jax import main

    model_dir = tmp_path / "stage"
    assert main.main(["train", TINY, f"--gin.MODEL_DIR='{model_dir}'", "--plan"]) == 0
    out = capsys.readouterr().out
    for line in ("model                      StageModel", "start                      train from scratch", "mesh"):
        assert line in out, out
    seconds = float(re.search(r"seconds_per_step\s+([0-9.e+-]+)", out).group(1))
    assert 0 < seconds < 60
    assert not (model_dir / "checkpoints").exists() and not (model_dir / "run-summary.json").exists()
