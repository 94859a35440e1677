"""Paper-scale configs compiled ahead of time for TPU slices (`musiclm aot`, libtpu, no TPU
needed): per-chip HBM, TFLOP/step/chip, the compiler's estimated step time and the roofline
step time, for each config x topology x mesh. Every compile runs in its own subprocess (one at a
time; a paper compile takes minutes and GiBs of host memory). Each result is written to --out
as soon as it finishes; a rerun skips the entries already there. A compile that passes
--max_rss_gib of host memory or --timeout_min is killed and recorded as an error (the
soundstream paper compile passed 21 GiB). Ends with a markdown table.

    JAX_PLATFORMS=cpu nice -n 19 python bench/bench_aot.py --out /tmp/aot_results.json \
        --configs semantic_stage/paper,coarse_stage/paper \
        --topologies v4:2x2x1,v5e:2x2,v5p:2x2x1,v6e:2x2 --meshes dp,fsdp
    python bench/bench_aot.py --out /tmp/aot_results.json --table_only   # the table again

Meshes: `dp` = (data=all chips, fsdp=1, model=1); `fsdp` = (data=1, fsdp=all chips, model=1);
`fsdp=F,model=M` = (data=rest, fsdp=F, model=M). The global batch is the config's
BATCH_SIZE_PER_DEVICE x (data x fsdp), the same for dp and fsdp.

v4 topologies are described as megacore (one device per chip, as a v4 VM runs; see
musiclm_jax/aot.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import machine  # bench/machine.py

from musiclm_jax.fileio import write_json

MESH_AXES = ("data", "fsdp", "model")

GiB = 1024**3
MARK = "AOT_RESULT "


def compile_one(config: str, topology: str, mesh: str, bindings: list[str]) -> dict:
    """In the worker process: parse the gin files like `musiclm aot` does and compile."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import dataclasses
    import logging

    from jax.experimental import topologies

    import gin
    from musiclm_jax import aot, configurables, gin_utils

    aot._prepare_libtpu_env()
    chips = len(
        topologies.get_topology_desc(topology_name=topology, platform="tpu", **aot._chip_config(topology)).devices
    )
    if mesh == "dp":
        fsdp, model = 1, 1
    elif mesh == "fsdp":
        fsdp, model = chips, 1
    else:
        spec = dict(kv.split("=") for kv in mesh.split(","))
        fsdp, model = int(spec.get("fsdp", 1)), int(spec.get("model", 1))
    logging.disable(logging.ERROR)  # gin logs every search path that lacks a file
    gin_utils.parse(
        ["runs/aot.gin", f"models/{config}.gin"], [f"FSDP_PARALLELISM={fsdp}", f"MODEL_PARALLELISM={model}", *bindings]
    )
    logging.disable(logging.NOTSET)
    batch = int(gin.query_parameter("%BATCH_SIZE_PER_DEVICE")) * chips // model
    t = time.perf_counter()
    try:
        report = configurables.compile_for_topology(topology=topology, check_fits=False)
    except Exception as e:  # noqa: BLE001  (XLA's out-of-memory check, or anything else)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        # e.g. "... Ran out of memory in memory space hbm. Used 17.60G of 15.75G hbm. ..."
        used = re.search(r"Used ([\d.]+)([MGT]) of ([\d.]+)([MGT]) hbm", str(e))
        scale = {"M": 1 / 1024, "G": 1, "T": 1024}
        return dict(
            status="does not fit" if "RESOURCE_EXHAUSTED" in str(e) else "error",
            error=msg,
            chips=chips,
            global_batch=batch,
            mesh={"data": chips // (fsdp * model), "fsdp": fsdp, "model": model},
            per_chip_gib=float(used[1]) * scale[used[2]] if used else None,
            hbm_gib=float(used[3]) * scale[used[4]] if used else None,
            compile_s=time.perf_counter() - t,
        )
    finally:
        gin.clear_config()
    out = dataclasses.asdict(report)
    out.update(
        status="fits" if report.fits else "does not fit",
        chips=report.num_devices,
        per_chip_gib=report.per_chip_bytes / GiB,
        hbm_gib=report.hbm_bytes / GiB if report.hbm_bytes else None,
        compile_s=time.perf_counter() - t,
    )
    return out


def _rss_gib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024**2
    except (OSError, StopIteration):
        return 0.0


def run_one(config: str, topology: str, mesh: str, bindings: list[str], timeout_s: float, max_rss_gib: float) -> dict:
    """The compile in a subprocess, killed past timeout_s or max_rss_gib of host memory."""
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--one",
        config,
        topology,
        mesh,
        *(f"--gin={b}" for b in bindings),
    ]
    t = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
        killed, peak = None, 0.0
        while p.poll() is None:
            time.sleep(2)
            peak = max(peak, _rss_gib(p.pid))
            if time.perf_counter() - t > timeout_s or peak > max_rss_gib:
                p.kill()
                p.wait()
                killed = f"killed after {(time.perf_counter() - t) / 60:.1f} min: " + (
                    f"host memory over {max_rss_gib:g} GiB" if peak > max_rss_gib else "timed out"
                )
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    lines = [line for line in stdout.splitlines() if line.startswith(MARK)]
    if lines:
        result = json.loads(lines[-1][len(MARK) :])
    else:  # killed or crashed: keep the end of what it said
        tail = (stderr or stdout).strip().splitlines()[-3:]
        result = dict(status="error", error=killed or f"worker exit {p.returncode}: " + " | ".join(tail))
    result.update(wall_s=time.perf_counter() - t, host_peak_rss_gib=peak)
    return result


