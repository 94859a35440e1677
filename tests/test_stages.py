"""Token stages: layout ids, sequences, CFG condition dropout, sizes, and learning a task."""

import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gin
from musiclm_jax import gin_registry, gin_utils
from musiclm_jax.data.token_tasks import permuted_copy_batch
from musiclm_jax.models.base import dummy_batch
from musiclm_jax.models.stages import StageConfig, StageModel, StreamSpec
from musiclm_jax.models.token_layout import BOS_ID, NULL_COND_ID, PAD_ID, TokenLayout
from musiclm_jax.training.optimizers import OptimizerConfig
from musiclm_jax.training.partitioning import Partitioner
from musiclm_jax.training.trainer import Trainer

GIN_DIR = pathlib.Path(__file__).resolve().parents[1] / "gin" / "models" / "semantic_stage"

TINY = dict(num_layers=2, num_heads=4, head_dim=16, d_model=64, d_ff=256, dropout_rate=0.0)
# A reduced vocabulary (mulan 12 x 32, semantic 64) keeps the CPU training test fast: with the
# full 25,728-id vocabulary the untied output projection dominates a tiny model's step time.
TASK_LAYOUT = TokenLayout(streams=(("mulan", 12, 32), ("semantic", 1, 64)))
TASK_CODEBOOK = 64
# All three streams, small codebooks: for shape/id tests that run the model.
SMALL_LAYOUT = TokenLayout(streams=(("mulan", 12, 16), ("semantic", 1, 16), ("acoustic", 12, 16)))


# --- TokenLayout ---------------------------------------------------------------------------


def test_default_layout_offsets_and_vocab():
    layout = TokenLayout()
    assert (PAD_ID, BOS_ID, NULL_COND_ID) == (0, 1, 2)
    assert layout.offset("mulan", 0) == 3
    assert layout.offset("mulan", 11) == 3 + 11 * 1024
    assert layout.offset("semantic", 0) == 3 + 12 * 1024
    assert layout.offset("acoustic", 0) == 3 + 13 * 1024
    assert layout.offset("acoustic", 11) == 3 + 24 * 1024
    assert layout.num_used_ids == 3 + 25 * 1024
    assert layout.vocab_size == 25728 and layout.vocab_size % 128 == 0
    with pytest.raises(KeyError, match="unknown token stream"):
        layout.offset("melody", 0)
    with pytest.raises(ValueError, match="levels"):
        layout.offset("semantic", 1)


def test_layout_ids_roundtrip_frame_major():
    layout = TokenLayout(streams=(("mulan", 2, 8), ("acoustic", 3, (4, 6, 5))))
    assert layout.offset("acoustic", 1) == 3 + 16 + 4
    codes = np.array([[[0, 5, 4], [3, 1, 2]]])  # [B=1, frames=2, levels=3]
    ids = layout.to_ids(codes, "acoustic", 0, 3)
    lo = [layout.offset("acoustic", lvl) for lvl in range(3)]
    np.testing.assert_array_equal(ids, [[lo[0] + 0, lo[1] + 5, lo[2] + 4, lo[0] + 3, lo[1] + 1, lo[2] + 2]])
    # Already flattened input gives the same ids; to_codes inverts.
    np.testing.assert_array_equal(layout.to_ids(codes.reshape(1, -1), "acoustic", 0, 3), ids)
    np.testing.assert_array_equal(layout.to_codes(ids, "acoustic", 0, 3), codes.reshape(1, -1))
    # Levels 1..2 only, from an array holding all 3 levels.
    sub = layout.to_ids(codes, "acoustic", 1, 2)
    np.testing.assert_array_equal(sub, [[lo[1] + 5, lo[2] + 4, lo[1] + 1, lo[2] + 2]])
    # Padding -> PAD; ids of another level -> -1.
    np.testing.assert_array_equal(layout.to_ids(np.array([[-1, 2]]), "mulan", 0, 2), [[PAD_ID, 3 + 8 + 2]])
    np.testing.assert_array_equal(layout.to_codes(np.array([[3 + 8 + 2, 3]]), "mulan", 0, 2), [[-1, -1]])
    # Vocabulary mask: exactly the level's range at each position.
    mask = np.asarray(layout.vocab_mask("acoustic", 0, 3, np.arange(4)))
    assert mask.shape == (4, layout.vocab_size)
    for p in range(4):
        allowed = np.flatnonzero(mask[p])
        lvl = p % 3
        np.testing.assert_array_equal(allowed, np.arange(lo[lvl], lo[lvl] + (4, 6, 5)[lvl]))


