"""`musiclm aot`: compile the train step for a TPU topology on a machine without TPUs.

libtpu (the `tpu` extra) holds the real TPU compiler; `get_topology_desc` gives devices of
a topology that does not exist here, and the train step is lowered on abstract inputs
sharded over them. The compiled program's memory and cost analyses say, before a pod is
rented, whether a config fits and how long a step should take.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping, Optional, Sequence

from musiclm_jax.models.base import BaseModel
from musiclm_jax.training import mfu
from musiclm_jax.training.optimizers import OptimizerConfig
from musiclm_jax.training.partitioning import DEFAULT_LOGICAL_AXIS_RULES, LogicalRules, Partitioner
from musiclm_jax.training.trainer import Trainer

GiB = 1024**3
# HBM per chip.
HBM_BYTES_BY_DEVICE_KIND = {
    "TPU v4": 32 * GiB,
    "TPU v5 lite": 16 * GiB,
    "TPU v5e": 16 * GiB,
    "TPU v5p": 95 * GiB,
    "TPU v5": 95 * GiB,
    "TPU v6 lite": 32 * GiB,
    "TPU v6e": 32 * GiB,
}


# HBM bandwidth per chip, bytes/s (for the roofline estimate).
HBM_BANDWIDTH_BY_DEVICE_KIND = {
    "TPU v4": 1.2e12,
    "TPU v5 lite": 8.19e11,
    "TPU v5e": 8.19e11,
    "TPU v5p": 2.765e12,
    "TPU v5": 2.765e12,
    "TPU v6 lite": 1.64e12,
    "TPU v6e": 1.64e12,
}


def _by_kind(table: dict, kind: str):
    return next((v for name, v in table.items() if kind.startswith(name)), None)


class DoesNotFitError(RuntimeError):
    pass


@dataclasses.dataclass
class AotReport:
    topology: str
    device_kind: str
    num_devices: int
    mesh: dict
    global_batch: int
    input_shapes: dict
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    code_bytes: int
    hbm_bytes: Optional[int]
    flops_per_step: Optional[float]
    bytes_accessed: Optional[float]
    estimated_step_seconds: Optional[float]  # the compiler's own estimate, when it gives one
    roofline_step_seconds: Optional[float]  # max(FLOPs / peak, bytes / HBM bandwidth)

    @property
    def per_chip_bytes(self) -> int:
        # Donated state aliases its outputs onto its arguments.
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.code_bytes

    @property
    def fits(self) -> bool:
        return self.hbm_bytes is None or self.per_chip_bytes <= self.hbm_bytes

    def table(self) -> str:
        def gib(b):
            return f"{b / GiB:8.3f} GiB"

        rows = [
            ("topology", f"{self.topology} ({self.num_devices} x {self.device_kind})"),
            ("mesh", str(self.mesh)),
            ("global batch", str(self.global_batch)),
            ("input shapes", str(self.input_shapes)),
            ("arguments / chip", gib(self.argument_bytes)),
            (
                "outputs / chip",
                gib(self.output_bytes) + f"  ({gib(self.alias_bytes).strip()} aliased to donated arguments)",
            ),
            ("temporaries / chip", gib(self.temp_bytes)),
            ("code / chip", gib(self.code_bytes)),
            (
                "total / chip",
                gib(self.per_chip_bytes) + (f"  of {gib(self.hbm_bytes).strip()} HBM" if self.hbm_bytes else ""),
            ),
            ("FLOPs / step / chip", f"{self.flops_per_step:.4g}" if self.flops_per_step else "unknown"),
            ("HBM bytes / step / chip", f"{self.bytes_accessed:.4g}" if self.bytes_accessed else "unknown"),
            (
                "est. step time",
                f"{self.estimated_step_seconds * 1e3:.2f} ms (compiler's estimate)"
                if self.estimated_step_seconds
                else "unknown (compiler gave none)",
            ),
            (
                "roofline step time",
                f"{self.roofline_step_seconds * 1e3:.2f} ms (max of FLOPs/peak, bytes/HBM bandwidth)"
                if self.roofline_step_seconds
                else "unknown",
            ),
            ("fits", "yes" if self.fits else "NO"),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _chip_config(topology: str) -> dict:
    """v4 VMs run megacore (one device per chip, both TensorCores); libtpu otherwise describes
    'v4:2x2x1' as 8 devices, one per core, and a v4-8 compile would assume 8 chips' memory."""
    return {"chip_config_name": "megacore"} if topology.startswith("v4:") else {}


