"""gin/models/<model>/{paper,small,tiny}.gin: paper.gin holds every binding, small.gin and tiny.gin
include it and override only what differs; each size resolves to its documented dimensions.

Parsing only (the configs' dataclasses are built, no model is initialised): a few seconds."""

import pathlib
import re

import pytest

import gin
from musiclm_jax import gin_registry, gin_utils
from musiclm_jax.nn.encoders import ResNetConfig

GIN = pathlib.Path(__file__).resolve().parents[1] / "gin"
MODELS = ("soundstream", "w2v_bert", "mulan", "melody", "semantic_stage", "coarse_stage", "fine_stage")
SIZES = ("paper", "small", "tiny")
BINDING = re.compile(r"^([A-Za-z_][\w./]*)\s*=")


def _parse(path: str, bindings=()):
    gin.clear_config()
    gin_utils.parse([path], list(bindings))


def _canon(value):
    """Comparable form of a parsed value (gin's references compare equal across scopes)."""
    if isinstance(value, gin.config.ConfigurableReference):
        return repr(value)
    if isinstance(value, dict):
        return {k: _canon(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_canon(v) for v in value)
    return value


def _query(key: str):
    """A binding's parsed value (`%MACRO` for macros), or KeyError when unbound."""
    try:
        return _canon(gin.query_parameter(key if "." in key else "%" + key))
    except ValueError as e:
        raise KeyError(key) from e


def _bound_keys(path: pathlib.Path) -> list[str]:
    """The keys the file itself binds (one-line bindings; `with`-blocks are not used here)."""
    return [m.group(1) for line in path.read_text().splitlines() if (m := BINDING.match(line))]


@pytest.fixture(autouse=True)
def _clear():
    yield
    gin.clear_config()


@pytest.mark.parametrize("model", MODELS)
def test_paper_is_the_base_and_sizes_are_deltas(model):
    paper = GIN / "models" / model / "paper.gin"
    assert not re.search(r"^include ", paper.read_text(), re.M), f"{paper} should hold every binding itself"
    paper_values = {}
    for size in ("small", "tiny"):
        path = GIN / "models" / model / f"{size}.gin"
        includes = re.findall(r"^include '([^']+)'", path.read_text(), re.M)
        assert includes == [f"models/{model}/paper.gin"], (path, includes)
        keys = _bound_keys(path)
        assert keys and len(keys) == len(set(keys)), f"{path} binds a key twice"
        _parse(f"models/{model}/paper.gin")
        for key in keys:
            try:
                paper_values[key] = _query(key)
            except KeyError:
                paper_values[key] = KeyError
        _parse(f"models/{model}/{size}.gin")
        for key in keys:  # each override changes something (a repeat of paper's value is noise)
            assert _query(key) != paper_values[key], f"{path}: {key} repeats paper.gin's value"


def _stage(model, size, params):
    """The stage's config and feature lengths; its parameter count (jax.eval_shape: cheap) near `params`."""
    _parse(f"models/{model}/{size}.gin")
    assert abs(gin_registry.StageModel().param_count() / params - 1) < 0.05
    return gin_registry.StageConfig(), _query("TASK_FEATURE_LENGTHS")


@pytest.mark.parametrize(
    "size,layers,d_model,semantic,params",
    [
        ("paper", 24, 1024, 750, 455e6),
        ("small", 8, 512, 250, 60e6),
        ("tiny", 2, 64, 24, 3.4e6),
    ],
)
def test_semantic_stage_sizes(size, layers, d_model, semantic, params):
    config, lengths = _stage("semantic_stage", size, params)
    assert (config.num_layers, config.d_model) == (layers, d_model)
    assert lengths == {"mulan_tokens": 12, "semantic_tokens": semantic}
    assert config.target.feature == "semantic_tokens"
    assert str(config.dtype) == ("bfloat16" if size == "paper" else "float32")


@pytest.mark.parametrize(
    "model,size,layers,d_model,target,acoustic,params",
    [
        ("coarse_stage", "paper", 24, 1024, (0, 4), (500, 12), 455e6),
        ("coarse_stage", "small", 6, 256, (0, 4), (200, 8), 7.9e6),
        ("coarse_stage", "tiny", 2, 64, (0, 2), (100, 4), 0.2e6),
        ("fine_stage", "paper", 24, 1024, (4, 8), (150, 12), 455e6),
        ("fine_stage", "small", 6, 256, (4, 4), (100, 8), 7.9e6),
        ("fine_stage", "tiny", 2, 64, (2, 2), (100, 4), 0.2e6),
    ],
)
def test_acoustic_stage_sizes(model, size, layers, d_model, target, acoustic, params):
    config, lengths = _stage(model, size, params)
    assert (config.num_layers, config.d_model) == (layers, d_model)
    assert (config.target.feature, config.target.stream) == ("acoustic_tokens", "acoustic")
    assert (config.target.first_level, config.target.num_levels) == target
    assert lengths["acoustic_tokens"] == acoustic
    # The acoustic stream holds every level the cache stores.
    assert dict((name, levels) for name, levels, _ in config.layout.streams)["acoustic"] == acoustic[1]


@pytest.mark.parametrize(
    "size,rate,strides,levels,codes,crop",
    [
        ("paper", 24000, (3, 4, 5, 8), 12, 1024, 48000),  # 480 hop: 50 Hz, 2 s crops
        ("small", 24000, (2, 4, 5, 6), 8, 256, 24000),  # 240 hop: 100 Hz, 1 s
        ("tiny", 16000, (2, 4, 5), 4, 64, 8000),  # 40 hop: 400 Hz, 0.5 s
    ],
)
def test_soundstream_sizes(size, rate, strides, levels, codes, crop):
    _parse(f"models/soundstream/{size}.gin")
    config = gin_registry.SoundStreamConfig()
    assert (config.sample_rate, config.seanet.strides) == (rate, strides)
    assert (config.num_levels, config.codebook_size) == (levels, codes)
    assert _query("TASK_FEATURE_LENGTHS") == {"audio": crop}
    assert config.seanet.causal and config.quantizer_dropout
    assert _query("OptimizerConfig.schedule") == "constant"


@pytest.mark.parametrize(
    "size,layers,d_model,codes,embedding_layer,dtype",
    [
        ("paper", 12, 1024, 1024, 7, "bfloat16"),
        ("small", 4, 128, 256, 3, "float32"),
        ("tiny", 2, 64, 64, 1, "float32"),
    ],
)
def test_w2v_bert_sizes(size, layers, d_model, codes, embedding_layer, dtype):
    _parse(f"models/w2v_bert/{size}.gin")
    config = gin_registry.W2vBertConfig()
    assert config.contrastive.num_layers == config.mlm.num_layers == layers
    assert config.contrastive.d_model == d_model and str(config.mlm.dtype) == dtype
    assert (config.codebook_size, config.embedding_layer) == (codes, embedding_layer)
    assert config.contrastive.scan_layers == (size == "paper")


@pytest.mark.parametrize(
    "size,tower,text_layers,embed_dim,rvq,text_length",
    [
        ("paper", "resnet", 12, 128, (12, 1024), 128),
        ("small", "transformer", 4, 128, (12, 64), 48),
        ("tiny", "transformer", 2, 64, (4, 32), 32),
    ],
)
def test_mulan_sizes(size, tower, text_layers, embed_dim, rvq, text_length):
    _parse(f"models/mulan/{size}.gin")
    config = gin_registry.MuLanConfig()
    assert config.audio_encoder == tower and config.text_encoder.num_layers == text_layers
    assert config.embed_dim == embed_dim and (config.rvq_levels, config.rvq_codebook_size) == rvq
    assert config.max_text_length == text_length == _query("TEXT_LENGTH")
    assert _query("TASK_FEATURE_LENGTHS")["text_tokens"] == "%TEXT_LENGTH"
    if size == "paper":
        assert str(config.resnet.dtype) == "bfloat16" and config.resnet.stage_sizes == (3, 4, 6, 3)
    else:  # the paper's ResNet stays configured but unused, at ResNetConfig's defaults (as before)
        assert config.resnet == ResNetConfig()
        assert str(config.text_encoder.dtype) == "float32"


@pytest.mark.parametrize(
    "size, front_end, layers, embed_dim, window, rvq",
    [
        ("paper", "pitch", 12, 128, 10.0, (6, 1024)),
        ("small", "pitch", 4, 128, 4.0, (4, 64)),
        ("tiny", "chroma", 2, 64, 2.0, (4, 32)),
    ],
)
def test_melody_sizes(size, front_end, layers, embed_dim, window, rvq):
    _parse(f"models/melody/{size}.gin")
    config = gin_registry.MelodyConfig()
    assert config.front_end == front_end and config.encoder.num_layers == layers and config.embed_dim == embed_dim
    assert (config.window_seconds, config.hop_seconds) == (window, 1.0)
    assert (config.rvq_levels, config.rvq_codebook_size) == rvq
    lengths = _query("TASK_FEATURE_LENGTHS")
    assert lengths["audio"] == lengths["paired_audio"] == int(window * config.sample_rate)
