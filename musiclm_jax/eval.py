"""`musiclm eval`: metrics of a checkpoint on an eval split (`evaluate`), or the text-to-music
eval task of the five trained models (`evaluate_text_to_music`). Keyword-only entry functions."""

from __future__ import annotations

import json
from typing import Mapping, Optional

import jax

from musiclm_jax import fileio
from musiclm_jax.data.input_pipeline import BatchIterator, DatasetConfig
from musiclm_jax.evaluation import embedders as embedders_lib
from musiclm_jax.evaluation import eval_sets, text_to_music
from musiclm_jax.generate import MODEL_DIRS, load_musiclm
from musiclm_jax.models.base import BaseModel
from musiclm_jax.run_setup import global_shapes, start_run
from musiclm_jax.training import checkpoints, summaries
from musiclm_jax.training.actions import eval_media, run_eval_batches
from musiclm_jax.training.optimizers import OptimizerConfig
from musiclm_jax.training.partitioning import Partitioner
from musiclm_jax.training.trainer import Trainer


def evaluate_checkpoint(
    *,
    model: BaseModel,
    model_dir: str,
    eval_dataset_cfg: DatasetConfig,
    eval_steps: int = 50,
    checkpoint_path: Optional[str] = None,
    partitioner: Optional[Partitioner] = None,
    on_start=None,
) -> dict[str, float]:
    """The `eval` mode: a checkpoint's metrics on an eval split.

    Args:
      model: the model the checkpoint was trained as.
      model_dir: the training directory (local or a gs:// URL); eval summaries (eval/), the eval
        media (`eval-<step>-media/`), the model's own eval report and, last, `eval-<step>.json`
        are written here.
      eval_dataset_cfg: the eval split and its batches.
      eval_steps: how many batches to average over (fewer if the split ends first).
      checkpoint_path: a checkpoints/ directory or one step's directory; default model_dir's latest.
      partitioner: the mesh and rules (default: every device on the data axis).
      on_start: called with the model dir once it exists (the CLI writes config.gin).
    Returns:
      {metric: mean over the batches}.
    Raises:
      CheckpointError: no checkpoint to restore. ValueError: the split yields no full batch.
    """
    model_dir, partitioner = start_run(model_dir, partitioner, on_start)
    first = next(BatchIterator(eval_dataset_cfg, repeat=False))
    trainer = Trainer(model, partitioner, OptimizerConfig(), total_steps=1, input_shapes=global_shapes(first))
    source = checkpoint_path or fileio.join(model_dir, "checkpoints")
    params, step = checkpoints.restore_params(source, trainer.abstract_state.params)
    cfg = eval_dataset_cfg
    results = run_eval_batches(
        trainer,
        params,
        BatchIterator(cfg, repeat=False),
        eval_steps,
        f"split {cfg.split!r} of {cfg.mixture_or_task_name!r} in batches of {cfg.batch_size}",
    )
    writer = summaries.create_writer(fileio.join(model_dir, "eval"))
    writer.write_scalars(step, results)
    summaries.write_eval_media(
        writer,
        step,
        eval_media(trainer, params, first),
        model.media_sample_rate(),
        out_dir=fileio.join(model_dir, f"eval-{step}-media"),
    )
    writer.flush()
    if jax.process_index() == 0:
        # The model's own report (plots: local-file libraries) staged locally for a URL, then
        # eval-<step>.json last: once it exists the eval's files are all there.
        with fileio.local_dir(model_dir) as report_dir:
            model.write_eval_report(results, report_dir, step)
        fileio.write_text(
            fileio.join(model_dir, f"eval-{step}.json"),
            json.dumps(
                {
                    "step": step,
                    "checkpoint": source,
                    "task": eval_dataset_cfg.mixture_or_task_name,
                    "split": eval_dataset_cfg.split,
                    "metrics": results,
                },
                indent=2,
            ),
        )
    summaries.log(
        "eval of step %d on %s/%s: %s",
        step,
        eval_dataset_cfg.mixture_or_task_name,
        eval_dataset_cfg.split,
        ", ".join(f"{k} {v:.4f}" for k, v in sorted(results.items())),
    )
    return results