@gin.configurable("stage_gin_probe")
def probe(model=gin.REQUIRED, lengths=gin.REQUIRED, batch_size=gin.REQUIRED):
    return model, lengths, batch_size


# --- sequences and losses --------------------------------------------------------------------


def _tiny_model(**overrides) -> StageModel:
    return StageModel(StageConfig(**{**TINY, **overrides}))


def _init(model, shapes, seed=0):
    return jax.jit(lambda rng: model.get_initial_variables(rng, shapes))(jax.random.key(seed))


def test_semantic_sequence_layout():
    model = _tiny_model()
    batch = {k: jnp.asarray(v) for k, v in permuted_copy_batch(0, 3).items()}
    seq = model.build_sequences(batch)
    layout = model.layout
    cond_ids = layout.offset("mulan", 0) + np.arange(12) * 1024 + np.asarray(batch["mulan_tokens"])
    target_ids = layout.offset("semantic", 0) + np.asarray(batch["semantic_tokens"])
    np.testing.assert_array_equal(seq["targets"], target_ids)
    expected_inputs = np.concatenate([np.full((3, 1), BOS_ID), cond_ids, target_ids[:, :-1]], axis=1)
    np.testing.assert_array_equal(seq["inputs"], expected_inputs)
    np.testing.assert_array_equal(seq["weights"], np.ones((3, 24)))


def test_multilevel_target_coarse_acoustic():
    model = _tiny_model(
        conditions=(("mulan_tokens", "mulan", 0, 12), ("semantic_tokens", "semantic", 0, 1)),
        target=("acoustic_tokens", "acoustic", 0, 4),
        layout=SMALL_LAYOUT,
    )
    rng = np.random.default_rng(0)
    batch_size, sem_len, frames = 2, 5, 6
    acoustic = rng.integers(0, 16, (batch_size, frames, 12)).astype(np.int32)  # all 12 RVQ levels
    acoustic[1, -1, :] = -1  # padded last frame of example 1
    batch = {
        "mulan_tokens": jnp.asarray(rng.integers(0, 16, (batch_size, 12)), jnp.int32),
        "semantic_tokens": jnp.asarray(rng.integers(0, 16, (batch_size, sem_len)), jnp.int32),
        "acoustic_tokens": jnp.asarray(acoustic),
    }
    shapes = {k: v.shape for k, v in batch.items()}
    assert model.sequence_length(shapes) == (12 + sem_len, frames * 4)
    seq = model.build_sequences(batch)
    layout = model.layout
    lo = np.array([layout.offset("acoustic", lvl) for lvl in range(4)])
    expected = np.where(acoustic[..., :4] >= 0, acoustic[..., :4] + lo, PAD_ID).reshape(batch_size, -1)
    np.testing.assert_array_equal(seq["targets"], expected)
    assert seq["inputs"].shape == (batch_size, 12 + sem_len + frames * 4)
    np.testing.assert_array_equal(seq["inputs"][:, 13:18], layout.offset("semantic", 0) + batch["semantic_tokens"])
    assert float(seq["weights"].sum()) == batch_size * frames * 4 - 4

    variables = _init(model, shapes)
    loss, metrics = jax.jit(model.loss_fn)(variables["params"], batch, jax.random.key(1))
    assert loss.shape == () and np.isfinite(float(loss))
    assert float(metrics["num_tokens"]) == batch_size * frames * 4 - 4
    logits = jax.jit(model.logits)(variables["params"], seq["inputs"])
    assert logits.shape == (batch_size, 12 + sem_len + frames * 4, layout.vocab_size)
    assert logits.dtype == jnp.float32
    # The loss is the cross-entropy over each position's own level (the ids sampling may draw),
    # computed from the target window's logits only: equal to the full logits restricted so.
    num_targets = frames * 4
    legal = np.asarray(layout.vocab_mask("acoustic", 0, 4, np.arange(num_targets)))
    full = np.where(legal, np.asarray(logits)[:, -num_targets:], -np.inf)
    log_z = np.log(np.sum(np.exp(full - full.max(-1, keepdims=True)), -1)) + full.max(-1)
    target_logit = np.take_along_axis(full, np.asarray(seq["targets"])[..., None], -1)[..., 0]
    w = np.asarray(seq["weights"])
    expected_ce = np.sum(np.where(w > 0, log_z - target_logit, 0.0)) / w.sum()
    np.testing.assert_allclose(float(metrics["cross_entropy"]), expected_ce, rtol=1e-5)
    assert abs(expected_ce - np.log(16)) < 1.0  # untrained: near uniform over a level's 16 codes


