"""One path layer for local paths and object-store URLs (gs://, s3://): every model directory,
checkpoint, token cache, eval directory, export and generated output is read and written here.

Built on etils `epath`, which orbax already uses for its checkpoint files, so our files and
orbax's go through the same client. For URLs that client is fsspec (gcsfs for gs://): this
module sets EPATH_USE_TF=false (unless the environment says otherwise) because TensorFlow's own
GCS client has a fixed endpoint and could not be tested against a local storage server;
gcsfs and TensorStore (orbax's arrays) honour STORAGE_EMULATOR_HOST / TENSORSTORE_GCS_HTTP_URL.

What a write promises:
  local paths   `write_text` / `write_bytes` / `write_json` write a temporary file and rename it,
                so a reader sees the old file or the new one, never a part.
  object stores an object becomes visible only when its upload completes (GCS, S3), so one
                file is as whole as on disk; there is no rename, so a multi-file output (an
                export bundle, a token cache split, a pipeline step) is complete only when its
                marker file, written last, exists. Checkpoints use orbax's commit markers.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import posixpath
import shutil
import tempfile
from typing import Any, Iterator

import numpy as np

# Before epath picks a backend (it reads this on every call).
os.environ.setdefault("EPATH_USE_TF", "false")

from etils import epath  # noqa: E402

PathLike = str | os.PathLike


def is_url(path: PathLike) -> bool:
    """True for object-store URLs such as gs://bucket/dir (anything with a scheme)."""
    return "://" in os.fspath(path)


def resolve(path: PathLike) -> str:
    """A canonical string: local paths absolute (~ expanded), URLs as given without a trailing /.
    Never `os.path.abspath` a URL: gs://b/run would become <cwd>/gs:/b/run."""
    path = os.fspath(path)
    if is_url(path):
        scheme, rest = path.split("://", 1)
        return f"{scheme}://{posixpath.normpath(rest) if rest.strip('/') else rest}".rstrip("/")
    return os.path.abspath(os.path.expanduser(path))


def join(base: PathLike, *parts: str) -> str:
    base = os.fspath(base)
    return posixpath.join(base, *parts) if is_url(base) else os.path.join(base, *parts)


def dirname(path: PathLike) -> str:
    path = os.fspath(path).rstrip("/")
    return posixpath.dirname(path) if is_url(path) else os.path.dirname(path)


def basename(path: PathLike) -> str:
    return os.fspath(path).rstrip("/").rsplit("/", 1)[-1]


def path(p: PathLike) -> epath.Path:
    """The epath.Path of a local path or URL (for what this module does not wrap)."""
    return epath.Path(os.fspath(p))


def _fresh(p: PathLike) -> epath.Path:
    """The path, with the object-store client's cached listings dropped first: other hosts and
    processes write to the same bucket, and a stale listing would hide their files."""
    p = os.fspath(p)
    if is_url(p):
        from etils.epath import backend

        backend.fsspec_backend.fs(p).invalidate_cache(p)
    return path(p)


def exists(p: PathLike) -> bool:
    return _fresh(p).exists()


def isdir(p: PathLike) -> bool:
    return _fresh(p).is_dir()


def isfile(p: PathLike) -> bool:
    return _fresh(p).is_file()


def makedirs(p: PathLike) -> None:
    """Creates a directory and its parents (a no-op on object stores, which have no directories)."""
    path(p).mkdir(parents=True, exist_ok=True)


def listdir(p: PathLike) -> list[str]:
    """The names in a directory, sorted ([] when it does not exist)."""
    d = _fresh(p)
    if not d.is_dir():
        return []
    return sorted(child.name for child in d.iterdir())


def glob(directory: PathLike, pattern: str) -> list[str]:
    """Paths in `directory` matching a glob pattern, sorted."""
    return sorted(os.fspath(p) for p in _fresh(directory).glob(pattern))


def remove(p: PathLike) -> None:
    """Deletes a file, or a directory with everything under it; nothing if absent."""
    target = path(p)
    if target.is_dir():
        target.rmtree()
    elif target.exists():
        target.unlink()


def open(p: PathLike, mode: str = "r"):  # noqa: A001 - the builtin's name on purpose
    return path(p).open(mode)


def read_text(p: PathLike) -> str:
    return path(p).read_text()


def read_bytes(p: PathLike) -> bytes:
    return path(p).read_bytes()


def write_bytes(p: PathLike, data: bytes) -> None:
    """Writes a whole file (see the module docstring for what a reader can see meanwhile)."""
    p = os.fspath(p)
    if is_url(p):
        path(p).write_bytes(data)
        return
    os.makedirs(os.path.dirname(os.path.abspath(p)), exist_ok=True)
    tmp = f"{p}.tmp{os.getpid()}"
    with builtins.open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, p)


def write_text(p: PathLike, text: str) -> None:
    write_bytes(p, text.encode("utf-8"))


def read_json(p: PathLike) -> Any:
    return json.loads(read_text(p))


def write_json(p: PathLike, data: Any) -> None:
    """JSON, whole or absent, with numpy scalars and arrays converted."""
    write_text(p, json.dumps(data, indent=1, sort_keys=True, default=_json_default))


def _json_default(x):
    if isinstance(x, (np.integer, np.floating, np.bool_)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def copy(src: PathLike, dst: PathLike) -> None:
    """Copies one file (local or URL on either side); the destination is written whole."""
    src, dst = os.fspath(src), os.fspath(dst)
    if not is_url(src) and not is_url(dst):
        os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
        tmp = f"{dst}.tmp{os.getpid()}"
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    else:
        write_bytes(dst, read_bytes(src))


def copytree(src: PathLike, dst: PathLike) -> None:
    """Copies a directory tree file by file (local or URL on either side)."""
    for name in listdir(src):
        child = join(src, name)
        if isdir(child):
            copytree(child, join(dst, name))
        else:
            copy(child, join(dst, name))


@contextlib.contextmanager
def local_copy(p: PathLike) -> Iterator[str]:
    """A local filename holding `p`'s bytes, for libraries that only open local files
    (soundfile, sentencepiece, TF readers); a local path is yielded as is."""
    p = os.fspath(p)
    if not is_url(p):
        yield p
        return
    with tempfile.TemporaryDirectory(prefix="musiclm-fileio-") as tmp:
        local = os.path.join(tmp, basename(p))
        with builtins.open(local, "wb") as f:
            f.write(read_bytes(p))
        yield local


@contextlib.contextmanager
def local_output(p: PathLike) -> Iterator[str]:
    """A local filename to write with a library that only writes local files; on a clean exit
    it becomes `p` (uploaded whole for URLs, renamed into place for local paths)."""
    p = os.fspath(p)
    with tempfile.TemporaryDirectory(prefix="musiclm-fileio-") as tmp:
        local = os.path.join(tmp, basename(p))
        yield local
        copy(local, p)


@contextlib.contextmanager
def local_dir(directory: PathLike) -> Iterator[str]:
    """A local folder to write `directory`'s files into with libraries that only write local
    files (matplotlib, soundfile, TensorFlow's SavedModel writer): `directory` itself (made) when
    local; for a URL a temporary folder whose files are uploaded into `directory` when the block
    ends cleanly (each file whole; the folder is complete when the caller's marker, written after
    the block, exists)."""
    directory = os.fspath(directory)
    if not is_url(directory):
        makedirs(directory)
        yield directory
        return
    with tempfile.TemporaryDirectory(prefix="musiclm-fileio-") as local:
        yield local
        copytree(local, directory)
