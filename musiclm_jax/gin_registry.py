"""Registers the model classes with gin (the library itself does not depend on gin).

Gin files `import musiclm_jax.gin_registry`, then bind e.g. `StageConfig.num_layers`
and `MODEL = @StageModel()`. Names are also reachable with their module prefix
(`musiclm_jax.models.StageConfig`).
"""

import gin
from musiclm_jax import model_io
from musiclm_jax.models import stages, token_layout

_MODULE = "musiclm_jax.models"

TokenLayout = gin.external_configurable(token_layout.TokenLayout, module=_MODULE)
StageConfig = gin.external_configurable(stages.StageConfig, module=_MODULE)
StageModel = gin.external_configurable(stages.StageModel, module=_MODULE)
LoRAModel = gin.external_configurable(model_io.lora_model, "LoRAModel", module=_MODULE)

# SoundStream (the codec) and its building blocks' configs.
from musiclm_jax.models import soundstream  # noqa: E402
from musiclm_jax.nn import discriminators, seanet  # noqa: E402

SEANetConfig = gin.external_configurable(seanet.SEANetConfig, module=_MODULE)
DiscriminatorConfig = gin.external_configurable(discriminators.DiscriminatorConfig, module=_MODULE)
SoundStreamConfig = gin.external_configurable(soundstream.SoundStreamConfig, module=_MODULE)
SoundStream = gin.external_configurable(soundstream.SoundStream, module=_MODULE)

# MuLan and its towers' configs.
from musiclm_jax.models import mulan  # noqa: E402
from musiclm_jax.nn import encoders  # noqa: E402

EncoderConfig = gin.external_configurable(encoders.EncoderConfig, module=_MODULE)
ResNetConfig = gin.external_configurable(encoders.ResNetConfig, module=_MODULE)
MuLanConfig = gin.external_configurable(mulan.MuLanConfig, module=_MODULE)
MuLan = gin.external_configurable(mulan.MuLan, module=_MODULE)

# The melody embedding model (melody tokens).
from musiclm_jax.models import melody  # noqa: E402

MelodyConfig = gin.external_configurable(melody.MelodyConfig, module=_MODULE)
MelodyModel = gin.external_configurable(melody.MelodyModel, module=_MODULE)

# w2v-BERT (semantic tokens) and its conformer config.
from musiclm_jax.models import w2v_bert  # noqa: E402
from musiclm_jax.nn import conformer  # noqa: E402

ConformerConfig = gin.external_configurable(conformer.ConformerConfig, module=_MODULE)
W2vBertConfig = gin.external_configurable(w2v_bert.W2vBertConfig, module=_MODULE)
W2vBert = gin.external_configurable(w2v_bert.W2vBert, module=_MODULE)

# The optimiser the model files bind: registered here (not in `configurables`) so that a model's gin
# file needs only models + training code, never the data stack (seqio, TensorFlow): benches and
# exports parse model files on machines without it.
from musiclm_jax import gin_utils  # noqa: E402
from musiclm_jax.training import optimizers  # noqa: E402

OptimizerConfig = gin_utils.register(optimizers.OptimizerConfig, "OptimizerConfig")