def test_guided_conditions_null_the_text_alone():
    """guided_conditions=('mulan_tokens',): condition dropout and the unconditional prompt of
    guidance null the MuLan tokens and keep the semantic tokens (guidance by the text alone)."""
    model = _tiny_model(
        layout=SMALL_LAYOUT,
        conditions=(("mulan_tokens", "mulan", 0, 4), ("semantic_tokens", "semantic", 0, 1)),
        target=("acoustic_tokens", "acoustic", 0, 2),
        cond_dropout_rate=0.5,
        guided_conditions=("mulan_tokens",),
    )
    rng = np.random.default_rng(0)
    batch = {
        "mulan_tokens": jnp.asarray(rng.integers(0, 16, (64, 4)), jnp.int32),
        "semantic_tokens": jnp.asarray(rng.integers(0, 16, (64, 5)), jnp.int32),
        "acoustic_tokens": jnp.asarray(rng.integers(0, 16, (64, 6, 2)), jnp.int32),
    }
    clean = np.asarray(model.build_sequences(batch)["inputs"][:, 1:10])
    seq = model.build_sequences(batch, jax.random.key(1))
    cond, dropped = np.asarray(seq["inputs"][:, 1:10]), np.asarray(seq["cond_dropped"])
    assert 0 < dropped.sum() < 64
    np.testing.assert_array_equal(cond[dropped, :4], NULL_COND_ID)
    np.testing.assert_array_equal(cond[:, 4:], clean[:, 4:])  # semantic tokens never dropped
    np.testing.assert_array_equal(cond[~dropped], clean[~dropped])
    uncond = np.asarray(model.prompt_ids(batch, null_condition=True))
    np.testing.assert_array_equal(uncond[:, 1:5], NULL_COND_ID)
    np.testing.assert_array_equal(uncond[:, 5:10], clean[:, 4:])
    with pytest.raises(ValueError, match="not condition features"):
        _tiny_model(guided_conditions=("semantic_tokens",))


def test_fine_stage_shares_one_feature():
    model = _tiny_model(
        conditions=(("acoustic_tokens", "acoustic", 0, 4),), target=("acoustic_tokens", "acoustic", 4, 8)
    )
    acoustic = np.arange(2 * 3 * 12).reshape(2, 3, 12).astype(np.int32)
    batch = {"acoustic_tokens": jnp.asarray(acoustic)}
    seq = model.build_sequences(batch)
    layout = model.layout
    cond = seq["inputs"][:, 1:13]
    lo_c = np.array([layout.offset("acoustic", lvl) for lvl in range(4)])
    lo_t = np.array([layout.offset("acoustic", lvl) for lvl in range(4, 12)])
    np.testing.assert_array_equal(cond, (acoustic[..., :4] + lo_c).reshape(2, -1))
    np.testing.assert_array_equal(seq["targets"], (acoustic[..., 4:] + lo_t).reshape(2, -1))
    assert model.prefix_codes(batch) is None  # the shared feature is a condition, not a prefix


