"""Gin at the CLI edge: search paths, --gin_file / --gin.KEY=VALUE, type checks, config.gin.

Library functions stay free of gin; this module registers them as configurables under
short names (`train`, `evaluate`, `DatasetConfig`, ...) for the gin files in gin/.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib.resources
import importlib.util  # also needed by gin's resource reader, which calls it without importing it
import inspect
import os
import pathlib
import typing
from typing import Any, Callable, Iterable, Optional, Sequence

import gin
from gin import config_parser


class ConfigError(ValueError):
    """A bad configuration: the CLI prints its one-line message and exits with status 2."""


def gin_search_paths() -> list[str]:
    """The packaged gin/ folder (installed wheel) and the source checkout's gin/ (editable)."""
    paths = []
    try:
        # gin/ has no __init__.py: a namespace package, whose importlib.resources.files() is a
        # MultiplexedPath (its str() is a repr, not a path); its search locations are real folders.
        spec = importlib.util.find_spec("musiclm_jax.gin")
        locations = list(spec.submodule_search_locations or []) if spec else []
    except (ModuleNotFoundError, ValueError):
        locations = []
    paths += [str(pathlib.Path(p).resolve()) for p in locations if pathlib.Path(p).is_dir()]
    source = pathlib.Path(__file__).resolve().parent.parent / "gin"
    if source.is_dir() and str(source) not in paths:
        paths.append(str(source))
    return paths


# ---- type checks on configured values -------------------------------------------------------
def _matches(value: Any, hint: Any) -> bool:
    if hint is Any or isinstance(hint, (str, typing.TypeVar)):
        return True
    origin = typing.get_origin(hint)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple, Sequence, typing.Sequence, Iterable):
        return isinstance(value, (list, tuple))
    if origin in (dict, typing.Mapping) or (origin is not None and getattr(origin, "__name__", "") == "Mapping"):
        return isinstance(value, typing.Mapping)
    if origin is not None:
        try:
            return isinstance(value, origin)
        except TypeError:
            return True
    try:
        return isinstance(value, hint)
    except TypeError:
        return True


