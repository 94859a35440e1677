"""Runs the `musiclm` CLI in a subprocess, as a user would (shared by the CLI tests)."""

import os
import subprocess
import sys

ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3", "XLA_FLAGS": ""}


def musiclm(*args, timeout=300, cwd="/"):
    """Runs the CLI from an unrelated directory."""
    return subprocess.run(
        [sys.executable, "-m", "musiclm_jax.main", *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
        cwd=cwd,
    )
