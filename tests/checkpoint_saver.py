"""Saves a large dummy train state as checkpoint 1, says so, then starts checkpoint 2 (slow to
write), for a test that SIGKILLs it in the middle of that save. argv: directory, megabytes."""

import sys

import jax.numpy as jnp
import numpy as np

from musiclm_jax.training.checkpoints import Checkpointer
from musiclm_jax.training.train_state import TrainState

directory, megabytes = sys.argv[1], int(sys.argv[2])
w = jnp.asarray(np.arange(megabytes * 2**18, dtype=np.float32))
ckpt = Checkpointer(directory, save_every=1, async_save=False)
ckpt.save(1, TrainState(step=jnp.asarray(1), params={"w": w}, opt_state={"m": w}), {"batches_consumed": 1})
print("saved 1", flush=True)
ckpt.save(2, TrainState(step=jnp.asarray(2), params={"w": w + 1}, opt_state={"m": w}), {"batches_consumed": 2})
print("saved 2", flush=True)