def test_cond_dropout_rate_for_cfg():
    model = _tiny_model(cond_dropout_rate=0.1)
    n = 4000
    rng = np.random.default_rng(0)
    batch = {
        "mulan_tokens": jnp.asarray(rng.integers(0, 1024, (n, 12)), jnp.int32),
        "semantic_tokens": jnp.asarray(rng.integers(0, 1024, (n, 7)), jnp.int32),
    }
    clean = model.build_sequences(batch)
    dropped = model.build_sequences(batch, jax.random.key(3))
    cond_clean, cond_drop = np.asarray(clean["inputs"][:, 1:13]), np.asarray(dropped["inputs"][:, 1:13])
    is_null = np.all(cond_drop == NULL_COND_ID, axis=1)
    unchanged = np.all(cond_drop == cond_clean, axis=1)
    assert np.all(is_null | unchanged)  # all-or-nothing per example
    np.testing.assert_array_equal(is_null, dropped["cond_dropped"])
    rate = is_null.mean()
    assert abs(rate - 0.1) < 0.015, rate  # binomial std ~0.005
    # Targets and the BOS / target part of the inputs are untouched.
    np.testing.assert_array_equal(dropped["targets"], clean["targets"])
    np.testing.assert_array_equal(dropped["inputs"][:, 13:], clean["inputs"][:, 13:])
    np.testing.assert_array_equal(dropped["inputs"][:, 0], BOS_ID)
    # No rng (eval) or rate 0: nothing dropped.
    assert not np.any(np.asarray(model.build_sequences(batch)["cond_dropped"]))
    no_drop = _tiny_model(cond_dropout_rate=0.0).build_sequences(batch, jax.random.key(3))
    np.testing.assert_array_equal(no_drop["inputs"], clean["inputs"])


# --- sizes, partitioning, gin ----------------------------------------------------------------


def test_paper_param_count_and_flops():
    model = StageModel(StageConfig())  # defaults = paper semantic stage
    count = model.param_count()
    assert abs(count - 430e6) / 430e6 < 0.10, count
    shapes = {"mulan_tokens": (1, 12), "semantic_tokens": (1, 750)}
    flops = model.flops_per_example(shapes)
    length = 762
    layers = count - 2 * model.layout.vocab_size * 1024  # without the embedding and the logits
    logits = 1024 * 1024 * 750  # d_model x the 1,024 semantic ids x the target positions
    assert model.target_window()[1] - model.target_window()[0] == 1024
    assert flops == pytest.approx(6 * (layers * length + logits) + 12 * 24 * 16 * 64 * length**2)


def test_trainer_flops_count_scanned_layers_like_the_analytic_formula():
    """The trainer's FLOPs (counted on the step's jaxpr) agree with the analytic 6NL + attention,
    and a scanned stack counts as much as the same layers unrolled (XLA's cost analysis can count
    a scanned body once: 3.6 instead of 42 TFLOP for the paper semantic stage)."""
    shapes = {"mulan_tokens": (8, 12), "semantic_tokens": (8, 100)}
    flops = {}
    for scan in (True, False):
        model = StageModel(StageConfig(num_layers=4, num_heads=2, head_dim=16, d_model=32, d_ff=64, scan_layers=scan))
        trainer = Trainer(
            model, Partitioner(devices=jax.devices()[:1]), OptimizerConfig(), total_steps=10, input_shapes=shapes
        )
        flops[scan] = trainer.flops_per_step_per_device
    assert flops[True] == pytest.approx(flops[False], rel=1e-6)
    assert flops[True] == pytest.approx(8 * model.flops_per_example(shapes), rel=0.05)


def test_initial_variables_are_logically_partitioned():
    model = _tiny_model()
    shapes = {"mulan_tokens": (4, 12), "semantic_tokens": (4, 24)}
    abstract = jax.eval_shape(lambda: model.get_initial_variables(jax.random.key(0), shapes))
    specs = nn.get_partition_spec(abstract)["params"]
    assert tuple(specs["token_embed"]["embedding"]) == ("vocab", "embed")
    assert tuple(specs["logits"]["kernel"]) == ("embed", "vocab")
    assert tuple(specs["relpos_bias"]["rel_embedding"]) == ("heads", "relpos_buckets")
    assert tuple(specs["layers"]["attention"]["query"]) == ("layers", "embed", "heads", "kv")
    assert tuple(specs["layers"]["attention"]["out"]) == ("layers", "heads", "kv", "embed")
    assert tuple(specs["layers"]["mlp"]["wi_0"]["kernel"]) == ("layers", "embed", "mlp")
    assert tuple(specs["layers"]["mlp"]["wo"]["kernel"]) == ("layers", "mlp", "embed")
    assert set(model.FEATURE_DTYPES) == {"mulan_tokens", "semantic_tokens"}
    # Boxed params apply directly, and dummy batches from FEATURE_DTYPES work.
    variables = _init(model, shapes)
    loss, _ = jax.jit(model.loss_fn)(variables["params"], dummy_batch(model, shapes), None)
    assert np.isfinite(float(loss))


