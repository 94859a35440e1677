"""Audio embedders for FAD, by name: a VGGish-compatible network, musicnn's music tagger, MuLan's
audio tower, or any registered one.

    embedder = get_embedder("vggish", weights="/models/vggish.npz")
    points = embedder.fad_points(clips, sample_rate)          # [points, D] for metrics.fad

VGGish (Hershey et al. 2017; the network FAD was defined with) is rebuilt in flax with its
front end in numpy: 16 kHz, 25 ms periodic-Hann frames every 10 ms, |FFT 512|, 64 HTK-mel bands
over 125-7500 Hz, log(mel + 0.01), 0.96 s examples (96 x 64) without overlap; then four conv
blocks (3x3 convs 64 / 128 / 256x2 / 512x2, 2x2 max pools), fc 4096, 4096 and a linear 128-d
embedding (the pre-PCA output FAD uses). Every 0.96 s example of every clip is a FAD point.
The released weights cannot be downloaded here: they load from an .npz holding the TF-slim
variable names (`vggish/conv1/weights`, ..., `vggish/fc2/biases`); `convert_tf_checkpoint`
writes one from the released `vggish_model.ckpt` with TensorFlow, offline. Layer widths follow
the file, so tests use narrow networks of the same architecture.

musicnn (Pons & Serra 2019; `musicnn`) is a published music tagger whose trained weights ship
inside its pip package (MagnaTagATune `MTT_musicnn` and Million Song Dataset `MSD_musicnn`, 3 s
inputs, 50 tags each): a real embedder for real music that loads offline. Its Python code is
TF1-era (tf.layers, numpy < 1.17 pinned), so only its checkpoint files are used: the inference
part of the saved graph is cut out of the `.meta` file, its variables turned into constants from
the checkpoint, and run with tf.compat.v1 (TensorFlow is already a dependency). Its front end is
rebuilt here: 16 kHz, |STFT 512|^2 every 256 samples, 96 Slaney mel bands (librosa), float16
rounding then log10(10000 x + 1) (computed in float32: musicnn's own float16 arithmetic
overflows to inf on loud clips), 187-frame (3 s) patches without overlap, a shorter clip
repeat-padded (as the models were trained). A FAD point is a patch's 200-d penultimate layer;
`tags` gives the 50 tag probabilities. Install: `pip install --no-deps musicnn==0.1.0` (29 MB;
`--no-deps` because its metadata pins numpy < 1.17, which only its unused code needed).

MuLan's audio tower (`mulan`, from a `musiclm train` MuLan directory) gives one point per clip.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Callable, Optional, Sequence

import numpy as np

from musiclm_jax.audio.io import resample
from musiclm_jax.tokenizers.mulan import MuLanEmbedder

VGGISH_RATE = 16000
_CONVS = ("conv1", "conv2", "conv3/conv3_1", "conv3/conv3_2", "conv4/conv4_1", "conv4/conv4_2")
_POOL_AFTER = ("conv1", "conv2", "conv3/conv3_2", "conv4/conv4_2")
_FCS = ("fc1/fc1_1", "fc1/fc1_2", "fc2")


# ---- the VGGish front end ------------------------------------------------------------------


def _hz_to_mel(hz):
    return 1127.0 * np.log(1.0 + np.asarray(hz, np.float64) / 700.0)


def vggish_mel_matrix(
    num_bands: int = 64,
    num_bins: int = 257,
    sample_rate: int = VGGISH_RATE,
    low_hz: float = 125.0,
    high_hz: float = 7500.0,
) -> np.ndarray:
    """[num_bins, num_bands] triangular HTK-mel weights, built in the mel domain; DC gets none."""
    bins_mel = _hz_to_mel(np.linspace(0.0, sample_rate / 2, num_bins))
    edges = np.linspace(_hz_to_mel(low_hz), _hz_to_mel(high_hz), num_bands + 2)
    weights = np.zeros((num_bins, num_bands))
    for i in range(num_bands):
        lower, center, upper = edges[i : i + 3]
        rising = (bins_mel - lower) / (center - lower)
        falling = (upper - bins_mel) / (upper - center)
        weights[:, i] = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0
    return weights


def vggish_examples(waveform: np.ndarray, sample_rate: int) -> np.ndarray:
    """float32 [examples, 96, 64] log-mel patches of a mono clip (none if shorter than 0.975 s)."""
    x = resample(np.asarray(waveform, np.float32), sample_rate, VGGISH_RATE).astype(np.float64)
    window, hop, n_fft = 400, 160, 512
    if len(x) < window:
        return np.zeros((0, 96, 64), np.float32)
    frames = 1 + (len(x) - window) // hop
    index = np.arange(window)[None, :] + hop * np.arange(frames)[:, None]
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(window) / window)  # periodic
    spectrum = np.abs(np.fft.rfft(x[index] * hann, n_fft))
    log_mel = np.log(spectrum @ vggish_mel_matrix() + 0.01)
    count = max(0, 1 + (frames - 96) // 96)
    return (
        np.stack([log_mel[i * 96 : (i + 1) * 96] for i in range(count)]).astype(np.float32)
        if count
        else np.zeros((0, 96, 64), np.float32)
    )


# ---- the network ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class VGGishConfig:
    channels: tuple = (64, 128, 256, 256, 512, 512)
    fc: tuple = (4096, 4096, 128)


def _vggish_module(config: VGGishConfig):
    import flax.linen as nn

    class VGGish(nn.Module):
        @nn.compact
        def __call__(self, x):  # [batch, 96, 64]
            x = x[..., None]
            for name, width in zip(_CONVS, config.channels):
                x = nn.relu(nn.Conv(width, (3, 3), padding="SAME", name=name.replace("/", "_"))(x))
                if name in _POOL_AFTER:
                    x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
            x = x.reshape(x.shape[0], -1)  # NHWC flattened as TF-slim's flatten
            for i, (name, width) in enumerate(zip(_FCS, config.fc)):
                x = nn.Dense(width, name=name.replace("/", "_"))(x)
                if i < len(_FCS) - 1:
                    x = nn.relu(x)
            return x

    return VGGish()


def vggish_params_to_npz(params: dict, path: str) -> None:
    """Writes flax VGGish params under the TF-slim variable names (the weights-file format)."""
    arrays = {}
    for name in (*_CONVS, *_FCS):
        layer = params[name.replace("/", "_")]
        arrays[f"vggish/{name}/weights"] = np.asarray(layer["kernel"])
        arrays[f"vggish/{name}/biases"] = np.asarray(layer["bias"])
    np.savez(path, **arrays)


def convert_tf_checkpoint(checkpoint: str, path: str) -> None:
    """The released TF-slim checkpoint (`vggish_model.ckpt`, obtained separately) -> our .npz."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(checkpoint)
    names = [f"vggish/{n}/{k}" for n in (*_CONVS, *_FCS) for k in ("weights", "biases")]
    np.savez(path, **{n: reader.get_tensor(n) for n in names})


