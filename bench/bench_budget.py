"""A training-budget plan for TPU slices from `bench/bench_aot.py`'s compiled step times.

For each paper config and each compiled topology, the mesh to launch (the fitting compile with
the shortest step; ties go to less HBM), its per-chip batch, the step time (libtpu's estimate
where it gives one, else the roofline: max(FLOPs / peak, HBM bytes / bandwidth), which counts
no chip-to-chip communication), and for a recipe of S steps at a global batch G: the steps on
the chosen slice at the compiled per-chip batch (S x G / (per-chip batch x chips), the same
number of examples), wall-clock hours and chip-hours, per model and in total.

The MusicLM paper gives no step counts for its models, so the recipe is an input: --recipe
name=STEPS[@GLOBAL_BATCH] (global batch default: the compiled one). Without it every model is
planned for 100,000 steps at its compiled batch ("per 100k steps").

    python bench/bench_aot.py --out aot.json --configs semantic_stage/paper,coarse_stage/paper \\
        --topologies v5e:2x2,v6e:2x2 --meshes dp,fsdp
    python bench/bench_budget.py --aot aot.json --chips 256 \\
        --recipe semantic_stage/paper=1000000@256 coarse_stage/paper=500000@256

--chips N plans on a slice of N chips of each topology's generation at the compiled per-chip
batch and step time (weak scaling: the per-chip work is the same; the extra collectives of a
larger slice are not counted, so read it as a lower bound).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

from machine import table  # bench/machine.py

DEFAULT_STEPS = 100_000


def step_seconds(result: dict) -> tuple[float | None, str]:
    """(seconds, source) of one compile: libtpu's estimate if positive, else the roofline."""
    est = result.get("estimated_step_seconds")
    if est and est > 0:
        return float(est), "libtpu"
    roof = result.get("roofline_step_seconds")
    return (float(roof), "roofline") if roof else (None, "-")


def best_compiles(results: dict) -> dict[tuple[str, str], tuple[str, dict]]:
    """{(config, topology): (key, result)}: the fitting compile with the shortest step (then the
    least HBM per chip). Entries with extra gin bindings (a 4th key part) count as variants of
    the config: the key says which."""
    best: dict[tuple[str, str], tuple[str, dict]] = {}
    for key, r in results.items():
        if r.get("status") != "fits":
            continue
        config, topology = key.split("|")[:2]
        seconds, _ = step_seconds(r)
        if seconds is None:
            continue
        rank = (seconds, r.get("per_chip_gib") or 0.0)
        current = best.get((config, topology))
        if current is None or rank < (step_seconds(current[1])[0], current[1].get("per_chip_gib") or 0.0):
            best[(config, topology)] = (key, r)
    return best


def parse_recipe(items: list[str]) -> dict[str, tuple[int, int | None]]:
    """'name=STEPS[@GLOBAL_BATCH]' -> {name: (steps, global batch or None)}."""
    recipe = {}
    for item in items:
        name, _, spec = item.partition("=")
        steps, _, batch = spec.partition("@")
        if not name or not steps.isdigit() or (batch and not batch.isdigit()):
            raise SystemExit(f"--recipe {item!r}: expected name=STEPS or name=STEPS@GLOBAL_BATCH")
        recipe[name] = (int(steps), int(batch) if batch else None)
    return recipe


def plan(results: dict, recipe: dict, chips: int | None) -> list[dict]:
    rows = []
    for (config, topology), (key, r) in sorted(best_compiles(results).items()):
        if recipe and config not in recipe:
            continue
        seconds, source = step_seconds(r)
        n_chips = chips or int(r["chips"])
        per_chip = r["global_batch"] / r["chips"]
        steps, recipe_batch = recipe.get(config, (DEFAULT_STEPS, None))
        examples = steps * (recipe_batch or r["global_batch"])
        slice_steps = math.ceil(examples / (per_chip * n_chips))
        hours = slice_steps * seconds / 3600
        mesh = r.get("mesh") or {}
        variant = key.split("|", 3)[3] if key.count("|") >= 3 else ""
        rows.append(
            {
                "config": config + (f" ({variant})" if variant else ""),
                "slice": f"{topology.split(':')[0]} x {n_chips}",
                "mesh compiled (data, fsdp, model)": f"({mesh.get('data')}, {mesh.get('fsdp')}, {mesh.get('model')})",
                "batch/chip": f"{per_chip:g}",
                "GiB/chip": f"{r['per_chip_gib']:.1f} of {r.get('hbm_gib') or 0:.0f}",
                "step": f"{seconds * 1e3:,.0f} ms ({source})",
                "steps": f"{slice_steps:,}",
                "wall-clock h": hours,
                "chip-hours": hours * n_chips,
            }
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--aot", required=True, help="bench_aot.py's --out JSON")
    p.add_argument("--recipe", nargs="*", default=[], help="name=STEPS[@GLOBAL_BATCH] per config")
    p.add_argument("--chips", type=int, default=None, help="plan on slices of this many chips (default: as compiled)")
    args = p.parse_args()
    if not os.path.exists(args.aot):
        sys.exit(f"no AOT results at {args.aot}: run bench/bench_aot.py --out {args.aot} first")
    with open(args.aot) as f:
        results = json.load(f)
    rows = plan(results, parse_recipe(args.recipe), args.chips)
    if not rows:
        sys.exit("no fitting compile in the AOT results matches the recipe")
    recipe = " ".join(args.recipe) or f"every config {DEFAULT_STEPS:,} steps at its compiled global batch"
    print(f"recipe: {recipe}\n")
    print(table(rows))
    by_slice: dict[str, list[dict]] = {}
    for row in rows:
        by_slice.setdefault(row["slice"], []).append(row)
    print("\n| slice | models | wall-clock h (one after another) | chip-hours |\n|---|---|---|---|")
    for name, group in by_slice.items():
        wall = sum(r["wall-clock h"] for r in group)
        chip_h = sum(r["chip-hours"] for r in group)
        print(f"| {name} | {len(group)} | {wall:,.1f} | {chip_h:,.0f} |")


if __name__ == "__main__":
    main()
