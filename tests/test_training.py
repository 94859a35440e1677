"""Trainer: sharded steps agree with one device, checkpoints restore on any mesh, NaN stops; the
loop's actions (NaN stop, periodic eval, eval media and warnings, a caller's own)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from musiclm_jax.data import token_tasks
from musiclm_jax.data.input_pipeline import DatasetConfig
from musiclm_jax.models.base import BaseModel
from musiclm_jax.models.stages import StageModel
from musiclm_jax.nn.axes import param_path
from musiclm_jax.training import actions as actions_lib
from musiclm_jax.training import checkpoints
from musiclm_jax.training.actions import ActionMode, BaseAction
from musiclm_jax.training.optimizers import OptimizerConfig, make_schedule
from musiclm_jax.training.partitioning import Partitioner, create_mesh
from musiclm_jax.training.trainer import NonFiniteError, Trainer

SHAPES = {"mulan_tokens": (8, 12), "semantic_tokens": (8, 24)}
OPT = OptimizerConfig(learning_rate=3e-3, warmup_steps=2)


def _batch(start=0):
    return token_tasks.permuted_copy_batch(start, 8, num_target_tokens=24)


def _trainer(model, ici, devices=None, microbatches=1, opt=OPT):
    partitioner = Partitioner(ici_mesh_shape=ici, devices=devices)
    return Trainer(model, partitioner, opt, total_steps=100, input_shapes=SHAPES, microbatches=microbatches)


def _run_steps(trainer, n, seed=0):
    state = trainer.init_state(trainer.rng(seed))
    metrics = None
    for i in range(n):
        state, metrics = trainer.train_step(state, trainer.partitioner.global_batch(_batch(8 * i)), trainer.rng(1))
    return jax.device_get(state), jax.device_get(metrics)


def test_mesh_fills_minus_one():
    assert jax.device_count() == 8
    assert dict(create_mesh((-1, 2, 2)).shape) == {"data": 2, "fsdp": 2, "model": 2}
    with pytest.raises(ValueError, match="not divisible"):
        create_mesh((-1, 3, 1))


def test_sharded_step_matches_single_device(tiny_stage_config):
    model = StageModel(tiny_stage_config)
    single, m1 = _run_steps(_trainer(model, (1, 1, 1), devices=jax.devices()[:1]), 2)
    sharded_trainer = _trainer(model, (2, 2, 2))
    # The weights really are split over the mesh.
    spec = sharded_trainer.state_shardings.params["token_embed"]["embedding"].spec
    assert spec == jax.sharding.PartitionSpec("model", "fsdp")
    sharded, m8 = _run_steps(sharded_trainer, 2)
    np.testing.assert_allclose(m1["loss"], m8["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(sharded.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_microbatches_match_full_batch(tiny_stage_config):
    model = StageModel(tiny_stage_config)
    full, _ = _run_steps(_trainer(model, (-1, 1, 1)), 1)
    micro, _ = _run_steps(_trainer(model, (-1, 1, 1), microbatches=2, devices=jax.devices()[:4]), 1)
    for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(micro.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_restore_onto_another_mesh(tmp_path, tiny_stage_config):
    model = StageModel(tiny_stage_config)
    trainer = _trainer(model, (-1, 1, 1))
    state = trainer.init_state(trainer.rng(0))
    state, _ = trainer.train_step(state, trainer.partitioner.global_batch(_batch()), trainer.rng(1))
    ckpt = checkpoints.Checkpointer(str(tmp_path), save_every=1)
    ckpt.save(1, state, {"batches_consumed": 1})
    ckpt.close()
    saved = jax.device_get(state)
    for ici, devices in [((2, 2, 2), None), ((1, 1, 1), jax.devices()[:1]), ((1, 4, 2), None)]:
        other = _trainer(model, ici, devices=devices)
        restored, data_state = checkpoints.Checkpointer(str(tmp_path)).restore(1, other.abstract_state)
        assert data_state["batches_consumed"] == 1
        leaf = restored.params["token_embed"]["embedding"]
        assert leaf.sharding == other.state_shardings.params["token_embed"]["embedding"]
        for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(jax.device_get(restored))):
            np.testing.assert_array_equal(a, b)
    # Parameters alone, for fine-tuning from another run.
    params, step = checkpoints.restore_params(str(tmp_path), trainer.abstract_state.params)
    assert step == 1
    for a, b in zip(jax.tree.leaves(saved.params), jax.tree.leaves(jax.device_get(params))):
        np.testing.assert_array_equal(a, b)


def test_schedules():
    cos = make_schedule(OptimizerConfig(learning_rate=1.0, warmup_steps=10, end_learning_rate_fraction=0.0), 110)
    assert (
        float(cos(0)) == 0.0
        and float(cos(10)) == pytest.approx(1.0)
        and float(cos(110)) == pytest.approx(0.0, abs=1e-6)
    )
    assert float(cos(60)) == pytest.approx(0.5, abs=1e-3)
    rsqrt = make_schedule(OptimizerConfig(learning_rate=1.0, schedule="rsqrt", warmup_steps=100), 1000)
    assert float(rsqrt(50)) == pytest.approx(0.5) and float(rsqrt(400)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="adamw"):
        OptimizerConfig(name="sgd")


def test_adafactor_and_ema_train(tiny_stage_config):
    """Adafactor's factored moments get replicated specs; EMA tracks the parameters."""
    opt = OptimizerConfig(name="adafactor", learning_rate=1e-2, warmup_steps=0, ema_decay=0.5)
    trainer = _trainer(StageModel(tiny_stage_config), (2, 2, 2), opt=opt)
    state, metrics = _run_steps(trainer, 3)
    assert np.isfinite(metrics["loss"])
    first = jax.tree.leaves(state.params)[0]
    ema = jax.tree.leaves(state.ema_params)[0]
    assert not np.array_equal(first, ema) and np.all(np.isfinite(ema))