def _describe(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def check_types(fn: Callable, arguments: dict[str, Any], name: str) -> None:
    target = fn.__init__ if inspect.isclass(fn) else fn
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # unresolvable forward references: skip checking
        return
    for arg, value in arguments.items():
        hint = hints.get(arg)
        if hint is not None and not _matches(value, hint):
            raise ConfigError(f"{name}.{arg} must be {_describe(hint)}, got {type(value).__name__} {value!r}")


def typed(fn: Callable, name: Optional[str] = None) -> Callable:
    """`fn` with its (simple) type annotations checked when gin calls it."""
    label = name or fn.__name__
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        bound = signature.bind_partial(*args, **kwargs)
        check_types(fn, dict(bound.arguments), label)
        return fn(*args, **kwargs)

    return wrapper


def register(fn: Callable, name: Optional[str] = None, module: Optional[str] = None) -> Callable:
    """Registers a library function or class with gin (type-checked), without gin in the library."""
    name = name or fn.__name__
    if inspect.isclass(fn) and dataclasses.is_dataclass(fn):
        return gin.external_configurable(_dataclass_factory(fn, name), name=name, module=module)
    return gin.external_configurable(typed(fn, name), name=name, module=module)


def _dataclass_factory(cls, name: str) -> Callable:
    """A factory gin can call for a (frozen) dataclass, checking field types first."""

    def factory(**kwargs):
        check_types(cls, kwargs, name)
        return cls(**kwargs)

    factory.__signature__ = inspect.signature(cls)
    factory.__name__ = name
    factory.__doc__ = cls.__doc__
    return factory


# ---- parsing ---------------------------------------------------------------------------------
def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# Modules that gin files import, and parameters they bind, under the names they had before (a
# user's own gin file may still use the old one): the error names the new one.
RENAMED_MODULES = {"musiclm_jax.models.gin_registry": "musiclm_jax.gin_registry"}
_MODEL_DIR_ARGS = ("mulan_dir", "semantic_stage_dir", "coarse_stage_dir", "fine_stage_dir", "soundstream_dir")
RENAMED_PARAMETERS = {
    f"'{fn}' doesn't have a parameter named '{arg}'": f"{fn}.model_dirs (a dict; or the macro {arg.upper()})"
    for fn in ("generate", "export_musiclm", "evaluate_text_to_music")
    for arg in (*_MODEL_DIR_ARGS, "w2v_bert_dir")
}


def parse(gin_files: Sequence[str], bindings: Sequence[str]) -> None:
    """Parses gin files (searched in the packaged gin/ folder too) and KEY=VALUE bindings.

    Raises ConfigError for a missing file, a bad binding, or a macro bound here (`NAME = ...`)
    that no parsed gin file reads: a misspelled macro must not leave the default in force.
    """
    for path in gin_search_paths():
        gin.add_config_file_search_path(path)
    for f in gin_files:
        if not (os.path.exists(f) or any(os.path.exists(os.path.join(p, f)) for p in gin_search_paths())):
            raise ConfigError(f"gin file not found: {f} (searched . and {', '.join(gin_search_paths())})")
    try:
        gin.parse_config_files_and_bindings(list(gin_files), list(bindings), finalize_config=False)
    except ImportError as e:
        renamed = [f"{old} is now {new}" for old, new in RENAMED_MODULES.items() if old in str(e)]
        raise ConfigError(f"bad gin configuration: {first_line(e)}" + "".join(f"; {r}" for r in renamed)) from e
    except (ValueError, KeyError, SyntaxError, IOError) as e:
        renamed = [new for old, new in RENAMED_PARAMETERS.items() if old in str(e)]
        raise ConfigError(f"bad gin configuration: {first_line(e)}" + "".join(f"; now {r}" for r in renamed)) from e
    check_macros_read(bindings)


def check_macros_read(bindings: Sequence[str]) -> None:
    """ConfigError naming the first macro bound in `bindings` that no binding of the parsed
    config refers to, with the closest macro that is read. (Gin has no public API for the
    parsed bindings; `gin.config._CONFIG` maps (scope, configurable) -> {parameter: value}.)"""
    refs: set = set()
    for params in gin.config._CONFIG.values():
        for value in params.values():
            _references(value, refs)
    read = {name for name, selector in refs if selector == "gin.macro"}
    for binding in bindings:
        name = binding.partition("=")[0].strip()
        if name and "." not in name and "/" not in name and name not in read:
            close = difflib.get_close_matches(name, sorted(read), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(f"--gin.{name}: no gin file reads the macro {name}{hint}")


def _references(value: Any, out: set) -> None:
    """Adds the (scope, selector) of every reference (`@name`, `@name()`, `%MACRO`) in a bound value."""
    if isinstance(value, gin.config.ConfigurableReference):
        out.add(value.config_key)
    elif isinstance(value, (list, tuple, set)):
        for v in value:
            _references(v, out)
    elif isinstance(value, dict):
        for v in (*value.keys(), *value.values()):
            _references(v, out)


def _canonical(scope: str, selector: str, parameter: str) -> tuple[str, str]:
    """The `gin.config._CONFIG` key of a binding as written (a macro when there is no parameter)."""
    if not parameter:
        return (f"{scope}/{selector}" if scope else selector, "gin.macro")
    match = gin.config._REGISTRY.get_match(selector)
    return (scope, match.selector if match else selector)


def read_keys(roots: Sequence[str]) -> set[tuple[str, str]]:
    """The bindings (as (scope, selector) keys) that calling the entry functions `roots` can read:
    theirs, and transitively those of every configurable and macro their values refer to, each in
    the scope gin calls it in. Gin's rules (checked on gin 0.5): `@a/X()` runs X in scope `a`
    (whatever the caller's), `@X()` in the caller's scope, `%M` evaluates in scope `M`; a binding
    `s/X.p` applies when X runs in a scope path that starts with `s`."""
    config = gin.config._CONFIG
    by_selector: dict[str, list] = {}
    for key in config:
        by_selector.setdefault(key[1], []).append(key)

    def path_of(scope: str) -> tuple:
        return tuple(filter(None, scope.split("/")))

    def applying(selector: str, path: tuple) -> list:
        return [(k, path) for k in by_selector.get(selector, []) if path[: len(path_of(k[0]))] == path_of(k[0])]

    todo = [
        item for r in roots for sel in by_selector if sel == r or sel.endswith("." + r) for item in applying(sel, ())
    ]
    seen: set = set()
    while todo:
        key, path = todo.pop()
        if (key, path) in seen:
            continue
        seen.add((key, path))
        refs: set = set()
        for value in config.get(key, {}).values():
            _references(value, refs)
        for scope, selector in refs:
            if selector == "gin.macro":
                todo.append(((scope, selector), path_of(scope)))
            else:
                todo.extend(applying(selector, path_of(scope) if scope else path))
    return {key for key, _ in seen}


def _own_bindings(gin_file: str) -> list[tuple[tuple[str, str], str]]:
    """The bindings a gin file makes itself (not through its includes): [(key, as written)]."""
    path = next(
        (p for p in [gin_file, *(os.path.join(d, gin_file) for d in gin_search_paths())] if os.path.exists(p)), None
    )
    if path is None:
        return []
    with open(path) as f:
        text = f.read()
    out = []
    with gin.config._parse_scope():
        parser = config_parser.ConfigParser(text, gin.config.ParserDelegate(skip_unknown=True))
        for statement in parser:
            if isinstance(statement, config_parser.BindingStatement):
                scope, selector, parameter = statement.scope, statement.selector, statement.arg_name
                written = "/".join(filter(None, [scope, selector])) + (f".{parameter}" if parameter else "")
                out.append((_canonical(scope, selector, parameter), written))
    return out


def check_read_by(roots: Sequence[str], gin_files: Sequence[str], bindings: Sequence[str], mode: str) -> None:
    """ConfigError for a gin file whose own bindings the mode's entry functions (`roots`) read none
    of (a data gin handed to the pipeline, a model gin handed to generate), or a --gin binding they
    never read: a setting that would silently do nothing."""
    read = read_keys(roots)
    for gin_file in gin_files:
        own = _own_bindings(gin_file)
        if own and not any(key in read for key, _ in own):
            raise ConfigError(
                f"{gin_file}: `musiclm {mode}` reads none of its bindings (e.g. {own[0][1]}); it is for another "
                "mode, or nothing points at it (a data gin's task needs e.g. --gin.MIXTURE_OR_TASK_NAME=%TASK)"
            )
    for binding in bindings:
        written = binding.partition("=")[0].strip()
        head, dot, parameter = written.rpartition(".")
        scope, _, selector = (head if dot else parameter).rpartition("/")
        key = _canonical(scope, selector, parameter if dot else "")
        if key not in read:
            raise ConfigError(f"--gin.{written}: `musiclm {mode}` never reads it")


def is_bound(configurable: str, parameter: str) -> bool:
    """Whether the parsed config binds `configurable.parameter` (which entry function a run file set up)."""
    try:
        gin.query_parameter(f"{configurable}.{parameter}")
    except ValueError:
        return False
    return True


def write_config(model_dir: str, filename: str = "config.gin") -> str:
    """Writes the operative config (every binding actually used so far) to model_dir (a local
    path or a URL); only process 0 of a multi-host run writes."""
    from musiclm_jax import fileio

    path = fileio.join(model_dir, filename)
    if _process_index() == 0:
        fileio.write_text(path, gin.operative_config_str())
    return path


def _process_index() -> int:
    import jax

    return jax.process_index()


def global_batch_size(
    batch_size_per_device: int, model_parallelism: int = 1, global_batch: Optional[int] = None
) -> int:
    """Global batch from a per-device batch: the batch is split over data x fsdp, which is
    every device not used for model parallelism. An explicit global batch wins."""
    if global_batch:
        return int(global_batch)
    import jax

    return int(batch_size_per_device) * jax.device_count() // int(model_parallelism)
