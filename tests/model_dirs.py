"""Random-init model directories shaped like `musiclm train` output (model.json + an orbax
checkpoint [+ the tokenizer artifacts]), built in seconds: shared by the tests that load frozen
models from directories (precompute, generation)."""

import json
import os

import jax
import numpy as np

from musiclm_jax.training import checkpoints
from musiclm_jax.training.partitioning import unbox
from musiclm_jax.training.train_state import TrainState

SR = 16000  # MuLan's and w2v-BERT's rate in the tiny configs
CODEC_SR = 24000  # the tiny codec re-strided to 24 kHz (hop 120: 200 frames/s)


def save_random_model(directory, model, shapes):
    """model.json + a checkpoint of random parameters (shapes from eval_shape: no init compiled)."""
    abstract = jax.eval_shape(lambda: unbox(model.get_initial_variables(jax.random.PRNGKey(0), shapes))["params"])
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: (
            np.ones(x.shape, x.dtype)
            if "scale" in jax.tree_util.keystr(path)
            else (0.1 * rng.standard_normal(x.shape)).astype(x.dtype)
        ),
        abstract,
    )
    os.makedirs(directory / "checkpoints")
    (directory / "model.json").write_text(json.dumps(model.config_dict()))
    ckpt = checkpoints.Checkpointer(str(directory / "checkpoints"), save_every=1, async_save=False)
    ckpt.save(1, TrainState(step=np.int32(1), params=params, opt_state={}), {})
    ckpt.close()
    return model


def gin_model(model_gin, name, bindings=()):
    import gin
    from musiclm_jax import gin_registry, gin_utils

    gin.clear_config()
    try:
        gin_utils.parse([model_gin], list(bindings))
        return getattr(gin_registry, name)()
    finally:
        gin.clear_config()


def tokenizer_dirs(root) -> dict:
    """Random-init tiny MuLan (+ a random 4 x 32 RVQ and its caption vocabulary), w2v-BERT
    (+ random 16-cluster k-means) and SoundStream at 24 kHz (4 levels x 64 codes)."""
    from musiclm_jax.data import synthetic, text_vocab
    from musiclm_jax.nn import quantizer
    from musiclm_jax.tokenizers import kmeans, mulan

    m = save_random_model(
        root / "mulan", gin_model("models/mulan/tiny.gin", "MuLan"), {"audio": (1, 32000), "text_tokens": (1, 32)}
    )
    cb = quantizer.init_codebooks(jax.random.PRNGKey(1), 4, 32, m.config.embed_dim)
    mulan.save_rvq(str(root / "mulan" / "mulan_rvq"), {k: np.asarray(v) for k, v in cb.items()}, {})
    text_vocab.caption_vocabulary(
        model_dir=str(root / "mulan"),
        source=synthetic.SyntheticSource(num_examples=200, duration_s=1.0),
        vocab_size=m.config.vocab_size,
    )
    w = save_random_model(root / "w2v", gin_model("models/w2v_bert/tiny.gin", "W2vBert"), {"audio": (1, SR)})
    centroids = np.random.default_rng(0).standard_normal((16, w.config.d_model)).astype(np.float32)
    kmeans.save_kmeans(
        str(root / "w2v" / "kmeans"), kmeans.KMeansState(centroids, np.ones(16, np.int64), 0, 0, ()), {"layer": 1}
    )
    s = gin_model(
        "models/soundstream/tiny.gin",
        "SoundStream",
        [f"SoundStreamConfig.sample_rate = {CODEC_SR}", "SEANetConfig.strides = (4, 5, 6)"],
    )
    save_random_model(root / "ss", s, {"audio": (1, 1200)})
    return {"mulan_dir": str(root / "mulan"), "w2v_bert_dir": str(root / "w2v"), "soundstream_dir": str(root / "ss")}


def stage_configs():
    """Random-init tiny semantic / coarse / fine stages on the tokenizer_dirs layout: MuLan 4 x 32,
    semantic 1 x 16, acoustic 4 x 64; coarse predicts levels 0-1, fine 2-3."""
    from musiclm_jax.models.stages import StageConfig
    from musiclm_jax.models.token_layout import TokenLayout

    layout = TokenLayout(streams=(("mulan", 4, 32), ("semantic", 1, 16), ("acoustic", 4, 64)))
    size = dict(num_layers=1, num_heads=2, head_dim=8, d_model=16, d_ff=32, dropout_rate=0.0, layout=layout)
    mulan = ("mulan_tokens", "mulan", 0, 4)
    return {
        "semantic_stage_dir": StageConfig(conditions=(mulan,), target=("semantic_tokens", "semantic", 0, 1), **size),
        "coarse_stage_dir": StageConfig(
            conditions=(mulan, ("semantic_tokens", "semantic", 0, 1)),
            target=("acoustic_tokens", "acoustic", 0, 2),
            **size,
        ),
        "fine_stage_dir": StageConfig(
            conditions=(mulan, ("acoustic_tokens", "acoustic", 0, 2)),
            target=("acoustic_tokens", "acoustic", 2, 2),
            **size,
        ),
    }


def musiclm_dirs(root, tokenizer_model_dirs) -> dict:
    """The five directories `musiclm generate` reads: the tokenizers' (without w2v-BERT) and
    random-init tiny stages."""
    from musiclm_jax.models.stages import StageModel

    out = {k: v for k, v in tokenizer_model_dirs.items() if k != "w2v_bert_dir"}
    for name, config in stage_configs().items():
        model = StageModel(config)
        save_random_model(root / name, model, {s.feature: (1, 1) for s in (*config.conditions, config.target)})
        out[name] = str(root / name)
    return out


def melody_dirs(root, musiclm_model_dirs) -> dict:
    """The MusicLM directories with a melody model (random tiny, a random 4 x 32 RVQ) and a
    random-init semantic stage conditioned on MuLan and melody tokens (melody levels 0-3)."""
    import dataclasses

    from musiclm_jax.models.stages import StageModel
    from musiclm_jax.models.token_layout import TokenLayout
    from musiclm_jax.nn import quantizer
    from musiclm_jax.tokenizers import mulan

    m = save_random_model(root / "melody", gin_model("models/melody/tiny.gin", "MelodyModel"), {"audio": (1, 32000)})
    cb = quantizer.init_codebooks(jax.random.PRNGKey(2), 4, 32, m.config.embed_dim)
    mulan.save_rvq(str(root / "melody" / "melody_rvq"), {k: np.asarray(v) for k, v in cb.items()}, {})
    semantic = stage_configs()["semantic_stage_dir"]
    semantic = dataclasses.replace(
        semantic,
        layout=TokenLayout(streams=(*semantic.layout.streams, ("melody", 4, 32))),
        conditions=(*semantic.conditions, ("melody_tokens", "melody", 0, 4)),
        condition_dropout=(("melody_tokens", 0.5),),
    )
    save_random_model(
        root / "semantic_melody",
        StageModel(semantic),
        {"mulan_tokens": (1, 1), "melody_tokens": (1, 1), "semantic_tokens": (1, 1)},
    )
    return {
        **musiclm_model_dirs,
        "semantic_stage_dir": str(root / "semantic_melody"),
        "melody_dir": str(root / "melody"),
    }