class BlowsUp(BaseModel):
    """One parameter p; SGD-like steps push it up and the loss is log(5 - p): NaN once p > 5."""

    FEATURE_DTYPES = {"mulan_tokens": jnp.int32, "semantic_tokens": jnp.int32}

    def get_initial_variables(self, rng, input_shapes):
        import flax.linen as nn

        return {"params": {"p": nn.LogicallyPartitioned(jnp.zeros((), jnp.float32), ())}}

    def loss_fn(self, params, batch, dropout_rng):
        del batch, dropout_rng
        return -params["p"] + 1e-3 * jnp.log(5.0 - params["p"]), {}

    def predict_batch(self, params, batch, rng=None, **kwargs):
        raise NotImplementedError


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path):
    from musiclm_jax.train import train

    cfg = DatasetConfig("permuted_copy_32", {"mulan_tokens": 12, "semantic_tokens": 24}, batch_size=8)
    opt = OptimizerConfig(learning_rate=1.0, schedule="constant", warmup_steps=0, weight_decay=0.0, clip_grad_norm=None)
    with pytest.raises(NonFiniteError, match="not finite at step") as err:
        train(
            model=BlowsUp(),
            model_dir=str(tmp_path),
            train_steps=50,
            train_dataset_cfg=cfg,
            optimizer=opt,
            checkpoint_period=2,
            log_period=1,
            partitioner=Partitioner(devices=jax.devices()[:1]),
        )
    ckpt = checkpoints.Checkpointer(str(tmp_path / "checkpoints"))
    latest = ckpt.latest_step()
    assert latest is not None and f"latest checkpoint is step {latest}" in str(err.value)
    trainer = Trainer(BlowsUp(), Partitioner(devices=jax.devices()[:1]), opt, total_steps=50, input_shapes=SHAPES)
    state, _ = ckpt.restore(latest, trainer.abstract_state)
    assert np.isfinite(float(state.params["p"])) and float(state.params["p"]) < 5.0


# ---- the loop's actions (training/actions.py) ---------------------------------------------------

TOKENS = {"mulan_tokens": 12, "semantic_tokens": 24}
GENTLE = OptimizerConfig(learning_rate=1e-2, schedule="constant", warmup_steps=0, weight_decay=0.0, clip_grad_norm=None)


class Recorder(BaseAction):
    """Notes (step, commit, has eval results) each time it runs; asks to stop at `stop_at`."""

    def __init__(self, mode, period, stop_at=None):
        self.mode, self.period, self.stop_at, self.seen = mode, period, stop_at, []

    def run(self, ctx):
        self.seen.append((ctx.step, ctx.commit, ctx.eval_results))
        return ctx.step == self.stop_at


