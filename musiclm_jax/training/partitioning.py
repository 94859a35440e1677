"""Device mesh and logical-axis partitioning (the shape of t5x's partitioner, maxtext's mesh).

Mesh axes are ('data', 'fsdp', 'model'). Sizes come from ICI (within a slice) and DCN
(across slices); -1 fills the remaining devices. Logical axis rules map the names that
modules put on parameters and activations to mesh axes; they are data (set from gin),
priority ordered: the first rule whose mesh axis is still free wins.
"""

from __future__ import annotations

import glob
import logging
import os
from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from musiclm_jax.nn.compiler import compiler_options

MESH_AXES = ("data", "fsdp", "model")
LogicalRules = Sequence[tuple[str, Any]]

# Activations and weights carry different names (maxtext's habit), so the batch can be
# sharded over 'fsdp' while weights are sharded over it along 'embed'.
DEFAULT_LOGICAL_AXIS_RULES: LogicalRules = (
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "model"),
    ("activation_kv_heads", None),
    ("activation_kv", None),
    ("activation_mlp", "model"),
    ("activation_vocab", "model"),
    ("vocab", "model"),
    ("embed", "fsdp"),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv_heads", None),
    ("kv", None),
    ("layers", None),
    ("relpos_buckets", None),
)


COORDINATOR_PORT_ENV = "MUSICLM_COORDINATOR_PORT"  # the simulated pod's coordinator port (default 8482)
DEFAULT_COORDINATOR_PORT = 8482  # JAX's own choice on Cloud TPU


class DistributedSetupError(RuntimeError):
    """The launch environment and the processes JAX sees disagree."""


def on_tpu_vm() -> bool:
    """A Cloud TPU VM: TPU chips on this host's PCI bus (JAX's own test), else TPU device files."""
    try:
        from jax._src import hardware_utils

        return hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0
    except Exception:  # a private helper: fall back to the device files TPU VMs have
        return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def detect_launch(environ: Optional[Mapping[str, str]] = None) -> Optional[tuple[str, dict, Optional[int]]]:
    """How this process was launched: (what, jax.distributed.initialize kwargs, expected process
    count or None if JAX finds it), or None for a single-process run.

    In order: an explicit coordinator (JAX_COORDINATOR_ADDRESS, with JAX_NUM_PROCESSES and
    JAX_PROCESS_ID); a Cloud TPU VM (JAX's documented way: initialize() with no arguments reads
    the TPU metadata); a TPU_WORKER_HOSTNAMES list of several hosts with TPU_WORKER_ID on a host
    without TPUs (a simulated pod: the coordinator is the first host); SLURM with several tasks.
    """
    env = os.environ if environ is None else environ
    hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
    if "JAX_COORDINATOR_ADDRESS" in env:
        kwargs = {"coordinator_address": env["JAX_COORDINATOR_ADDRESS"]}
        if "JAX_NUM_PROCESSES" in env:
            kwargs["num_processes"] = int(env["JAX_NUM_PROCESSES"])
        if "JAX_PROCESS_ID" in env:
            kwargs["process_id"] = int(env["JAX_PROCESS_ID"])
        return "JAX_COORDINATOR_ADDRESS", kwargs, kwargs.get("num_processes")
    if on_tpu_vm():
        return "Cloud TPU VM", {}, len(hosts) if len(hosts) > 1 else None
    if len(hosts) > 1:
        if "TPU_WORKER_ID" not in env:
            raise DistributedSetupError(f"TPU_WORKER_HOSTNAMES lists {len(hosts)} hosts but TPU_WORKER_ID is not set")
        port = int(env.get(COORDINATOR_PORT_ENV, DEFAULT_COORDINATOR_PORT))
        kwargs = {
            "coordinator_address": f"{hosts[0]}:{port}",
            "num_processes": len(hosts),
            "process_id": int(env["TPU_WORKER_ID"]),
        }
        return "TPU_WORKER_HOSTNAMES", kwargs, len(hosts)
    if int(env.get("SLURM_NTASKS", "1")) > 1:
        return "SLURM", {}, int(env["SLURM_NTASKS"])
    return None


