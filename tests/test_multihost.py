"""Two hosts on one machine: two `musiclm train` processes with 4 simulated CPU devices each,
joined by jax.distributed through a localhost coordinator (the TPU_WORKER_HOSTNAMES pod that
tpu_scripts' workers see), against one process with 8 devices at the same global batch.

One module fixture runs everything once (5 processes, then 3); the tests read its results:
  A  2 processes, straight through             (who writes what: an audit hook per process)
  B  1 process, straight through               (the same parameters as A, to float round-off)
  C  2 processes SIGKILLed after a checkpoint  -> D: both restarted, bit-identical to A
                                               -> E: a copy of C restarted as 1 process (reshards)
C, D and E keep their model directory in a bucket (gs://, the GCS emulator on localhost), as a
pod does: both hosts checkpoint into the same objects.
"""

import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from cli import env as cli_env
from emulators import free_port

pytestmark = pytest.mark.slow

WORKER = pathlib.Path(__file__).parent / "multihost_worker.py"
STEPS, PERIOD = 12, 4
TRAIN = [
    "train",
    "--gin_file=experiments/local_tiny.gin",
    f"--gin.TRAIN_STEPS={STEPS}",
    f"--gin.CHECKPOINT_PERIOD={PERIOD}",
    "--gin.EVAL_PERIOD=0",
    "--gin.BATCH_SIZE_PER_DEVICE=1",  # global batch 8 either way
    "--gin.SHUFFLE_TRAIN_EXAMPLES=False",  # host shards interleave: the same 8 examples per step
    "--gin.StageConfig.cond_dropout_rate=0.0",  # per-example randomness would follow batch order
    "--gin.train.log_period=4",
]


class Run:
    def __init__(self, name: str, model_dir, processes: int, logs: pathlib.Path):
        self.name, self.model_dir, self.logs = name, model_dir, logs
        port = free_port()
        self.procs = []
        for i in range(processes):
            env = cli_env(
                XLA_FLAGS=f"--xla_force_host_platform_device_count={8 // processes}",
                MUSICLM_WRITE_LOG=str(self.write_log(i)),
            )
            if processes > 1:
                env.update(
                    TPU_WORKER_HOSTNAMES=",".join(["localhost"] * processes),
                    TPU_WORKER_ID=str(i),
                    MUSICLM_COORDINATOR_PORT=str(port),
                )
            out = open(self.output(i), "a")  # noqa: SIM115 - closed by the child's exit
            cmd = [sys.executable, str(WORKER), *TRAIN, f"--gin.MODEL_DIR='{model_dir}'"]
            self.procs.append(subprocess.Popen(cmd, env=env, cwd=logs, stdout=out, stderr=subprocess.STDOUT))

    def write_log(self, i: int) -> pathlib.Path:
        return self.logs / f"{self.name}-{i}.writes"

    def output(self, i: int) -> pathlib.Path:
        return self.logs / f"{self.name}-{i}.log"

    def wait(self, timeout: float = 400) -> None:
        for i, p in enumerate(self.procs):
            code = p.wait(timeout)
            assert code == 0, f"{self.name} process {i} exited {code}:\n{self.output(i).read_text()[-3000:]}"

    def kill(self) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGKILL)
        for p in self.procs:
            p.wait()

    def steps(self) -> list[int]:
        from musiclm_jax import fileio
        from musiclm_jax.training.checkpoints import committed_steps

        return committed_steps(fileio.join(str(self.model_dir), "checkpoints"))


