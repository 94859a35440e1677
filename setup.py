"""musiclm-jax: a TPU-native JAX/Flax implementation of MusicLM."""

import pathlib

import setuptools

HERE = pathlib.Path(__file__).parent
JAX_VERSION = "0.10.2"

# Ranges verified to install together on Python 3.11 (see README "Install").
INSTALL_REQUIRES = [
    f"jax=={JAX_VERSION}",
    f"jaxlib=={JAX_VERSION}",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.5,<0.3",
    "orbax-checkpoint>=0.12.0,<0.13",
    "gin-config>=0.5.0,<0.6",
    "seqio==0.0.20",
    # seqio needs tensorflow-text, and the two must be the same minor version.
    "tensorflow>=2.21,<2.22",
    "tensorflow-text>=2.21,<2.22",
    "tensorflow-datasets>=4.9.9,<5",
    # beam pins protobuf < 7; sentencepiece 0.2.3 needs protobuf 7.
    "protobuf>=5.29,<7",
    "sentencepiece==0.2.1",
    "clu>=0.0.12",
    "tensorboard>=2.21,<2.22",
    "librosa>=0.11,<0.12",
    # Ships the GM SoundFont TimGM6mb.sf2 the synthetic source's sampled instruments play
    # (data/soundfont.py parses it itself; pure Python, no FluidSynth).
    "pretty_midi>=0.2.10,<0.3",
    "soundfile>=0.13",  # libsndfile >= 1.1 decodes mp3 too
    "scipy>=1.11",
    "scikit-learn>=1.5,<2",  # the token probes (evaluation/token_probes.py); librosa needs it too
    "numpy>=2.0,<3",
    "tqdm>=4.66",
    "absl-py>=2.1",
    "matplotlib>=3.8",
    # `musiclm precompute` runs the token cache pipeline on Beam (DirectRunner locally, Dataflow at scale).
    "apache-beam[tfrecord]>=2.77,<2.78",
    # gs:// model directories, token caches and exports (musiclm_jax/fileio.py: etils epath over fsspec).
    "gcsfs>=2026.9",
    # `musiclm serve`: a small ASGI app (the page is plain HTML; nothing is fetched at run time).
    "starlette>=1.10,<2",
    "uvicorn>=0.55,<1",
    "python-multipart>=0.0.34",  # uploads (a tune, a clip to continue)
]

EXTRAS_REQUIRE = {
    "test": [
        "pytest>=8,<10",
        "pytest-timeout>=2.3",
        "pytest-xdist>=3.6",  # two workers (pytest.ini): most tests wait on one-threaded XLA compiles
        "ruff>=0.17,<0.18",  # lint + format check in CI
        "gcp-storage-emulator>=2026.7",  # a GCS API server on localhost for the gs:// tests
        "uv>=0.13",  # tpu_scripts' `setup` makes the workers' Python 3.11 virtualenv with uv
        "requests>=2.32",  # the serve tests' HTTP client
        "websocket-client>=1.8",  # drives headless Chromium over the DevTools protocol (tests/browser.py)
    ],
    # libtpu: runs on TPU VMs, and compiles for TPU topologies on any host (`musiclm aot`).
    "tpu": [f"jax[tpu]=={JAX_VERSION}"],
    # `export_tf.export_savedmodel`: a TF SavedModel of an export bundle (TensorFlow comes with
    # seqio already; the extra names it for installs that only serve).
    "savedmodel": ["tensorflow>=2.21,<2.22"],
    # Not an extra: musicnn==0.1.0 (the eval's offline real-music embedder, evaluation/embedders.py)
    # pins numpy < 1.17 for TF1 code we do not use, which no resolver can satisfy beside numpy 2;
    # install it with `pip install --no-deps musicnn==0.1.0` (.ci/run does).
}


def gin_files():
    # The top-level gin/ folder ships inside the package as `musiclm_jax.gin`.
    return [str(p.relative_to(HERE / "gin")) for p in (HERE / "gin").rglob("*.gin")]


setuptools.setup(
    name="musiclm-jax",
    version="0.1.0",
    description="MusicLM in JAX/Flax: text-to-music, TPU-native",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.12",
    packages=setuptools.find_packages(include=["musiclm_jax", "musiclm_jax.*"]) + ["musiclm_jax.gin"],
    package_dir={"musiclm_jax.gin": "gin"},
    package_data={"musiclm_jax.gin": gin_files(), "musiclm_jax.serve": ["page.html"]},
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={"console_scripts": ["musiclm=musiclm_jax.main:run"]},
)