def test_terminate_on_nan_checks_one_step_late_and_names_the_latest_checkpoint(tmp_path):
    import optax

    from musiclm_jax.training.train_state import TrainState

    ckpt = checkpoints.Checkpointer(str(tmp_path), save_every=1, async_save=False)
    ckpt.save(4, TrainState.create({"p": jnp.zeros(())}, optax.sgd(1.0)), {"batches_consumed": 4})
    action = actions_lib.TerminateOnNaN()
    assert action.mode is ActionMode.GUARD and action.period == 1

    def ctx(step, finite, commit=False):
        metrics = {
            "finite": jnp.asarray(finite),
            "loss": jnp.asarray(1.0 if finite else np.nan),
            "grad_norm": jnp.asarray(np.inf),
        }
        return actions_lib.StepContext(step, 10, None, metrics, None, ckpt, commit=commit)

    assert action.run(ctx(5, True)) is False
    assert action.run(ctx(6, False)) is False  # read one step late: the next step is already dispatched
    with pytest.raises(NonFiniteError) as err:
        action.run(ctx(7, True))
    assert str(err.value) == (
        "loss or gradients are not finite at step 6 (loss=nan, grad_norm=inf); training stopped without applying "
        f"that update; the latest checkpoint is step 4 in {tmp_path}"
    )
    # A step the loop is about to log or save is checked before it is recorded.
    with pytest.raises(NonFiniteError, match="at step 8 "):
        actions_lib.TerminateOnNaN().run(ctx(8, False, commit=True))
    ckpt.close()
    empty = checkpoints.Checkpointer(str(tmp_path / "empty"))
    bad = actions_lib.StepContext(1, 10, None, ctx(1, False).metrics, None, empty, commit=True)
    with pytest.raises(NonFiniteError, match="no checkpoint was written"):
        actions_lib.TerminateOnNaN().run(bad)
    empty.close()


def test_custom_actions_run_at_their_period_and_can_end_training(tmp_path, capsys):
    from musiclm_jax.train import train

    cfg = DatasetConfig("permuted_copy_32", TOKENS, batch_size=8)
    every_third = Recorder(ActionMode.TRAIN, 3, stop_at=9)
    guard = Recorder(ActionMode.GUARD, 1)
    never = Recorder(ActionMode.TRAIN, 0)
    state = train(
        model=BlowsUp(),
        model_dir=str(tmp_path),
        train_steps=20,
        train_dataset_cfg=cfg,
        optimizer=GENTLE,
        checkpoint_period=100,
        log_period=5,
        partitioner=Partitioner(devices=jax.devices()[:1]),
        actions=[every_third, guard, never],
    )
    assert [s for s, _, _ in every_third.seen] == [3, 6, 9] and never.seen == []
    # Guards run after every step, told which steps the loop logs or saves; the step an action
    # ended training at is checked again before it is recorded as the last.
    assert [(s, c) for s, c, _ in guard.seen] == [(s, s == 5) for s in range(1, 10)] + [(9, True)]
    assert int(state.step) == 9
    assert checkpoints.Checkpointer(str(tmp_path / "checkpoints")).all_steps() == [9]
    out = capsys.readouterr().out
    assert "training ended at step 9 by Recorder" in out and "step 9/20" in out


class Audible(BlowsUp):
    """BlowsUp with eval media and a warning from the second eval on."""

    def eval_media(self, params, batch):
        tone = jnp.sin(jnp.arange(4000) * 0.3) * 0.5 + params["p"]
        return {"input": jnp.broadcast_to(tone, (2, 4000))}

    def media_sample_rate(self):
        return 8000

    def eval_warning(self, history):
        return f"STUCK after {len(history)} evals" if len(history) >= 2 else None