def maybe_initialize_distributed() -> None:
    """Joins the other processes of a multi-host launch (detect_launch), once; single-process
    runs are left alone. Raises DistributedSetupError when the launch environment and the
    processes JAX sees disagree."""
    if getattr(maybe_initialize_distributed, "_done", False):
        return
    launch = detect_launch()
    if launch is not None:
        what, kwargs, expected = launch
        try:
            jax.distributed.initialize(**kwargs)
        except Exception as e:
            raise DistributedSetupError(f"jax.distributed.initialize failed ({what}, {kwargs}): {e}") from e
        if expected is not None and jax.process_count() != expected:
            raise DistributedSetupError(
                f"the launch ({what}) says {expected} processes, but JAX sees {jax.process_count()}"
            )
        logging.info(
            "jax.distributed initialised (%s): process %d of %d, %d local devices",
            what,
            jax.process_index(),
            jax.process_count(),
            jax.local_device_count(),
        )
        maybe_initialize_distributed._joined = True
    maybe_initialize_distributed._done = True


def shutdown_distributed() -> None:
    """Leaves a multi-host run together with the others (a barrier): a process that exits
    while another still talks to its coordinator makes that one abort."""
    if getattr(maybe_initialize_distributed, "_joined", False):
        jax.distributed.shutdown()
        maybe_initialize_distributed._joined = False


def _fill(sizes: Sequence[int], total: int, what: str) -> tuple[int, ...]:
    sizes = list(sizes)
    if len(sizes) != len(MESH_AXES):
        raise ValueError(f"{what} needs {len(MESH_AXES)} sizes for axes {MESH_AXES}, got {sizes}")
    if sizes.count(-1) > 1:
        raise ValueError(f"{what} {sizes}: at most one axis may be -1")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if total % known:
            raise ValueError(f"{what} {sizes}: {total} devices are not divisible by {known}")
        sizes[sizes.index(-1)] = total // known
    if int(np.prod(sizes)) != total:
        hosts = f" ({jax.process_count()} processes)" if jax.process_count() > 1 else ""
        raise ValueError(f"{what} {sizes} covers {int(np.prod(sizes))} devices, but there are {total}{hosts}")
    return tuple(sizes)


def create_mesh(
    ici_mesh_shape: Sequence[int] = (-1, 1, 1),
    dcn_mesh_shape: Sequence[int] = (1, 1, 1),
    devices: Optional[Sequence[Any]] = None,
) -> Mesh:
    """A ('data', 'fsdp', 'model') mesh; multi-slice when a DCN size is above 1."""
    devices = list(jax.devices() if devices is None else devices)
    num_slices = int(np.prod([s for s in dcn_mesh_shape if s != -1]))
    dcn = _fill(dcn_mesh_shape, max(num_slices, 1), "dcn_mesh_shape") if -1 not in dcn_mesh_shape else None
    if dcn is None:
        raise ValueError("dcn_mesh_shape may not use -1; give the number of slices explicitly")
    ici = _fill(ici_mesh_shape, len(devices) // int(np.prod(dcn)), "ici_mesh_shape")
    if int(np.prod(dcn)) > 1:
        device_array = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)
    else:
        try:
            device_array = mesh_utils.create_device_mesh(ici, devices)
        except (ValueError, NotImplementedError, AssertionError) as e:
            if devices[0].platform == "tpu":  # a topology-blind order would cost ICI bandwidth
                raise ValueError(f"no topology-aware TPU mesh for ici_mesh_shape {ici}: {e}") from e
            # CPU (and GPU) devices have no physical layout to follow.
            logging.info("mesh %s: devices in plain order (%s has no topology)", ici, devices[0].platform)
            device_array = np.asarray(devices).reshape(ici)
    return Mesh(device_array, MESH_AXES)


def _is_box(x) -> bool:
    return isinstance(x, nn.Partitioned)


def logical_partition_specs(boxed_tree: Any) -> Any:
    """Logical PartitionSpecs of a tree whose leaves may be boxed with axis names.

    Unboxed leaves, and boxes whose names do not match the value's rank (factored optimiser
    moments such as Adafactor's row/column statistics), are replicated.
    """

    def spec(x):
        if _is_box(x):
            names = x.names
            if len(names) == np.ndim(x.value) or len(names) == len(getattr(x.value, "shape", ())):
                return x.get_partition_spec()
        return PartitionSpec()

    return jax.tree.map(spec, boxed_tree, is_leaf=_is_box)


def unbox(boxed_tree: Any) -> Any:
    """The raw values of a boxed tree. Unlike `nn.unbox` this adds no sharding constraints
    (the jitted init's out_shardings place the values), so boxes whose names no longer match
    their value's rank, as in factored optimiser moments, are fine."""
    return jax.tree.map(lambda x: x.value if _is_box(x) else x, boxed_tree, is_leaf=_is_box)


