"""Gin registrations of the library's entry functions and configs (imported by gin files).

The library is gin-free; everything gin may bind is named here, type-checked when called.
The model classes and the optimiser are registered in `gin_registry` (model gin files need
only that module, never the data stack).
"""

from musiclm_jax import aot, gin_registry, gin_utils, inspect_data, precompute
from musiclm_jax import eval as eval_lib
from musiclm_jax import export as export_lib
from musiclm_jax import generate as generate_lib
from musiclm_jax import pipeline as pipeline_lib
from musiclm_jax import serve as serve_lib
from musiclm_jax import train as train_lib
from musiclm_jax.data import (
    audio_tasks,
    input_pipeline,
    melody_tasks,
    sources,
    synthetic,
    text_vocab,
    token_cache_tasks,
)
from musiclm_jax.models import musiclm
from musiclm_jax.tokenizers import melody as melody_tokenizer
from musiclm_jax.tokenizers import mulan as mulan_tokenizer
from musiclm_jax.tokenizers import semantic as semantic_tokenizer
from musiclm_jax.training import partitioning

train = gin_utils.register(train_lib.train, "train")
evaluate = gin_utils.register(eval_lib.evaluate_checkpoint, "evaluate")  # the `eval` mode
# The text-to-music eval task (runs/eval_text_to_music.gin): generate per caption, FAD/KLD/MCC, report.
evaluate_text_to_music = gin_utils.register(eval_lib.evaluate_text_to_music, "evaluate_text_to_music")
compile_for_topology = gin_utils.register(aot.compile_for_topology, "compile_for_topology")
DatasetConfig = gin_utils.register(input_pipeline.DatasetConfig, "DatasetConfig")
OptimizerConfig = gin_registry.OptimizerConfig  # registered with the models (see there)
Partitioner = gin_utils.register(partitioning.Partitioner, "Partitioner")
global_batch_size = gin_utils.register(gin_utils.global_batch_size, "global_batch_size")
inspect_task = gin_utils.register(inspect_data.inspect_task, "inspect_task")
# Raw-audio tasks: `TASK = @register_audio_task()` registers the task when a binding uses it.
register_audio_task = gin_utils.register(audio_tasks.register_audio_task, "register_audio_task")
register_tfds_audio_task = gin_utils.register(audio_tasks.register_tfds_audio_task, "register_tfds_audio_task")
SyntheticSource = gin_utils.register(synthetic.SyntheticSource, "SyntheticSource")
ManifestSource = gin_utils.register(sources.ManifestSource, "ManifestSource")
MusicCapsSource = gin_utils.register(sources.MusicCapsSource, "MusicCapsSource")
FolderSource = gin_utils.register(sources.FolderSource, "FolderSource")
# The caption vocabulary kept with the model (trained on first use):
#   mulan_task/register_audio_task.text_vocabulary = @caption_vocabulary()
caption_vocabulary = gin_utils.register(text_vocab.caption_vocabulary, "caption_vocabulary")
# MuLan tokens: the RVQ fitted on a trained MuLan's audio embeddings.
fit_mulan_rvq = gin_utils.register(mulan_tokenizer.fit_mulan_rvq, "fit_mulan_rvq")
# The melody model's pairs (same tune, different renditions) and its tokens' RVQ.
register_melody_pair_task = gin_utils.register(melody_tasks.register_melody_pair_task, "register_melody_pair_task")
fit_melody_rvq = gin_utils.register(melody_tokenizer.fit_melody_rvq, "fit_melody_rvq")
# Semantic tokens: k-means of a trained w2v-BERT's layer embeddings.
fit_semantic_kmeans = gin_utils.register(semantic_tokenizer.fit_semantic_kmeans, "fit_semantic_kmeans")
# Token precompute: the three frozen tokenizers over a raw-audio task, into a seqio token cache,
# and token tasks that crop it (TASK = @register_token_task()).
precompute_tokens = gin_utils.register(precompute.precompute_tokens, "precompute_tokens")
register_token_task = gin_utils.register(token_cache_tasks.register_token_task, "register_token_task")
# Text -> music from the trained models' directories (runs/generate.gin).
generate = gin_utils.register(generate_lib.generate, "generate")
SamplingSettings = gin_utils.register(musiclm.SamplingSettings, "SamplingSettings")
# The web page and JSON API over the five models' directories (runs/serve.gin).
serve = gin_utils.register(serve_lib.run_server, "serve")
# Export: the five models params-only + StableHLO samplers and codec decoder (runs/export.gin).
export_musiclm = gin_utils.register(export_lib.export_musiclm, "export_musiclm")
# The whole recipe on the synthetic source (gin/pipeline/<size>.gin; steps in gin/pipeline/<size>/).
run_pipeline = gin_utils.register(pipeline_lib.run_pipeline, "run_pipeline")
