"""Checkpoint save and restore time on local disk against a bucket (gs:// served by the GCS
emulator on localhost: the same client code as real GCS, without the network), interleaved.

    python bench/bench_storage.py [--repeats 3] [--megabytes 16 128]

Each case saves a train state of that many MB of float32 parameters plus as much optimiser
state (musiclm_jax.training.checkpoints.Checkpointer, synchronous) and restores it onto one
device. The emulator is a single-threaded Python HTTP server, so its numbers are the cost of the
object-store protocol (many small requests, commit markers) rather than of GCS's bandwidth.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from emulators import start_gcs_emulator  # noqa: E402
from machine import machine, table  # noqa: E402

from musiclm_jax.training.checkpoints import Checkpointer  # noqa: E402
from musiclm_jax.training.train_state import TrainState  # noqa: E402


def save_and_restore(directory: str, megabytes: int) -> tuple[float, float]:
    n = megabytes * 2**18
    w = jnp.arange(n, dtype=jnp.float32)
    state = TrainState(step=jnp.asarray(1), params={"w": w}, opt_state={"m": w + 1})
    ckpt = Checkpointer(directory, async_save=False)
    t = time.perf_counter()
    ckpt.save(1, state, {"batches_consumed": 1})
    ckpt.wait()
    save = time.perf_counter() - t
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    t = time.perf_counter()
    restored, _ = ckpt.restore(1, abstract)
    jax.block_until_ready(restored)
    restore = time.perf_counter() - t
    ckpt.close()
    np.testing.assert_array_equal(np.asarray(restored.params["w"]), np.asarray(w))
    return save, restore


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--megabytes", type=int, nargs="+", default=[16, 128])
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as work:
        server = start_gcs_emulator(os.path.join(work, "gcs"), bucket="bench")
        os.environ.update(server.env)
        try:
            rows = []
            for mb in args.megabytes:
                times = {"local": [], "gcs": []}
                for _ in range(args.repeats):
                    for where in times:
                        d = (
                            os.path.join(work, uuid.uuid4().hex)
                            if where == "local"
                            else f"gs://bench/{uuid.uuid4().hex}"
                        )
                        times[where].append(save_and_restore(d, mb))
                med = {k: np.median(np.asarray(v), axis=0) for k, v in times.items()}
                rows.append(
                    {
                        "state": f"{2 * mb} MB",
                        "save local (s)": f"{med['local'][0]:.2f}",
                        "save gs:// emulator (s)": f"{med['gcs'][0]:.2f}",
                        "save ratio": f"{med['gcs'][0] / med['local'][0]:.1f}x",
                        "restore local (s)": f"{med['local'][1]:.2f}",
                        "restore gs:// emulator (s)": f"{med['gcs'][1]:.2f}",
                        "restore ratio": f"{med['gcs'][1] / med['local'][1]:.1f}x",
                    }
                )
                print(rows[-1], flush=True)
        finally:
            server.stop()
    print(f"\nmachine: {machine()}")
    print(f"config: Checkpointer (orbax, OCDBT), synchronous save, median of {args.repeats}, interleaved\n")
    print(table(rows))


if __name__ == "__main__":
    main()
