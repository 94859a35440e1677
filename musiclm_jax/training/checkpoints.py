"""Orbax checkpoints: async, keep-last-K, atomic, restorable onto any mesh.

A checkpoint step holds three items, so that parameters can be restored on their own
(fine-tuning from another run):
  params   the model parameters
  state    step, optimiser state and parameter EMA
  data     JSON: the data iterator's position and the run's shapes
A crash during a save leaves the previous step as the latest valid one: on a local disk orbax
writes each step into a temporary directory and renames it when complete; on an object store
(no rename) it writes a commit marker last, and a step without it is never listed or restored.
Directories may be local paths or URLs (gs://).
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

from musiclm_jax import fileio
from musiclm_jax.training.train_state import TrainState


class CheckpointError(RuntimeError):
    pass


def _state_item(state: TrainState) -> dict:
    return {"step": state.step, "opt_state": state.opt_state, "ema_params": state.ema_params}


class Checkpointer:
    """`exclude`: top-level parameter keys not saved (read from elsewhere: BaseModel.
    frozen_params_source); `restore` returns them as the abstract state's ShapeDtypeStructs."""

    def __init__(
        self,
        directory: str,
        *,
        save_every: int = 1000,
        keep: Optional[int] = 3,
        async_save: bool = True,
        exclude: tuple = (),
    ):
        self.directory = fileio.resolve(directory)
        self.save_every = save_every
        self.exclude = tuple(exclude)
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
                params=ocp.args.StandardSave(self._saved(state.params)),
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
                params=ocp.args.StandardRestore(self._saved(abstract_state.params)),
                state=ocp.args.StandardRestore(_state_item(abstract_state)),
                data=ocp.args.JsonRestore(),
            ),
        )
        s = out["state"]
        params = (
            {**out["params"], **{k: abstract_state.params[k] for k in self.exclude}} if self.exclude else out["params"]
        )
        state = TrainState(step=s["step"], params=params, opt_state=s["opt_state"], ema_params=s["ema_params"])
        return state, dict(out["data"] or {})

    def _saved(self, params):
        return {k: v for k, v in params.items() if k not in self.exclude} if self.exclude else params

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def committed_steps(directory: str) -> list[int]:
    """The complete checkpoint steps in `directory`, by orbax's own rule: on an object store a
    step's folder exists from the first byte written, and only its commit marker says it is
    whole; listing digit-named folders would count a step that a crash cut short."""
    if not fileio.isdir(directory):
        return []
    manager = ocp.CheckpointManager(
        fileio.resolve(directory),
        options=ocp.CheckpointManagerOptions(read_only=True, create=False),
        item_names=("params", "state", "data"),
    )
    try:
        return sorted(manager.all_steps())  # a new manager has just read the directory
    finally:
        manager.close()


def restore_params(path: str, abstract_params: Any) -> tuple[Any, int]:
    """Parameters only, from a model dir (its latest step) or one step's directory."""
    path = fileio.resolve(path)
    directory, step = path, None
    base = fileio.basename(path)
    if base.isdigit() and fileio.isdir(fileio.join(path, "params")):
        directory, step = fileio.dirname(path), int(base)
    if not fileio.isdir(directory):
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