def evaluate_text_to_music(
    *,
    output_dir: str,
    model_dirs: Mapping[str, Optional[str]],
    seconds: float = 4.0,
    num_items: int = 16,
    task: Optional[str] = None,
    split: str = "validation",
    semantic_rate: float = 25.0,
    windows=None,
    settings=None,
    seed: int = 0,
    num_candidates: int = 1,
    batch_size: int = 8,
    embedders: Optional[dict] = None,
    classifier: Optional[str] = "synthetic_attributes",
    classifier_kwargs: Optional[dict] = None,
    num_report_samples: int = 8,
) -> dict:
    """`musiclm eval` with runs/eval_text_to_music.gin: generates for `num_items` captions of the
    eval set and writes metrics, WAVs, TensorBoard and report.html to `output_dir`.

    Args:
      output_dir: where results.json, the WAVs, tensorboard/ and report.html go.
      model_dirs, semantic_rate, windows: the model, as `generate.load_musiclm` takes it.
      seconds: length of each reference clip and generation.
      num_items: captions to generate for (at least 2: KAD compares pairs within each set).
      task, split: a captioned raw-audio seqio task (e.g. MusicCaps) and its split; task None:
        held-out synthetic pieces, whose labels make attribute adherence measurable.
      settings, num_candidates, seed, batch_size: sampling, as `generate` takes them; batch_size
        captions are generated together.
      embedders: {name: kwargs} of FAD / KAD embedders (evaluation.embedders); 'mulan' with no
        kwargs is the generating model's MuLan; 'musicnn' (no kwargs) is the published MTT music
        tagger whose weights come with `pip install --no-deps musicnn==0.1.0`. FAD and FAD-inf
        need more clips (points) than the embedding has dimensions: with fewer, results.json says
        why under too_few_clips and KAD is the distance to read.
      classifier: the KLD classifier's registered name (None: no KLD): 'synthetic_attributes'
        (trained into output_dir/attribute_classifier unless `classifier_kwargs` names a
        `directory` holding one) or 'musicnn_tags' (musicnn's tags, for real music).
      num_report_samples: audio players on the report page.
    Returns:
      The results (as results.json), with `output_dir` and `num_items`.
    Raises:
      ValueError: a bad length, item count or batch size, an unknown embedder or classifier.
    """
    if not seconds > 0 or num_items < 2 or batch_size < 1:
        raise ValueError(
            f"need seconds > 0, num_items >= 2 (KAD and FAD compare pairs within each set) and batch_size >= 1; got "
            f"{seconds}, {num_items}, {batch_size}"
        )
    model = load_musiclm(model_dirs, semantic_rate=semantic_rate, windows=windows)
    if task:
        items = eval_sets.task_eval_set(task, split, num_items, seconds)
    else:
        items = eval_sets.synthetic_eval_set(num_items, seconds, sample_rate=model.codec.sample_rate)
    fad_embedders = {
        name: (
            embedders_lib.MuLanAudioEmbedder(model.mulan)
            if name == "mulan" and not kwargs
            else embedders_lib.get_embedder(name, **kwargs)
        )
        for name, kwargs in (embedders if embedders is not None else {"mulan": {}}).items()
    }
    kld_classifier = None
    if classifier:
        kwargs = dict(classifier_kwargs or {})
        if classifier == "synthetic_attributes":  # trained once, kept with the eval
            kwargs.setdefault("directory", fileio.join(output_dir, "attribute_classifier"))
        kld_classifier = text_to_music.get_classifier(classifier, **kwargs)
    return text_to_music.generate_and_score(
        output_dir,
        items,
        model=model,
        seconds=seconds,
        embedders=fad_embedders,
        classifier=kld_classifier,
        seed=seed,
        settings=settings,
        num_candidates=num_candidates,
        batch_size=batch_size,
        num_report_samples=num_report_samples,
        title=f"text-to-music eval: {task or 'synthetic held-out'} ({split})",
        extra={
            "task": task or "synthetic",
            "split": split,
            "models": {k.removesuffix("_dir"): model_dirs[k] for k in MODEL_DIRS},
        },
    )