REMAT_SHAPES = {"mulan_tokens": (2, 12), "semantic_tokens": (2, 24)}


@pytest.fixture(scope="module")
def plain_grads():
    """Loss and grads of the scanned, non-remat tiny stage (the reference for remat variants)."""
    plain = _tiny_model(dropout_rate=0.1, layout=TASK_LAYOUT)
    batch = {k: jnp.asarray(v) for k, v in permuted_copy_batch(0, 2, codebook_size=TASK_CODEBOOK).items()}
    base = nn.meta.unbox(_init(plain, REMAT_SHAPES)["params"])
    loss, grads = jax.jit(jax.value_and_grad(lambda p: plain.loss_fn(p, batch, None)[0]))(base)
    return batch, base, loss, grads


@pytest.mark.parametrize("policy,scan", [("full", True), ("dots", True), ("dots_with_no_batch_dims", False)])
def test_remat_and_unscanned_layers_match_plain(plain_grads, policy, scan):
    batch, base, loss_plain, grad_plain = plain_grads
    other = _tiny_model(dropout_rate=0.1, layout=TASK_LAYOUT, remat_policy=policy, scan_layers=scan)
    params = dict(base)
    if not scan:  # unstack the scanned layer params into layers_0, layers_1
        layers = params.pop("layers")
        for i in range(2):
            params[f"layers_{i}"] = jax.tree_util.tree_map(lambda x, i=i: x[i], layers)
    loss_other, grad_other = jax.jit(jax.value_and_grad(lambda p: other.loss_fn(p, batch, None)[0]))(params)
    np.testing.assert_allclose(loss_other, loss_plain, rtol=1e-5)
    np.testing.assert_allclose(grad_other["logits"]["kernel"], grad_plain["logits"]["kernel"], rtol=1e-4, atol=1e-6)
    wq = grad_plain["layers"]["attention"]["query"]
    wq_other = (
        grad_other["layers"]["attention"]["query"]
        if scan
        else jnp.stack([grad_other[f"layers_{i}"]["attention"]["query"] for i in range(2)])
    )
    np.testing.assert_allclose(wq_other, wq, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "size,layers,d_model,target_len", [("tiny", 2, 64, 24), ("small", 8, 512, 250), ("paper", 24, 1024, 750)]
)
def test_gin_configs(size, layers, d_model, target_len):
    gin.clear_config()
    try:
        gin_utils.parse(  # sets the packaged search path: tiny.gin and small.gin include paper.gin
            [str(GIN_DIR / f"{size}.gin")],
            [
                "stage_gin_probe.model = %MODEL",
                "stage_gin_probe.lengths = %TASK_FEATURE_LENGTHS",
                "stage_gin_probe.batch_size = %BATCH_SIZE_PER_DEVICE",
            ],
        )
        model, lengths, batch_size = probe()
    finally:
        gin.clear_config()
    assert isinstance(model, StageModel)
    assert model.config.num_layers == layers and model.config.d_model == d_model
    assert lengths == {"mulan_tokens": 12, "semantic_tokens": target_len}
    assert batch_size > 0
    assert model.config.target == StreamSpec("semantic_tokens", "semantic", 0, 1)
    if size == "paper":
        assert (model.config.num_heads, model.config.head_dim, model.config.d_ff) == (16, 64, 4096)
        assert model.config.dropout_rate == 0.1
        assert abs(model.param_count() - 430e6) / 430e6 < 0.10


def test_config_errors_are_clear():
    with pytest.raises(KeyError, match="unknown token stream"):
        StageConfig(**TINY, target=("x", "melody", 0, 1))
    with pytest.raises(ValueError, match="levels"):
        StageConfig(**TINY, target=("acoustic_tokens", "acoustic", 8, 8))
    with pytest.raises(ValueError, match="remat_policy"):
        StageConfig(**TINY, remat_policy="most")
    with pytest.raises(KeyError, match="semantic_tokens"):
        _tiny_model().build_sequences({"mulan_tokens": jnp.zeros((1, 12), jnp.int32)})