class Partitioner:
    """Owns the mesh and the logical rules; turns logical specs into shardings and
    compiles functions with explicit in/out shardings.

    Args:
      ici_mesh_shape: ('data', 'fsdp', 'model') sizes within a slice; one -1 fills with the
        devices left.
      dcn_mesh_shape: the same across slices (multi-slice pods); no -1.
      logical_axis_rules: (logical name, mesh axis or axes or None) pairs, first match wins
        (gin: partitioning/default.gin).
      devices: the devices to lay out (default: all of them).
    """

    def __init__(
        self,
        ici_mesh_shape: Sequence[int] = (-1, 1, 1),
        dcn_mesh_shape: Sequence[int] = (1, 1, 1),
        logical_axis_rules: LogicalRules = DEFAULT_LOGICAL_AXIS_RULES,
        devices: Optional[Sequence[Any]] = None,
    ):
        self.logical_axis_rules = tuple(
            (name, tuple(ax) if isinstance(ax, list) else ax) for name, ax in logical_axis_rules
        )
        self.mesh = create_mesh(ici_mesh_shape, dcn_mesh_shape, devices)

    @property
    def data_parallel_size(self) -> int:
        """How many ways the batch is split (the mesh axes 'activation_batch' maps to)."""
        rule = dict(self.logical_axis_rules).get("activation_batch")
        axes = (rule,) if isinstance(rule, str) else (rule or ())
        return int(np.prod([self.mesh.shape[a] for a in axes]))

    def logical_to_sharding(self, logical_specs: Any) -> Any:
        """A tree of logical PartitionSpecs -> the same tree of NamedShardings on this mesh (empty
        nodes, such as optax's MaskedNode for a frozen parameter's state, stay as they are)."""
        return jax.tree.map(
            lambda spec: nn.logical_to_mesh_sharding(spec, self.mesh, self.logical_axis_rules),
            logical_specs,
            is_leaf=lambda x: isinstance(x, PartitionSpec),
        )

    def shardings_for(self, abstract_tree: Any, logical_specs: Any) -> Any:
        """Mesh shardings for arrays with the given logical specs. A dimension that the mesh
        axes do not divide evenly (a factored optimiser moment of size 1, an odd vocabulary)
        is left unsharded rather than failing."""

        def fit(x, sharding):
            spec = list(sharding.spec) + [None] * (len(x.shape) - len(sharding.spec))
            for i, axes in enumerate(spec[: len(x.shape)]):
                names = (axes,) if isinstance(axes, str) else (axes or ())
                if x.shape[i] % int(np.prod([self.mesh.shape[a] for a in names])):
                    spec[i] = None
            return NamedSharding(self.mesh, PartitionSpec(*spec[: len(x.shape)]))

        shardings = self.logical_to_sharding(logical_specs)
        return jax.tree.map(fit, abstract_tree, shardings)

    def sharding(self, *logical_axes) -> NamedSharding:
        """The sharding of one array whose dimensions carry these logical names (None: replicated)."""
        return self.logical_to_sharding(PartitionSpec(*logical_axes))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    def batch_sharding(self, ndim: int) -> NamedSharding:
        """An input batch's sharding: the first dimension over the data-parallel axes."""
        return self.sharding("activation_batch", *([None] * (ndim - 1)))

    def rules_context(self):
        """Context under which modules' `with_logical_constraint` calls resolve."""
        return nn.logical_axis_rules(self.logical_axis_rules)

    def compile(self, fn: Callable, in_shardings, out_shardings, donate_argnums=()) -> Callable:
        """`fn` jitted with explicit shardings, called under this mesh and its logical rules.

        Args:
          fn: the function to compile.
          in_shardings, out_shardings: as jax.jit takes them.
          donate_argnums: arguments whose buffers the outputs may reuse (the train state).
        Returns:
          A callable with the jitted function's signature, and `.lower(*args)` for AOT.
        """
        jitted = jax.jit(
            fn,
            in_shardings=in_shardings,
            out_shardings=out_shardings,
            donate_argnums=donate_argnums,
            compiler_options=compiler_options(self.mesh.devices.flat[0].platform),
        )

        def call(*args):
            with jax.set_mesh(self.mesh), self.rules_context():
                return jitted(*args)

        call.lower = lambda *args: _lower(self, jitted, args)
        return call

    def global_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """Assembles the global batch from this process's share (multi-host safe)."""
        out = {}
        for k, v in local_batch.items():
            sharding = self.batch_sharding(np.ndim(v))
            global_shape = (v.shape[0] * jax.process_count(),) + tuple(v.shape[1:])
            out[k] = jax.make_array_from_process_local_data(sharding, v, global_shape)
        return out


def _lower(partitioner: Partitioner, jitted, args):
    with jax.set_mesh(partitioner.mesh), partitioner.rules_context():
        return jitted.lower(*args)
