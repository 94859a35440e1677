"""Orbax checkpoints: async, keep-last-K, atomic, restorable onto any mesh.

A checkpoint step holds three items, so that parameters can be restored on their own
(fine-tuning from another run):
  params   the model parameters
  state    step, optimiser state and parameter EMA
  data     JSON: the data iterator's position and the run's shapes
Orbax writes each step into a temporary directory and renames it when complete, so a
crash during a save leaves the previous step as the latest valid one.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

from musiclm_jax.training.train_state import TrainState


class CheckpointError(RuntimeError):
    pass


def _state_item(state: TrainState) -> dict:
    return {"step": state.step, "opt_state": state.opt_state, "ema_params": state.ema_params}


class Checkpointer:
    def __init__(self, directory: str, *, save_every: int = 1000, keep: Optional[int] = 3, async_save: bool = True):
        self.directory = os.path.abspath(os.fspath(directory))
        self.save_every = save_every
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                enable_async_checkpointing=async_save,
                cleanup_tmp_directories=True,
                create=True,
            ),
            item_names=("params", "state", "data"),
        )

    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def should_save(self, step: int) -> bool:
        return self.save_every > 0 and step % self.save_every == 0

    def save(self, step: int, state: TrainState, data_state: dict) -> None:
        self._manager.save(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(state.params),
                state=ocp.args.StandardSave(_state_item(state)),
                data=ocp.args.JsonSave(data_state),
            ),
            force=True,
        )

    def restore(self, step: int, abstract_state: TrainState) -> tuple[TrainState, dict]:
        """Restores onto the shardings carried by `abstract_state` (ShapeDtypeStructs), so
        the mesh may differ from the one that saved."""
        out = self._manager.restore(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(abstract_state.params),
                state=ocp.args.StandardRestore(_state_item(abstract_state)),
                data=ocp.args.JsonRestore(),
            ),
        )
        s = out["state"]
        state = TrainState(step=s["step"], params=out["params"], opt_state=s["opt_state"], ema_params=s["ema_params"])
        return state, dict(out["data"] or {})

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def restore_params(path: str, abstract_params: Any) -> tuple[Any, int]:
    """Parameters only, from a model dir (its latest step) or one step's directory."""
    path = os.path.abspath(os.fspath(path))
    directory, step = path, None
    base = os.path.basename(path.rstrip("/"))
    if base.isdigit() and os.path.isdir(os.path.join(path, "params")):
        directory, step = os.path.dirname(path.rstrip("/")), int(base)
    if not os.path.isdir(directory):
        raise CheckpointError(f"no checkpoint directory at {path}")
    manager = ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(read_only=True, create=False),
        item_names=("params", "state", "data"),
    )
    try:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint found in {path}")
        out = manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params)))
        return out["params"], step
    finally:
        manager.close()


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