def _prepare_libtpu_env() -> None:
    # No TPU metadata server or worker list exists here; keep libtpu from looking for them.
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    if os.environ.get("JAX_PLATFORMS") == "cpu":
        # Compiling only (no TPU attached): let several `musiclm aot` runs share libtpu instead of
        # failing on its one-process lockfile.
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def compile_for_topology(
    *,
    model: BaseModel,
    topology: str,
    task_feature_lengths: Mapping[str, int],
    batch_size_per_device: int,
    optimizer: OptimizerConfig = OptimizerConfig(),
    ici_mesh_shape: Sequence[int] = (-1, 1, 1),
    dcn_mesh_shape: Sequence[int] = (1, 1, 1),
    logical_axis_rules: LogicalRules = DEFAULT_LOGICAL_AXIS_RULES,
    microbatches: int = 1,
    check_fits: bool = True,
) -> AotReport:
    """Compiles the model's train step for `topology` (e.g. 'v5e:4x4') and reports memory and
    cost per chip.

    Args:
      model: the model whose train step is compiled.
      topology: a libtpu topology name, e.g. 'v5e:4x4', 'v4:2x2x2', 'v5p:2x2x2' (v4 as megacore:
        one device per chip).
      task_feature_lengths: {feature: length, or (frames, levels)} of one example, as in training.
      batch_size_per_device: examples per data-parallel shard; the global batch is this times the
        mesh's data-parallel size (the axes 'activation_batch' maps to).
      optimizer: the optimiser whose state the step carries.
      ici_mesh_shape: ('data', 'fsdp', 'model') sizes within a slice; -1 fills the remaining devices.
      dcn_mesh_shape: the same across slices (no -1).
      logical_axis_rules: logical axis names -> mesh axes.
      microbatches: gradient-accumulation microbatches per step; the global batch must divide into them.
      check_fits: raise DoesNotFitError when the step does not fit; else the report says so (`fits`).
    Returns:
      An AotReport: per-chip bytes of arguments, outputs (and those aliased to donated arguments),
      temporaries and code, the chip's HBM (None for an unknown device kind), FLOPs per step per
      chip, HBM bytes accessed, and step-time estimates (the compiler's, and a roofline over FLOPs
      and bytes), each None when unknown.
    Raises:
      RuntimeError: libtpu is missing (the `tpu` extra) or `topology` is not a known name.
      DoesNotFitError: `check_fits` and the step exceeds the chip's HBM (XLA's own out-of-memory
        check or the memory analysis).
    """
    _prepare_libtpu_env()
    from jax.experimental import topologies

    from musiclm_jax.data.input_pipeline import input_shapes as make_input_shapes

    try:
        topo = topologies.get_topology_desc(platform="tpu", topology_name=topology, **_chip_config(topology))
    except Exception as e:  # libtpu missing, or an unknown topology name
        raise RuntimeError(
            f"cannot get TPU topology {topology!r}: {str(e).splitlines()[0] if str(e) else type(e).__name__} "
            "(install the `tpu` extra: pip install 'musiclm-jax[tpu]'; names look like v5e:4x4, v4:2x2x2, v5p:2x2x2)"
        ) from e
    devices = list(topo.devices)
    partitioner = Partitioner(ici_mesh_shape, dcn_mesh_shape, logical_axis_rules, devices=devices)
    global_batch = batch_size_per_device * partitioner.data_parallel_size
    shapes = make_input_shapes(task_feature_lengths, global_batch)
    trainer = Trainer(model, partitioner, optimizer, total_steps=1000, input_shapes=shapes, microbatches=microbatches)
    try:
        compiled = trainer.lower_train_step().compile()
    except Exception as e:  # XLA's own out-of-memory check on the target chip
        if "RESOURCE_EXHAUSTED" in str(e) and check_fits:
            raise DoesNotFitError(f"does not fit on {devices[0].device_kind}: {str(e).splitlines()[0]}") from e
        raise
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else (cost or {})
    kind = devices[0].device_kind
    flops = trainer.flops_per_step_per_device  # counted on the jaxpr: XLA counts a scanned stack once
    bytes_accessed = float(cost.get("bytes accessed", 0.0)) or None
    optimal = float(cost.get("optimal_seconds", 0.0))
    peak, bandwidth = _by_kind(mfu.PEAK_FLOPS_BY_DEVICE_KIND, kind), _by_kind(HBM_BANDWIDTH_BY_DEVICE_KIND, kind)
    terms = [
        t for t in (flops and peak and flops / peak, bytes_accessed and bandwidth and bytes_accessed / bandwidth) if t
    ]
    report = AotReport(
        topology=topology,
        device_kind=kind,
        num_devices=len(devices),
        mesh=dict(partitioner.mesh.shape),
        global_batch=global_batch,
        input_shapes={k: tuple(v) for k, v in shapes.items()},
        argument_bytes=int(mem.argument_size_in_bytes),
        output_bytes=int(mem.output_size_in_bytes),
        alias_bytes=int(mem.alias_size_in_bytes),
        temp_bytes=int(mem.temp_size_in_bytes),
        code_bytes=int(mem.generated_code_size_in_bytes),
        hbm_bytes=_by_kind(HBM_BYTES_BY_DEVICE_KIND, kind),
        flops_per_step=flops,
        bytes_accessed=bytes_accessed,
        # libtpu reports a negative optimal_seconds when it has no estimate.
        estimated_step_seconds=optimal if optimal and optimal > 0 else None,
        roofline_step_seconds=max(terms) if terms else None,
    )
    if check_fits and not report.fits:
        raise DoesNotFitError(
            f"does not fit: {report.per_chip_bytes / GiB:.2f} GiB per chip needed, {kind} has "
            f"{report.hbm_bytes / GiB:.0f} GiB (lower the per-device batch, add microbatches, remat, or shard wider)"
        )
    return report
