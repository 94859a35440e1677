"""LoRA (models/lora.py) through the real trainer: adapters on a random-init tiny stage learn the
permuted-copy task the base cannot do (held-out loss far below the base's), the base stays bit
for bit, the optimiser and the checkpoints hold only the adapters, and the directory loads,
merged, as its base kind (model_io, export) with the outputs of the unmerged model."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from model_dirs import save_random_model

from musiclm_jax import export, model_io
from musiclm_jax.data import token_tasks
from musiclm_jax.data.input_pipeline import DatasetConfig
from musiclm_jax.models.lora import ADAPTERS, BASE, DEFAULT_TARGETS
from musiclm_jax.models.stages import StageConfig, StageModel
from musiclm_jax.models.token_layout import TokenLayout
from musiclm_jax.train import train
from musiclm_jax.training.optimizers import OptimizerConfig
from musiclm_jax.training.partitioning import Partitioner

LAYOUT = TokenLayout(streams=(("mulan", 12, 32), ("semantic", 1, 1024)))  # the task permutes 1024 codes
SIZE = dict(num_layers=2, num_heads=4, head_dim=16, d_model=64, d_ff=128, dropout_rate=0.0, cond_dropout_rate=0.0)
FEATURES = {"mulan_tokens": 12, "semantic_tokens": 24}
STEPS = 100


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    base = save_random_model(
        root / "base",
        StageModel(StageConfig(**SIZE, layout=LAYOUT)),
        {"mulan_tokens": (1, 12), "semantic_tokens": (1, 24)},
    )
    lora = model_io.lora_model(str(root / "base"), rank=8, alpha=16.0, targets=(*DEFAULT_TARGETS, "logits/kernel$"))
    state = train(
        model=lora,
        model_dir=str(root / "adapters"),
        train_steps=STEPS,
        train_dataset_cfg=DatasetConfig("permuted_copy_32", FEATURES, batch_size=16),
        optimizer=OptimizerConfig(learning_rate=1e-2, warmup_steps=10),
        checkpoint_period=STEPS,
        async_checkpointing=False,
        log_period=50,
        partitioner=Partitioner(devices=jax.devices()[:1]),
    )
    return root, base, lora, jax.device_get(state)


def _held_out():
    batch = token_tasks.permuted_copy_batch(0, 64, split="eval", num_values=32)
    return {k: jnp.asarray(v) for k, v in batch.items()}


def test_adapters_learn_what_the_base_cannot_and_the_base_keeps_its_bits(trained):
    root, base, lora, state = trained
    _, base_params = model_io.load(str(root / "base"))
    held_out = _held_out()
    base_loss = float(base.eval_fn(base_params, held_out)["loss"])
    lora_loss = float(lora.eval_fn(state.params, held_out)["loss"])
    assert lora_loss < 0.5 * base_loss, (lora_loss, base_loss)
    for a, b in zip(jax.tree.leaves(state.params[BASE]), jax.tree.leaves(base_params)):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    # adapters on the attention projections and the MLP kernels of the scanned layers
    assert sorted(state.params[ADAPTERS]) == [
        "layers.attention.key",
        "layers.attention.out",
        "layers.attention.query",
        "layers.attention.value",
        "layers.mlp.wi_0.kernel",
        "layers.mlp.wi_1.kernel",
        "layers.mlp.wo.kernel",
        "logits.kernel",
    ]


def test_only_the_adapters_are_optimised_and_saved(trained):
    root, _, lora, state = trained
    adapters = sum(x.size for x in jax.tree.leaves(state.params[ADAPTERS]))
    everything = sum(x.size for x in jax.tree.leaves(state.params))
    moments = sum(x.size for x in jax.tree.leaves(state.opt_state) if np.ndim(x) > 0)
    assert moments == 2 * adapters and adapters < 0.3 * everything  # Adam's mu and nu, adapters only
    saved = ocp.StandardCheckpointer().metadata(str(root / "adapters" / "checkpoints" / str(STEPS) / "params"))
    tree = getattr(saved, "item_metadata", saved)
    assert set(tree) == {ADAPTERS}
    info = (root / "adapters" / "model-info.txt").read_text()
    assert f"trained parameters: {adapters:,} (no optimiser: base)" in info and "optimiser state:" in info
    spec = json.loads((root / "adapters" / "model.json").read_text())
    assert spec["model"] == "LoRAModel" and spec["config"]["base_dir"] == str(root / "base")
    # a resumed run continues from the saved adapters and reads the base again
    resumed = jax.device_get(
        train(
            model=lora,
            model_dir=str(root / "adapters"),
            train_steps=STEPS + 5,
            train_dataset_cfg=DatasetConfig("permuted_copy_32", FEATURES, batch_size=16),
            optimizer=OptimizerConfig(learning_rate=1e-2, warmup_steps=10),
            checkpoint_period=STEPS,
            async_checkpointing=False,
            partitioner=Partitioner(devices=jax.devices()[:1]),
        )
    )
    assert int(resumed.step) == STEPS + 5
    for a, b in zip(jax.tree.leaves(resumed.params[BASE]), jax.tree.leaves(state.params[BASE])):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


def test_the_directory_loads_merged_as_its_base_kind_and_exports(trained, tmp_path):
    root, base, lora, state = trained
    held_out = _held_out()
    unmerged = lora.eval_fn(state.params, held_out)
    model, merged = model_io.load(str(root / "adapters"), STEPS, kind="StageModel")  # (the resume saved a later one)
    assert isinstance(model, StageModel)
    np.testing.assert_allclose(model.eval_fn(merged, held_out)["loss"], unmerged["loss"], rtol=1e-6)
    export.export_checkpoint(str(root / "adapters"), str(tmp_path / "export"), step=STEPS)
    assert json.loads((tmp_path / "export" / "model.json").read_text())["model"] == "StageModel"
    exported_model, exported = model_io.load(str(tmp_path / "export"))
    np.testing.assert_allclose(exported_model.eval_fn(exported, held_out)["loss"], unmerged["loss"], rtol=1e-6)


def test_bad_lora_configs_are_refused(trained):
    root, *_ = trained
    with pytest.raises(ValueError, match="rank"):
        model_io.lora_model(str(root / "base"), rank=0)
    with pytest.raises(ValueError, match="match no kernel"):
        model_io.lora_model(str(root / "base"), targets=("conv_.*",)).get_initial_variables(
            jax.random.key(0), {"mulan_tokens": (1, 12), "semantic_tokens": (1, 24)}
        )
    with pytest.raises(FileNotFoundError):
        model_io.lora_model(str(root / "nowhere"))


def test_a_lora_mulan_directory_reads_the_base_vocabulary_and_rvq(tokenizer_model_dirs, tmp_path):
    """Text-tower adapters on the session's random-init tiny MuLan: the LoRA directory holds only
    adapters and model.json; the tokenizer finds the caption vocabulary and the RVQ in the base
    directory, and with fresh adapters (B = 0) it embeds and tokenizes like the base."""
    from musiclm_jax.tokenizers.mulan import MuLanTokenizer
    from musiclm_jax.training import checkpoints
    from musiclm_jax.training.partitioning import unbox
    from musiclm_jax.training.train_state import TrainState

    base_dir = tokenizer_model_dirs["mulan_dir"]
    targets = (r"text_tower/.*attention/(query|key|value|out)$", r"text_tower/.*mlp/[^/]*/kernel$")
    lora = model_io.lora_model(base_dir, rank=2, targets=targets)
    params = unbox(
        lora.get_initial_variables(jax.random.key(0), {"audio": (1, 32000), "text_tokens": (1, 32)})["params"]
    )
    assert params[ADAPTERS] and all(k.startswith("text_tower.") for k in params[ADAPTERS])
    (tmp_path / "model.json").write_text(json.dumps(lora.config_dict()))
    ckpt = checkpoints.Checkpointer(str(tmp_path / "checkpoints"), save_every=1, async_save=False, exclude=(BASE,))
    ckpt.save(1, TrainState(step=np.int32(1), params=params, opt_state={}), {})
    ckpt.close()
    base, adapted = MuLanTokenizer.from_model_dir(base_dir), MuLanTokenizer.from_model_dir(str(tmp_path))
    texts = ["a slow piano ballad", "fast drums and bass"]
    np.testing.assert_allclose(adapted.embed_text(texts), base.embed_text(texts), atol=1e-6)
    np.testing.assert_array_equal(adapted.text_tokens(texts), base.text_tokens(texts))