class VGGishEmbedder:
    """VGGish embeddings of 0.96 s examples; weights from an .npz (see module docstring)."""

    name = "vggish"

    def __init__(self, params: dict, config: VGGishConfig, batch_size: int = 64):
        import jax

        self.params, self.config, self.batch_size = params, config, batch_size
        module = _vggish_module(config)
        self._apply = jax.jit(lambda p, x: module.apply({"params": p}, x))

    @classmethod
    def from_npz(cls, path: str, **kwargs) -> "VGGishEmbedder":
        with np.load(path, allow_pickle=False) as f:
            missing = [
                f"vggish/{n}/{k}"
                for n in (*_CONVS, *_FCS)
                for k in ("weights", "biases")
                if f"vggish/{n}/{k}" not in f.files
            ]
            if missing:
                raise ValueError(f"{path} is not a VGGish weights file: it lacks {missing[:3]}...")
            params = {
                n.replace("/", "_"): {"kernel": f[f"vggish/{n}/weights"], "bias": f[f"vggish/{n}/biases"]}
                for n in (*_CONVS, *_FCS)
            }
        config = VGGishConfig(
            channels=tuple(int(params[n.replace("/", "_")]["kernel"].shape[-1]) for n in _CONVS),
            fc=tuple(int(params[n.replace("/", "_")]["kernel"].shape[-1]) for n in _FCS),
        )
        if params["conv1"]["kernel"].shape[:3] != (3, 3, 1):
            raise ValueError(f"{path}: conv1 weights must be [3, 3, 1, C], got {params['conv1']['kernel'].shape}")
        return cls(params, config, **kwargs)

    @staticmethod
    def init_params(config: VGGishConfig, seed: int = 0) -> dict:
        import jax
        import jax.numpy as jnp

        return jax.device_get(_vggish_module(config).init(jax.random.key(seed), jnp.zeros((1, 96, 64)))["params"])

    def embed_examples(self, examples: np.ndarray) -> np.ndarray:
        """[n, 96, 64] log-mel patches -> float32 [n, embedding]."""
        out = []
        for i in range(0, len(examples), self.batch_size):
            chunk = examples[i : i + self.batch_size]
            pad = self.batch_size - len(chunk)  # fixed shape: one compile
            padded = np.concatenate([chunk, np.zeros((pad, 96, 64), np.float32)]) if pad else chunk
            out.append(np.asarray(self._apply(self.params, padded))[: len(chunk)])
        return np.concatenate(out) if out else np.zeros((0, self.config.fc[-1]), np.float32)

    def fad_points(self, clips: Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
        """Every 0.96 s example of every clip: [points, embedding]."""
        examples = [vggish_examples(c, sample_rate) for c in clips]
        if not sum(len(e) for e in examples):
            raise ValueError("VGGish needs clips of at least 0.975 s")
        return self.embed_examples(np.concatenate(examples))


# ---- musicnn (weights from its pip package) ---------------------------------------------------

MUSICNN_RATE = 16000
MUSICNN_FRAMES, MUSICNN_BANDS = 187, 96  # 3 s patches of 96 mel bands
MUSICNN_MODELS = ("MTT_musicnn", "MSD_musicnn")
_MUSICNN_INPUT, _MUSICNN_TRAINING = "model/Placeholder:0", "model/Placeholder_2:0"
_MUSICNN_OUTPUTS = {
    "tags": "model/Sigmoid:0",  # [patches, 50]
    "penultimate": "model/batch_normalization_10/batchnorm/add_1:0",  # [patches, 200]
}
_MUSICNN_INSTALL = "pip install --no-deps musicnn==0.1.0"


def musicnn_package_dir() -> str:
    """The installed `musicnn` package's folder (found without importing its TF1 code)."""
    spec = importlib.util.find_spec("musicnn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"the musicnn embedder needs the musicnn package's weights: {_MUSICNN_INSTALL} "
            "(--no-deps: its metadata pins numpy < 1.17; only its checkpoint files are used)"
        )
    return list(spec.submodule_search_locations)[0]


def musicnn_labels(model: str, model_dir: Optional[str] = None) -> list[str]:
    """The 50 tags of `model` (MTT_* or MSD_*), from the package's configuration.py."""
    import ast

    path = os.path.join(model_dir or musicnn_package_dir(), "configuration.py")
    name = "MTT_LABELS" if model.startswith("MTT") else "MSD_LABELS"
    with open(path) as f:
        for node in ast.parse(f.read()).body:
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == name:
                return list(ast.literal_eval(node.value))
    raise ValueError(f"{path} defines no {name}")


def musicnn_examples(waveform: np.ndarray, sample_rate: int) -> np.ndarray:
    """float32 [patches, 187, 96] log-compressed mel patches of a mono clip (see module doc)."""
    import librosa

    x = resample(np.asarray(waveform, np.float32), sample_rate, MUSICNN_RATE)
    if not len(x):
        return np.zeros((0, MUSICNN_FRAMES, MUSICNN_BANDS), np.float32)
    mel = librosa.feature.melspectrogram(
        y=x, sr=MUSICNN_RATE, hop_length=256, n_fft=512, n_mels=MUSICNN_BANDS, pad_mode="reflect"
    ).T
    mel = np.minimum(mel, np.finfo(np.float16).max).astype(np.float16).astype(np.float32)
    rep = np.log10(10000.0 * mel + 1.0)
    if len(rep) < MUSICNN_FRAMES:
        rep = np.tile(rep, (-(-MUSICNN_FRAMES // len(rep)), 1))[:MUSICNN_FRAMES]
    count = len(rep) // MUSICNN_FRAMES
    return rep[: count * MUSICNN_FRAMES].reshape(count, MUSICNN_FRAMES, MUSICNN_BANDS).astype(np.float32)


def _musicnn_graph(checkpoint_dir: str):
    """The inference graph of a musicnn checkpoint folder (.meta, .index, .data-*) with its
    variables as constants."""
    import tensorflow as tf
    from tensorflow.core.framework import graph_pb2
    from tensorflow.core.protobuf import meta_graph_pb2

    meta = meta_graph_pb2.MetaGraphDef()
    with open(os.path.join(checkpoint_dir, ".meta"), "rb") as f:
        meta.ParseFromString(f.read())
    wanted = [n.split(":")[0] for n in (_MUSICNN_INPUT, _MUSICNN_TRAINING, *_MUSICNN_OUTPUTS.values())]
    by_name = {n.name: n for n in meta.graph_def.node}
    if not set(wanted) <= set(by_name):
        missing = sorted(set(wanted) - set(by_name))
        raise ValueError(f"{checkpoint_dir} is not a musicnn checkpoint: its graph lacks {missing}")
    # The nodes the wanted ones depend on (data and control inputs), in the file's order.
    keep, todo = set(), list(wanted)
    while todo:
        name = todo.pop()
        if name not in keep:
            keep.add(name)
            todo.extend(i.lstrip("^").split(":")[0] for i in by_name[name].input)
    reader = tf.compat.v1.train.NewCheckpointReader(checkpoint_dir + os.sep)  # the files are named '.index' etc.
    frozen = graph_pb2.GraphDef()
    frozen.versions.CopyFrom(meta.graph_def.versions)
    for node in (n for n in meta.graph_def.node if n.name in keep):
        new = frozen.node.add()
        if node.op in ("VariableV2", "Variable"):
            new.name, new.op = node.name, "Const"
            new.attr["dtype"].type = node.attr["dtype"].type
            new.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(reader.get_tensor(node.name)))
        else:
            new.CopyFrom(node)
            new.attr.pop("_output_shapes", None)  # written by TF 1.x; newer TF disagrees on unused ones
            new.device = ""
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(frozen, name="")
    return graph


class MusicnnEmbedder:
    """musicnn's penultimate layer (200-d) per 3 s patch, and its 50 tag probabilities per clip;
    weights from the installed musicnn package (or `model_dir`, a folder laid out as it)."""

    name = "musicnn"

    def __init__(self, model: str = "MTT_musicnn", *, model_dir: Optional[str] = None, batch_size: int = 32):
        import tensorflow as tf

        if model not in MUSICNN_MODELS:
            raise ValueError(f"unknown musicnn model {model!r}; models: {MUSICNN_MODELS}")
        self.model, self.batch_size = model, batch_size
        root = model_dir or musicnn_package_dir()
        checkpoint_dir = os.path.join(root, model)
        if not os.path.exists(os.path.join(checkpoint_dir, ".index")):
            raise FileNotFoundError(f"no musicnn checkpoint in {checkpoint_dir} (expected .meta, .index, .data-*)")
        self.labels = musicnn_labels(model, root)
        self._graph = _musicnn_graph(checkpoint_dir)
        self._session = tf.compat.v1.Session(graph=self._graph)

    def run(self, examples: np.ndarray, output: str) -> np.ndarray:
        """[n, 187, 96] patches -> float32 [n, 200] ('penultimate') or [n, 50] ('tags')."""
        width = 200 if output == "penultimate" else len(self.labels)
        out = [np.zeros((0, width), np.float32)]
        for i in range(0, len(examples), self.batch_size):
            feed = {_MUSICNN_INPUT: examples[i : i + self.batch_size], _MUSICNN_TRAINING: False}
            out.append(np.asarray(self._session.run(_MUSICNN_OUTPUTS[output], feed), np.float32))
        return np.concatenate(out)

    def fad_points(self, clips: Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
        """Every 3 s patch of every clip: [points, 200]."""
        examples = [musicnn_examples(c, sample_rate) for c in clips]
        if not sum(len(e) for e in examples):
            raise ValueError("musicnn needs non-empty clips")
        return self.run(np.concatenate(examples), "penultimate")

    def tags(self, clips: Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
        """[clips, 50] tag probabilities (sigmoid outputs, averaged over each clip's patches)."""
        examples = [musicnn_examples(c, sample_rate) for c in clips]
        empty = [k for k, e in enumerate(examples) if not len(e)]
        if empty:
            raise ValueError(f"musicnn needs non-empty clips; clip {empty[0]} is empty")
        per_patch = self.run(np.concatenate(examples), "tags")
        starts = np.cumsum([0] + [len(e) for e in examples[:-1]])
        return np.add.reduceat(per_patch, starts, axis=0) / np.array([len(e) for e in examples])[:, None]


class MuLanAudioEmbedder:
    """MuLan's audio tower: one unit-norm embedding per clip."""

    name = "mulan"

    def __init__(self, embedder):
        self.embedder = embedder

    @classmethod
    def from_model_dir(cls, model_dir: str) -> "MuLanAudioEmbedder":
        return cls(MuLanEmbedder.from_model_dir(model_dir))

    def fad_points(self, clips: Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
        rate = self.embedder.sample_rate
        return self.embedder.embed_audio([resample(np.asarray(c, np.float32), sample_rate, rate) for c in clips])


_REGISTRY: dict[str, Callable[..., object]] = {
    "vggish": lambda weights, **kw: VGGishEmbedder.from_npz(weights, **kw),
    "mulan": lambda model_dir, **kw: MuLanAudioEmbedder.from_model_dir(model_dir, **kw),
    "musicnn": lambda **kw: MusicnnEmbedder(**kw),
}


def register_embedder(name: str, factory: Callable[..., object]) -> None:
    """Adds an embedder: `factory(**kwargs)` returns an object with `fad_points(clips, sample_rate)`."""
    _REGISTRY[name] = factory


def get_embedder(name: str, **kwargs):
    if name not in _REGISTRY:
        raise ValueError(f"unknown embedder {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](**kwargs)


def num_examples(seconds: float) -> int:
    """VGGish examples in a clip of `seconds` (0.96 s patches of 10 ms frames)."""
    frames = 1 + (int(round(seconds * VGGISH_RATE)) - 400) // 160
    return max(0, 1 + (frames - 96) // 96) if frames >= 96 else 0
