"""A TFDS builder over a JSONL manifest, built offline (nothing is downloaded).

`MusicManifest` reads the manifest through `ManifestSource` (same decoding, splits and
bad-input accounting) and writes `audio` (float32 mono at the config's rate, stored raw,
so it round-trips bit-exactly), `caption` and `id` for "train" and "validation". The
prepare step is plain Python; reading back with `builder.as_dataset` is pure TF.

    builder = build_manifest_dataset("/data/music.jsonl", "/data/tfds", sample_rate=24000)
    ds = builder.as_dataset(split="train")
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from musiclm_jax import fileio
from musiclm_jax.data.sources import ManifestSource


@dataclasses.dataclass
class MusicManifestConfig(tfds.core.BuilderConfig):
    """Which manifest, at which rate. The config name keys the folder under data_dir."""

    manifest_path: str = ""
    sample_rate: int = 24000
    validation_fraction: float = 0.05
    min_seconds: float = 0.0
    normalize_db: float | None = None


class MusicManifest(tfds.core.GeneratorBasedBuilder):
    """Audio + caption examples from a JSONL manifest (see `ManifestSource`)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First version: float32 mono audio, caption, id."}
    BUILDER_CONFIGS: list[MusicManifestConfig] = []  # configs are made per manifest

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS's own lookup needs `importlib_resources`, which it does not install; this module
        # is the answer it would find anyway (no checksums.tsv next to it: nothing to download).
        return epath.Path(__file__)

    @property
    def _config(self) -> MusicManifestConfig:
        config = self.builder_config
        if not isinstance(config, MusicManifestConfig) or not config.manifest_path:
            raise ValueError("MusicManifest needs config=MusicManifestConfig(name=..., manifest_path=...)")
        return config

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "audio": tfds.features.Audio(shape=(None,), dtype=np.float32, sample_rate=self._config.sample_rate),
                    "caption": tfds.features.Text(),
                    "id": tfds.features.Text(),
                }
            ),
            supervised_keys=None,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # everything is local
        # Only splits the manifest has: a collection may be all "train" by its own split column.
        return {split: self._generate_examples(split) for split in self._source().splits_present()}

    def _source(self) -> ManifestSource:
        config = self._config
        return ManifestSource(
            config.manifest_path,
            sample_rate=config.sample_rate,
            min_seconds=config.min_seconds,
            normalize_db=config.normalize_db,
            validation_fraction=config.validation_fraction,
        )

    def _generate_examples(self, split: str):
        for example in self._source().examples(split):
            yield example.id, {"audio": example.audio, "caption": example.caption, "id": example.id}


def manifest_config(manifest_path: str | os.PathLike, sample_rate: int, **kwargs) -> MusicManifestConfig:
    """A config named after the manifest and rate, so datasets of different manifests coexist."""
    path = fileio.resolve(manifest_path)
    stem = "".join(c if c.isalnum() else "_" for c in os.path.splitext(fileio.basename(path))[0]).lower()
    digest = hashlib.sha256(path.encode("utf-8")).hexdigest()[:8]
    return MusicManifestConfig(
        name=f"{stem}_{sample_rate}hz_{digest}", manifest_path=path, sample_rate=int(sample_rate), **kwargs
    )


def build_manifest_dataset(
    manifest_path: str | os.PathLike, data_dir: str | os.PathLike, sample_rate: int, **config_kwargs
) -> MusicManifest:
    """Builds (or reuses) the dataset of `manifest_path` under `data_dir`, offline."""
    builder = MusicManifest(
        config=manifest_config(manifest_path, sample_rate, **config_kwargs), data_dir=os.fspath(data_dir)
    )
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            try_download_gcs=False, compute_stats=tfds.download.ComputeStatsMode.SKIP
        )
    )
    return builder