def table(results: dict) -> str:
    def ms(s):
        return f"{s * 1e3:,.0f} ms" if s else "none"

    rows = []
    for key, r in results.items():
        config, topology, mesh = key.split("|")[:3]
        m = r.get("mesh") or {}
        gib = r.get("per_chip_gib")
        mem = (f"{gib:.2f}" if gib is not None else "?") + (f" of {r['hbm_gib']:.0f}" if r.get("hbm_gib") else "")
        mem += {"fits": " fits", "does not fit": " **does not fit**"}.get(r["status"], "")
        if r["status"] == "error":
            mem = f"**error**: {r['error'][:90]}"
        flops = r.get("flops_per_step")
        rows.append(
            {
                "config": config,
                "topology": f"{topology} ({r.get('chips', '?')} x {r.get('device_kind') or '?'})",
                "mesh (data, fsdp, model)": f"{mesh}: ({', '.join(str(m.get(a, '?')) for a in MESH_AXES)})",
                "global batch": str(r.get("global_batch", "-")),
                "GiB/chip (HBM)": mem,
                "TFLOP/step/chip": f"{flops / 1e12:.1f}" if flops else "-",
                "compiler est. step": ms(r.get("estimated_step_seconds")),
                "roofline step": ms(r.get("roofline_step_seconds")),
                "compile min": f"{(r.get('compile_s') or r.get('wall_s') or 0) / 60:.1f}",
            }
        )
    return machine.table(rows) if rows else "(no results)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--configs", default="semantic_stage/paper", help="comma-separated gin/models/<name>.gin")
    p.add_argument("--topologies", default="v4:2x2x1,v5e:2x2,v5p:2x2x1,v6e:2x2")
    p.add_argument("--meshes", default="dp,fsdp", help="comma-separated: dp, fsdp (or one fsdp=F,model=M)")
    p.add_argument(
        "--gin",
        action="append",
        default=[],
        help="extra gin binding for every compile, e.g. BATCH_SIZE_PER_DEVICE=8 (part of the result's key)",
    )
    p.add_argument("--out", default="/tmp/aot_results.json")
    p.add_argument("--stop_after_min", type=float, default=None, help="start no new compile after this")
    p.add_argument("--timeout_min", type=float, default=40.0, help="per compile")
    p.add_argument("--max_rss_gib", type=float, default=14.0, help="kill a compile past this much host memory")
    p.add_argument("--table_only", action="store_true")
    p.add_argument("--one", nargs=3, metavar=("CONFIG", "TOPOLOGY", "MESH"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(MARK + json.dumps(compile_one(*args.one, args.gin)), flush=True)
        os._exit(0)  # skip the interpreter's teardown of tf/jax threads

    results = json.load(open(args.out)) if os.path.exists(args.out) else {}
    meshes = [args.meshes] if "=" in args.meshes else args.meshes.split(",")
    start = time.time()
    for config in [] if args.table_only else args.configs.split(","):
        for topology in args.topologies.split(","):
            for mesh in meshes:
                key = "|".join([config, topology, mesh, *args.gin])
                if key in results:
                    continue
                if args.stop_after_min is not None and time.time() - start > args.stop_after_min * 60:
                    print(f"stop_after_min reached; not starting {key}", file=sys.stderr)
                    continue
                print(f"compiling {key} ...", file=sys.stderr, flush=True)
                r = run_one(config, topology, mesh, args.gin, args.timeout_min * 60, args.max_rss_gib)
                results[key] = r
                write_json(args.out, results)
                print(
                    f"  {r['status']}: {r.get('per_chip_gib') or 0:.2f} GiB/chip, {r['wall_s'] / 60:.1f} min"
                    + (f" ({r['error']})" if r.get("error") else ""),
                    file=sys.stderr,
                    flush=True,
                )
    print(table(results))


if __name__ == "__main__":
    main()
