"""Runs the `musiclm` CLI in a subprocess, as a user would (shared by the CLI tests)."""

import os
import subprocess
import sys


def env(**extra) -> dict[str, str]:
    """The environment for a CLI subprocess, read now: fixtures (the GCS emulator) set variables
    that the child must see."""
    return {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3", "XLA_FLAGS": "", **extra}


def musiclm(*args, timeout=300, cwd="/"):
    """Runs the CLI from an unrelated directory."""
    return subprocess.run(
        [sys.executable, "-m", "musiclm_jax.main", *args],
        capture_output=True,
        text=True,
        env=env(),
        timeout=timeout,
        cwd=cwd,
    )
