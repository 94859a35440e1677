"""Runs the `musiclm` CLI (argv as given) and records every file this process writes, for the
multi-host tests: a Python audit hook appends each write (open for writing, mkdir, rename,
remove) to the file named by MUSICLM_WRITE_LOG. Writes by C++ libraries (TensorStore's arrays,
TensorFlow's event files) are not seen; the tests check those by the files they leave."""

import os
import sys

LOG = os.environ["MUSICLM_WRITE_LOG"]
_log = open(LOG, "a", buffering=1)  # noqa: SIM115 - open for the life of the process
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _record(event, args):
    if event == "open":
        path, mode, flags = args
        writes = (mode is not None and any(c in str(mode) for c in "wax+")) or (
            mode is None and isinstance(flags, int) and flags & _WRITE_FLAGS
        )
        if not writes or not isinstance(path, (str, bytes, os.PathLike)):
            return
        paths = [path]
    elif event in ("os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree"):
        paths = [args[0]]
    elif event == "os.rename":
        paths = [args[0], args[1]]
    else:
        return
    for p in paths:
        p = os.fsdecode(p) if isinstance(p, bytes) else os.fspath(p)
        if p != LOG:
            _log.write(f"{event}\t{os.path.abspath(p)}\n")


sys.addaudithook(_record)

from musiclm_jax.main import run  # noqa: E402

sys.argv = ["musiclm", *sys.argv[1:]]
run()