def _params(model_dir, step=None):
    from musiclm_jax import model_io

    _, params = model_io.load(str(model_dir), step)
    import jax

    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(params)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, gcs_emulator):
    from musiclm_jax import fileio

    tmp = tmp_path_factory.mktemp("multihost")
    bucket = f"{gcs_emulator}/multihost-{tmp.name}"
    started = []

    def start(*args):
        started.append(Run(*args, tmp))
        return started[-1]

    try:
        a = start("A", tmp / "a", 2)
        c = start("C", f"{bucket}/c", 2)
        b = start("B", tmp / "b", 1)
        deadline = time.time() + 400
        while not c.steps() and time.time() < deadline:
            time.sleep(0.1)
        c.kill()
        killed_at = c.steps()
        fileio.copytree(c.model_dir, f"{bucket}/e")  # the killed run, to restart as one process
        a.wait()
        b.wait()
        d = start("D", c.model_dir, 2)
        e = start("E", f"{bucket}/e", 1)
        d.wait()
        e.wait()
    finally:
        for run in started:
            for p in run.procs:
                if p.poll() is None:
                    p.kill()
    return {"A": a, "B": b, "C": c, "D": d, "E": e, "killed_at": killed_at}


def test_two_processes_train_like_one(runs):
    a, b = _params(runs["A"].model_dir), _params(runs["B"].model_dir)
    assert a.keys() == b.keys()
    worst = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
    scale = max(float(np.max(np.abs(b[k]))) for k in b)
    # The same examples and the same updates; only the order of the cross-host sums differs.
    assert worst < 1e-4 * scale, (worst, scale)


def test_sigkill_both_processes_then_resume_bit_identical(runs):
    assert runs["killed_at"] and max(runs["killed_at"]) < STEPS, runs["killed_at"]
    assert "resumed from step" in runs["D"].output(0).read_text()
    a, d = _params(runs["A"].model_dir), _params(runs["D"].model_dir)
    for k in a:
        np.testing.assert_array_equal(a[k], d[k], err_msg=k)


def test_restart_with_another_process_count_reshards(runs):
    out = runs["E"].output(0).read_text()
    assert f"resumed from step {max(runs['killed_at'])}" in out, out[-2000:]
    e, b = _params(runs["E"].model_dir), _params(runs["B"].model_dir)
    worst = max(float(np.max(np.abs(e[k] - b[k]))) for k in e)
    assert worst < 1e-3 * max(float(np.max(np.abs(b[k]))) for k in b), worst


def test_only_process_0_writes_outside_the_checkpoints(runs):
    a = runs["A"]
    root = str(a.model_dir.resolve())

    def written(i):
        lines = a.write_log(i).read_text().splitlines()
        return {line.split("\t", 1)[1] for line in lines}

    inside = [[p for p in written(i) if p == root or p.startswith(root + os.sep)] for i in (0, 1)]
    rel = [sorted(os.path.relpath(p, root) for p in paths) for paths in inside]
    for name in ("config.gin", "model.json", "model-info.txt"):
        assert any(r.startswith(name) for r in rel[0]), (name, rel[0])
        assert not any(r.startswith(name) for r in rel[1]), (name, rel[1])
    outside_checkpoints = [r for r in rel[1] if r != "." and not r.startswith("checkpoints")]
    assert not outside_checkpoints, outside_checkpoints
    assert any(r.startswith("checkpoints") for r in rel[1])  # it does take part in the saves
    assert list((a.model_dir / "train").glob("events*")), "process 0 writes the TensorBoard events"


def test_each_host_reads_a_disjoint_share(monkeypatch):
    """get_dataset on host h of 2 reads examples h, h+2, ...: disjoint, and together all of them."""
    import jax

    from musiclm_jax.data.input_pipeline import DatasetConfig, get_dataset

    cfg = DatasetConfig(
        mixture_or_task_name="permuted_copy_32",
        task_feature_lengths={"mulan_tokens": 12, "semantic_tokens": 24},
        batch_size=4,
        split="validation",
        shuffle=False,
    )

    def examples(count, index):
        monkeypatch.setattr(jax, "process_count", lambda: count)
        monkeypatch.setattr(jax, "process_index", lambda: index)
        out = []
        for batch in get_dataset(cfg, repeat=False).take(4).as_numpy_iterator():
            out += [batch["semantic_tokens"][i].tobytes() for i in range(len(batch["semantic_tokens"]))]
        return out

    host0, host1, single = examples(2, 0), examples(2, 1), examples(1, 0)
    assert len(host0) == len(host1) == 8 and not set(host0) & set(host1)
    assert set(host0) | set(host1) == set(single[:16])