# --- learning --------------------------------------------------------------------------------


def train_permuted_copy(steps: int = 400, batch_size: int = 16, seed: int = 0, **config):
    """Trains the tiny stage (reduced vocabulary) on permuted_copy; returns (model, params, losses)."""
    model = StageModel(StageConfig(**{**TINY, "layout": TASK_LAYOUT, "cond_dropout_rate": 0.1, **config}))
    pool = permuted_copy_batch(0, 4096, seed=seed, codebook_size=TASK_CODEBOOK)
    shapes = {k: (batch_size, v.shape[1]) for k, v in pool.items()}
    params = nn.meta.unbox(model.get_initial_variables(jax.random.key(seed), shapes)["params"])
    schedule = optax.warmup_cosine_decay_schedule(0.0, 1e-2, 50, steps, 1e-3)
    optimizer = optax.adamw(schedule, weight_decay=0.01)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, batch, rng):
        (loss, _), grads = jax.value_and_grad(model.loss_fn, has_aux=True)(params, batch, rng)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    order = np.random.default_rng(seed)
    losses = []
    for i in range(steps):
        idx = order.integers(0, len(pool["mulan_tokens"]), batch_size)
        batch = {k: jnp.asarray(v[idx]) for k, v in pool.items()}
        params, opt_state, loss = step(params, opt_state, batch, jax.random.key(1000 + i))
        losses.append(float(loss))
    return model, params, losses


@pytest.mark.parametrize(
    "config",
    [{}, {"position": "rope", "attention_kernel": "fused", "num_kv_heads": 1}],
    ids=["t5-bias", "rope-fused-multiquery"],
)
def test_tiny_stage_learns_permuted_copy(config):
    model, params, losses = train_permuted_copy(**config)
    assert np.mean(losses[-10:]) < 0.1 * np.mean(losses[:10])
    held_out = {
        k: jnp.asarray(v) for k, v in permuted_copy_batch(0, 256, split="eval", codebook_size=TASK_CODEBOOK).items()
    }
    metrics = jax.jit(model.eval_fn)(params, held_out)
    assert float(metrics["num_tokens"]) == 256 * 24
    assert float(metrics["accuracy"]) > 0.95, metrics


@pytest.mark.parametrize(
    "stage, lengths, sequence",
    [
        (
            "coarse_stage",
            {"mulan_tokens": (1, 12), "semantic_tokens": (1, 250), "acoustic_tokens": (1, 500, 12)},
            (262, 2000),
        ),
        ("fine_stage", {"mulan_tokens": (1, 12), "acoustic_tokens": (1, 150, 12)}, (612, 1200)),
    ],
)
def test_paper_acoustic_stage_configs(stage, lengths, sequence):
    """gin/models/{coarse,fine}_stage/paper.gin: the semantic stage's transformer on the paper's
    acoustic crops (10 s of levels 1-4 after MuLan + semantic; 3 s of levels 5-12 after MuLan +
    levels 1-4), both reading one [frames, 12] acoustic feature."""
    gin.clear_config()
    try:
        gin_utils.parse([f"models/{stage}/paper.gin"], [])
        model = gin_registry.StageModel()
        feature_lengths = gin.query_parameter("%TASK_FEATURE_LENGTHS")
    finally:
        gin.clear_config()
    assert model.sequence_length(lengths) == sequence
    assert {k: (1, *v) if isinstance(v, tuple) else (1, v) for k, v in feature_lengths.items()} == lengths
    assert 440e6 < model.param_count() < 470e6


def test_config_dict_round_trips_through_json():
    """model.json (written by `musiclm train`) rebuilds the same stage: layouts, streams, dtypes."""
    import json

    config = StageConfig(
        layout=TokenLayout(streams=(("mulan", 4, 32), ("acoustic", 3, (64, 32, 16)))),
        conditions=(("mulan_tokens", "mulan", 0, 4),),
        target=("acoustic_tokens", "acoustic", 1, 2),
        num_layers=2,
        num_heads=2,
        head_dim=8,
        d_model=16,
        d_ff=32,
        dtype="bfloat16",
    )
    spec = json.loads(json.dumps(StageModel(config).config_dict()))
    assert spec["model"] == "StageModel" and StageConfig.from_dict(spec["config"]) == config
