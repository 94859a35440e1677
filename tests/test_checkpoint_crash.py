"""A SIGKILL in the middle of a checkpoint save leaves the previous checkpoint the latest one,
restorable, and the run resumable (a new save of the same step succeeds): on a local disk
(orbax's temporary directory, renamed when complete) and in a bucket (gs://, the GCS emulator:
no rename, a commit marker written last)."""

import pathlib
import signal
import subprocess
import sys
import time
import uuid

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cli import env

from musiclm_jax import fileio
from musiclm_jax.training.checkpoints import Checkpointer
from musiclm_jax.training.train_state import TrainState

SAVER = pathlib.Path(__file__).parent / "checkpoint_saver.py"


def _started_step_2(directory: str) -> bool:
    # Local: "2.orbax-checkpoint-tmp-*"; object store: "2" before its commit marker exists.
    return any(name.split(".")[0] == "2" for name in fileio.listdir(directory))


@pytest.mark.parametrize("where, megabytes", [("local", 256), ("gcs", 64)])
def test_sigkill_during_a_save_keeps_the_previous_checkpoint(where, megabytes, tmp_path, request):
    directory = (
        str(tmp_path / "ckpt")
        if where == "local"
        else f"{request.getfixturevalue('gcs_emulator')}/crash-{uuid.uuid4().hex}"
    )
    child_env = env()
    proc = subprocess.Popen(
        [sys.executable, str(SAVER), directory, str(megabytes)], env=child_env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "saved 1"
        deadline = time.time() + 120
        while not _started_step_2(directory) and time.time() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        rest = proc.communicate()[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "saved 2" not in rest, "the save ended before the kill: make it larger"

    n = megabytes * 2**18
    abstract = TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32),
        params={"w": jax.ShapeDtypeStruct((n,), jnp.float32)},
        opt_state={"m": jax.ShapeDtypeStruct((n,), jnp.float32)},
    )
    ckpt = Checkpointer(directory, save_every=1, async_save=False)
    assert ckpt.latest_step() == 1 and ckpt.all_steps() == [1]
    state, data = ckpt.restore(1, abstract)
    assert int(state.step) == 1 and data["batches_consumed"] == 1
    np.testing.assert_array_equal(np.asarray(state.params["w"][:5]), np.arange(5, dtype=np.float32))
    # Resumable: the interrupted step is saved again over whatever the kill left.
    ckpt.save(2, state.replace(step=jnp.asarray(2)), {"batches_consumed": 2})
    ckpt.close()
    assert Checkpointer(directory).latest_step() == 2
