"""tpu_scripts/tpu.py: the exact gcloud / musiclm commands each step would run (dry run), for a
v5e-16 (4 hosts) and a v4-32 (4 hosts) slice, and clear errors for missing arguments."""

import importlib.util
import os
import shlex
import sys

import pytest

_PATH = os.path.join(os.path.dirname(__file__), "..", "tpu_scripts", "tpu.py")
_spec = importlib.util.spec_from_file_location("tpu_scripts_tpu", _PATH)
tpu = sys.modules["tpu_scripts_tpu"] = importlib.util.module_from_spec(_spec)  # dataclasses look it up
_spec.loader.exec_module(tpu)

WHERE = ["--name=mlm", "--zone=us-west4-a", "--project=proj"]


def _run(argv):
    return [shlex.join(c) for c in tpu.commands(argv)]


@pytest.mark.parametrize(
    "acc, gcloud_type, runtime, topology, fsdp",
    [
        ("v5e-16", "v5litepod-16", "v2-alpha-tpuv5-lite", "v5e:4x4", 16),
        ("v4-32", "v4-32", "tpu-ubuntu2204-base", "v4:2x2x4", 16),
    ],
)
def test_commands_for_a_pod_slice(acc, gcloud_type, runtime, topology, fsdp):
    assert _run(["preflight", f"--accelerator={acc}", "--gin_file=models/semantic_stage/paper.gin"]) == [
        f"musiclm aot --gin_file=models/semantic_stage/paper.gin --topology={topology} "
        f"--gin.FSDP_PARALLELISM={fsdp} --gin.MODEL_PARALLELISM=1"
    ]  # the mesh launch trains with
    assert _run(["create", f"--accelerator={acc}", *WHERE]) == [
        f"gcloud compute tpus tpu-vm create mlm --zone=us-west4-a --project=proj --accelerator-type={gcloud_type} "
        f"--version={runtime}"
    ]
    assert _run(["create", f"--accelerator={acc}", "--queued", "--spot", *WHERE]) == [
        f"gcloud compute tpus queued-resources create mlm --node-id=mlm --zone=us-west4-a --project=proj "
        f"--accelerator-type={gcloud_type} --runtime-version={runtime} --spot"
    ]
    wheel = "dist/musiclm_jax-0.1.0-py3-none-any.whl"
    assert _run(["setup", f"--accelerator={acc}", f"--package={wheel}", *WHERE]) == [
        f"gcloud compute tpus tpu-vm scp {wheel} mlm:musiclm_jax-0.1.0-py3-none-any.whl --zone=us-west4-a "
        "--project=proj --worker=all",
        "gcloud compute tpus tpu-vm ssh mlm --zone=us-west4-a --project=proj --worker=all '--command=python3 -m pip "
        'install --upgrade pip && python3 -m pip install "musiclm_jax-0.1.0-py3-none-any.whl[tpu]"\'',
    ]
    [launch] = tpu.commands(
        [
            "launch",
            f"--accelerator={acc}",
            "--gin_file=experiments/x.gin",
            "--gin=TRAIN_STEPS=10",
            "--model_dir=gs://bucket/runs/x",
            *WHERE,
        ]
    )
    assert launch[:9] == [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "ssh",
        "mlm",
        "--zone=us-west4-a",
        "--project=proj",
        "--worker=all",
    ]
    # what every worker's shell runs: musiclm train with the slice's mesh, in the background
    remote = shlex.split(launch[9].removeprefix("--command="))
    assert remote == [
        "nohup",
        "musiclm",
        "train",
        "--gin_file=experiments/x.gin",
        "--gin.TRAIN_STEPS=10",
        '--gin.MODEL_DIR="gs://bucket/runs/x"',
        f"--gin.FSDP_PARALLELISM={fsdp}",
        "--gin.MODEL_PARALLELISM=1",
        ">",
        "musiclm_train.log",
        "2>&1",
        "&",
    ]
    assert _run(["logs", *WHERE]) == [
        "gcloud compute tpus tpu-vm ssh mlm --zone=us-west4-a --project=proj --worker=0 "
        "'--command=tail -n 200 -F musiclm_train.log'"
    ]
    assert _run(["stop", *WHERE])[0].endswith("--worker=all '--command=pkill -f \"musiclm train\" || true'")
    assert _run(["delete", "--queued", *WHERE]) == [
        "gcloud compute tpus queued-resources delete mlm --zone=us-west4-a --project=proj --force --quiet"
    ]


def test_dry_run_prints_and_runs_nothing(capsys, monkeypatch):
    monkeypatch.setattr(tpu.subprocess, "call", lambda cmd: pytest.fail(f"ran {cmd}"))
    assert tpu.main(["delete", *WHERE, "--dry_run"]) == 0
    assert capsys.readouterr().out == "gcloud compute tpus tpu-vm delete mlm --zone=us-west4-a --project=proj --quiet\n"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["create", "--name=mlm"], "needs --zone"),
        (["create", "--accelerator=v9-1", *WHERE], "unknown accelerator"),
        (["setup", *WHERE], "--package"),
        (["launch", *WHERE, "--gin_file=x.gin"], "--model_dir"),
        (["launch", *WHERE, "--gin_file=x.gin", "--model_dir=gs://b/it's"], "quotes"),
        (["preflight"], "--gin_file"),
    ],
)
def test_bad_arguments_are_clear_errors(argv, message, capsys):
    assert tpu.main([*argv, "--dry_run"]) == 2
    assert message in capsys.readouterr().err
