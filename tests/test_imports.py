"""The house rules: which package folder may import which (DESIGN.md section 3), and no cycles.

Every import statement of every module counts, those inside functions included: a lazy import
hides a dependency from the reader, not from the rule.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "musiclm_jax"

# What each part of the package may import from the package (besides itself). A part is a
# folder (`nn`) or a top-level module that is not a job (`fileio`). Job modules (train, eval,
# generate, ..., main, configurables) may import anything, but no part may import a job.
MAY_IMPORT = {
    "nn": set(),  # nn stays pure: no files
    "audio": {"nn", "fileio"},
    "models": {"nn", "audio", "fileio"},
    # The trainer knows the model interface (models.base), never a concrete model.
    "training": {"models.base", "nn", "audio", "fileio"},
    "data": {"audio", "nn", "fileio"},
    "model_io": {"models", "nn", "training", "fileio"},
    "tokenizers": {"models", "nn", "audio", "data", "training", "model_io", "fileio"},
    "evaluation": {"models", "nn", "audio", "data", "tokenizers", "training", "model_io", "fileio"},
    "fileio": set(),
    "gin_utils": {"fileio"},
    "run_setup": {"training", "fileio"},
    # The pipeline's data path: a user's collection as sources, scanned and checked.
    "pipeline_data": {"audio", "data", "fileio"},
}


def module_files() -> dict[str, pathlib.Path]:
    """Dotted module name (without the package prefix) -> file."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            out[".".join(parts)] = path
    return out


def imported_modules(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """The package modules that `name` imports anywhere in its file."""
    package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ["musiclm_jax", *package][: len(package) + 2 - node.level]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from pkg import mod` imports pkg.mod; `from pkg.mod import f` imports pkg.mod.
            targets = [f"{module}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            if not target.startswith("musiclm_jax."):
                continue
            target = target.removeprefix("musiclm_jax.")
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def part_of(module: str) -> str:
    return module.split(".")[0]


def allowed(importer: str, imported: str) -> bool:
    part, target_part = part_of(importer), part_of(imported)
    if part == target_part:
        return True
    if part not in MAY_IMPORT:  # a job module: anything (cycles are a separate test)
        return True
    rules = MAY_IMPORT[part]
    return target_part in rules or any(imported == r or imported.startswith(r + ".") for r in rules)


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imported_modules(name, path, set(files)) for name, path in files.items()}


def rel(module: str) -> str:
    path = module_files()[module]
    return str(path.relative_to(PACKAGE.parent))


def test_every_part_of_the_package_has_a_rule_or_is_a_job(graph):
    jobs = sorted({part_of(m) for m in graph} - set(MAY_IMPORT))
    assert set(jobs) <= {
        "main",
        "train",
        "eval",
        "generate",
        "export",
        "export_tf",
        "precompute",
        "pipeline",
        "configurables",
        "gin_registry",
        "aot",
        "inspect_data",
        "serve",
    }, jobs


def test_no_forbidden_import(graph):
    bad = [
        f"{rel(a)} imports {rel(b)}"
        for a, targets in sorted(graph.items())
        for b in sorted(targets)
        if not allowed(a, b)
    ]
    assert not bad, "forbidden imports (DESIGN.md section 3):\n" + "\n".join(bad)


def test_no_import_cycle(graph):
    cycles = []
    for start in sorted(graph):  # a path back to `start`, found depth-first
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in sorted(graph[node]):
                if nxt == start:
                    cycles.append(" -> ".join(rel(m) for m in path + [start]))
                    stack.clear()
                    break
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
    assert not cycles, "import cycles:\n" + "\n".join(sorted(set(cycles)))


def test_the_rules_catch_what_they_should():
    assert not allowed("nn.transformer", "models.stages")
    assert not allowed("models.soundstream", "evaluation.metrics")
    assert not allowed("training.trainer", "models.soundstream")
    assert allowed("training.trainer", "models.base")
    assert not allowed("tokenizers.acoustic", "export")
    assert not allowed("data.sources", "training.summaries")
    assert allowed("export", "tokenizers.acoustic")
    assert allowed("audio.mel", "nn.signal")


def test_conftest_groups_every_file_that_reads_the_tiny_pipeline():
    """conftest.TINY_PIPELINE_FILES (one xdist worker, one build of the fixture) names exactly the
    test files that take the `tiny_pipeline` fixture."""
    import pathlib
    import re

    from conftest import TINY_PIPELINE_FILES

    tests = pathlib.Path(__file__).parent
    readers = {
        f"tests/{p.name}"
        for p in tests.glob("test_*.py")
        if re.search(r"def test_\w+\([^)]*\btiny_pipeline\b", p.read_text())
    }
    assert readers == set(TINY_PIPELINE_FILES)