def test_periodic_eval_writes_scalars_media_and_warnings(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from musiclm_jax.train import train

    cfg = DatasetConfig("permuted_copy_32", TOKENS, batch_size=8)
    eval_cfg = DatasetConfig("permuted_copy_32", TOKENS, batch_size=8, split="validation", shuffle=False)
    after_eval = Recorder(ActionMode.TRAIN_EVAL, 1)
    train(
        model=Audible(),
        model_dir=str(tmp_path),
        train_steps=4,
        train_dataset_cfg=cfg,
        optimizer=GENTLE,
        eval_dataset_cfg=eval_cfg,
        eval_period=2,
        eval_steps=1,
        checkpoint_period=100,
        log_period=2,
        partitioner=Partitioner(devices=jax.devices()[:1]),
        actions=[after_eval],
    )
    assert [s for s, _, _ in after_eval.seen] == [2, 4]
    assert all(set(r) == {"loss"} and np.isfinite(r["loss"]) for _, _, r in after_eval.seen)
    out = capsys.readouterr().out
    assert "eval at step 2: loss " in out and "eval at step 4: loss " in out
    assert out.count("!! WARNING: STUCK after") == 1 and "STUCK after 2 evals" in out
    acc = EventAccumulator(str(tmp_path / "eval"), size_guidance={"tensors": 0, "scalars": 0}).Reload()
    tags = set(acc.Tags()["tensors"]) | set(acc.Tags()["scalars"])
    assert {"loss", "audio/input", "spectrogram/example_0", "spectrogram/example_1", "warning"} <= tags


def test_train_refuses_another_model_config_in_the_same_dir(tmp_path, tiny_stage_config):
    """A resumed run compares the model configuration with model.json before it writes anything;
    the first differing field is named; allow_config_change trains on and records it."""
    import dataclasses
    import json

    from musiclm_jax.train import ModelDirMismatchError, train

    cfg = DatasetConfig("permuted_copy_32", TOKENS, batch_size=8)
    kwargs = dict(
        model_dir=str(tmp_path),
        train_dataset_cfg=cfg,
        optimizer=OPT,
        checkpoint_period=100,
        log_period=100,
        partitioner=Partitioner(devices=jax.devices()[:1]),
    )
    train(model=StageModel(tiny_stage_config), train_steps=2, **kwargs)
    written = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    changed = StageModel(dataclasses.replace(tiny_stage_config, dropout_rate=0.1))
    with pytest.raises(ModelDirMismatchError, match=r"dropout_rate: 0\.0 -> 0\.1"):
        train(model=changed, train_steps=3, **kwargs)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == written  # nothing touched

    state = train(model=changed, train_steps=3, allow_config_change=True, **kwargs)
    assert int(state.step) == 3
    [change] = json.loads((tmp_path / "config-changes.json").read_text())
    assert change["step"] == 2 and "dropout_rate: 0.0 -> 0.1" in change["first_difference"]
    assert json.loads((tmp_path / "model.json").read_text())["config"]["dropout_rate"] == 0.1


class Sigterm(BaseAction):
    """Sends this process SIGTERM after step `at` (as a scheduler or `tpu.py stop` would)."""

    def __init__(self, at):
        self.mode, self.period, self.at = ActionMode.TRAIN, 1, at

    def run(self, ctx):
        import os
        import signal

        if ctx.step == self.at:
            os.kill(os.getpid(), signal.SIGTERM)
        return False


def test_sigterm_saves_the_step_reached_and_stops(tmp_path, capsys):
    import signal

    from musiclm_jax.train import StoppedBySignal, train

    before = signal.getsignal(signal.SIGTERM)
    cfg = DatasetConfig("permuted_copy_32", TOKENS, batch_size=8)
    with pytest.raises(StoppedBySignal, match="stopped at step 4 by SIGTERM"):
        train(
            model=BlowsUp(),
            model_dir=str(tmp_path),
            train_steps=50,
            train_dataset_cfg=cfg,
            optimizer=GENTLE,
            checkpoint_period=100,
            log_period=100,
            partitioner=Partitioner(devices=jax.devices()[:1]),
            actions=[Sigterm(at=3)],
        )
    # The signal lands after step 3's actions; step 4 sees it, saves and ends the run, raising so
    # that a caller (the pipeline) does not take the run as finished.
    assert checkpoints.Checkpointer(str(tmp_path / "checkpoints")).all_steps() == [4]
    assert "stopped at step 4 by SIGTERM" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is the loop's only


def test_frozen_parameters_keep_their_bits_and_get_no_optimiser_state(tiny_stage_config):
    """OptimizerConfig.frozen (fine-tuning part of a model): the matched parameters are unchanged
    bit for bit, the rest train, and Adam keeps moments only for the trained ones."""
    frozen = OptimizerConfig(learning_rate=3e-3, warmup_steps=0, frozen=("token_embed", "layers_0"))
    model = StageModel(dataclasses.replace(tiny_stage_config, scan_layers=False))
    trainer = _trainer(model, (1, 1, 1), devices=jax.devices()[:1], opt=frozen)
    start = jax.device_get(trainer.init_state(trainer.rng(0)))
    state, metrics = _run_steps(trainer, 3)
    assert np.isfinite(metrics["loss"])

    def flat(tree):
        return {param_path(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}

    before, after = flat(start.params), flat(state.params)
    for name in before:
        kept = np.array_equal(before[name], after[name])
        assert kept == ("token_embed" in name or "layers_0" in name), name
    full = _trainer(model, (1, 1, 1), devices=jax.devices()[:1])
    count = lambda s: sum(x.size for x in jax.tree.leaves(s.opt_state))  # noqa: E731
    frozen_size = sum(v.size for k, v in before.items() if "token_embed" in k or "layers_0" in k)
    assert count(full.abstract_state) - count(trainer.abstract_state) == 2 * frozen_size  # Adam's two moments
    with pytest.raises(ValueError, match="matches no parameter"):
        _trainer(model, (1, 1, 1), devices=jax.devices()[:1], opt=OptimizerConfig(frozen=("no_such_layer",)))
