"""Registers the model classes with gin (the library itself does not depend on gin).

Gin files `import musiclm_jax.models.gin_registry`, then bind e.g. `StageConfig.num_layers`
and `MODEL = @StageModel()`. Names are also reachable with their module prefix
(`musiclm_jax.models.StageConfig`).
"""
import gin

from musiclm_jax.models import stages, token_layout

_MODULE = "musiclm_jax.models"

TokenLayout = gin.external_configurable(token_layout.TokenLayout, module=_MODULE)
StageConfig = gin.external_configurable(stages.StageConfig, module=_MODULE)
StageModel = gin.external_configurable(stages.StageModel, module=_MODULE)
