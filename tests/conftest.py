"""Tests run on CPU with 8 simulated devices (for sharding), deterministic seeds."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Compiled programs are kept on disk for the session: the CLI tests' subprocesses and tests
# that rebuild an identical trainer load them instead of compiling again.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="musiclm-tests-xla-cache-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=8").strip()

import pytest  # noqa: E402

# The files whose tests read the tiny pipeline fixture (~2.5 min to build): one xdist worker runs
# them all, so it is built once (test_conftest_groups checks the list against the files).
TINY_PIPELINE_FILES = (
    "tests/test_mulan.py",
    "tests/test_pipeline.py",
    "tests/test_pipeline_data.py",
    "tests/test_pipeline_markers.py",
)


def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist (`-n 2`, pytest.ini) sends whole files to a worker, as `--dist loadfile` does
    (module fixtures are built once), and the tiny pipeline's files together."""
    from xdist.scheduler import LoadScopeScheduling

    class FileScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::")[0]
            return "tiny_pipeline" if path in TINY_PIPELINE_FILES else path

    return FileScheduling(config, log)


@pytest.fixture
def tiny_stage_config():
    from musiclm_jax.models.stages import StageConfig

    return StageConfig(
        num_layers=2, num_heads=4, head_dim=16, d_model=64, d_ff=256, dropout_rate=0.0, cond_dropout_rate=0.0
    )


@pytest.fixture(scope="session")
def tokenizer_model_dirs(tmp_path_factory):
    """Random-init tiny MuLan, w2v-BERT and SoundStream directories (tests/model_dirs.py), built
    once per session: the precompute and generation tests read them, never write them."""
    from model_dirs import tokenizer_dirs

    return tokenizer_dirs(tmp_path_factory.mktemp("tokenizer_models"))


@pytest.fixture(scope="session")
def musiclm_model_dirs(tmp_path_factory, tokenizer_model_dirs):
    """The five model directories of a random-init tiny MusicLM (generation and export tests)."""
    from model_dirs import musiclm_dirs

    return musiclm_dirs(tmp_path_factory.mktemp("musiclm_models"), tokenizer_model_dirs)


@pytest.fixture(scope="session")
def melody_model_dirs(tmp_path_factory, musiclm_model_dirs):
    """The MusicLM directories with a random-init melody model and a melody-conditioned semantic stage."""
    from model_dirs import melody_dirs

    return melody_dirs(tmp_path_factory.mktemp("melody_models"), musiclm_model_dirs)


PIPELINE_SECONDS = 1.0


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    """`musiclm pipeline` at the tiny sizes, run once per session: (model directory, summary).
    test_pipeline checks it end to end; other tests read its trained models (copy before writing)."""
    from musiclm_jax import pipeline

    model_dir = str(tmp_path_factory.mktemp("pipeline"))
    return model_dir, pipeline.run_pipeline(
        model_dir=model_dir, size="tiny", seconds=PIPELINE_SECONDS, num_prompts=2, train_captions_checked=64
    )


# Object-store clients never look for cloud credentials or a metadata server beyond localhost.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")  # else gcsfs asks a gRPC API per bucket
os.environ.setdefault("NO_GCE_CHECK", "true")
os.environ.setdefault("GCE_METADATA_HOST", "127.0.0.1:9")  # google-auth
os.environ.setdefault("GCE_METADATA_IP", "127.0.0.1:9")  # jax, TensorStore
# Until the emulator fixture points them at itself, gs:// clients go to a closed local port:
# a test that forgot the fixture fails fast instead of reaching storage.googleapis.com.
os.environ.setdefault("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")
os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", "http://127.0.0.1:9")


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
    """A GCS JSON API server on localhost (the `gcp-storage-emulator` package) for the whole
    session, with every client pointed at it through its documented setting (gcsfs and
    google-cloud-storage: STORAGE_EMULATOR_HOST; TensorStore, orbax's arrays:
    TENSORSTORE_GCS_HTTP_URL). Subprocesses inherit them. Returns the bucket URL ("gs://musiclm-test");
    tests write under their own prefix in it."""
    from emulators import start_gcs_emulator

    server = start_gcs_emulator(tmp_path_factory.mktemp("gcs"), bucket="musiclm-test")
    saved = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    yield "gs://musiclm-test"
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
