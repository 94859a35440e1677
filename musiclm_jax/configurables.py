"""Gin registrations of the library's entry functions and configs (imported by gin files).

The library is gin-free; everything gin may bind is named here, type-checked when called.
"""
from musiclm_jax import aot, eval as eval_lib, gin_utils, train as train_lib
from musiclm_jax.data import pipeline
from musiclm_jax.models import gin_registry  # noqa: F401  (model configurables)
from musiclm_jax.training import optimizers, partitioning

train = gin_utils.register(train_lib.train, "train")
evaluate = gin_utils.register(eval_lib.evaluate, "evaluate")
compile_for_topology = gin_utils.register(aot.compile_for_topology, "compile_for_topology")
DatasetConfig = gin_utils.register(pipeline.DatasetConfig, "DatasetConfig")
OptimizerConfig = gin_utils.register(optimizers.OptimizerConfig, "OptimizerConfig")
Partitioner = gin_utils.register(partitioning.Partitioner, "Partitioner")
global_batch_size = gin_utils.register(gin_utils.global_batch_size, "global_batch_size")
