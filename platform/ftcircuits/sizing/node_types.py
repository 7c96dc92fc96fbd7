"""The GPU node types of a Ray cluster config (``ray_cluster.yaml``), read against the instance table."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from ftcircuits.sizing.plan_figures import INSTANCE_GPUS, figure

GIB = 2**30


class ClusterConfigError(ValueError):
    """A cluster config the plan cannot read: missing, without GPU node types, or with unknown hardware."""


@dataclass(frozen=True)
class GpuNodeType:
    """One node type with GPUs: its instance type, GPU model and count, and how many nodes may start."""

    name: str
    instance_type: str
    gpu: str
    gpus: int
    max_workers: int

    @property
    def gpu_memory(self) -> int:
        """Bytes of memory of one GPU (nominal)."""
        return int(figure(f"gpu_memory_gib.{self.gpu}").value * GIB)

    @property
    def usable_gpu_memory(self) -> int:
        """Bytes of one GPU's memory a run may plan on (nominal times the usable share)."""
        return int(self.gpu_memory * figure("usable_memory_share").value)

    @property
    def bf16_flops(self) -> float:
        """Dense BF16 peak of one GPU, in FLOP/s."""
        return figure(f"bf16_tflops.{self.gpu}").value * 1e12

    def describe(self) -> str:
        return f"{self.name} ({self.instance_type}: {self.gpus} x {self.gpu} {self.gpu_memory / GIB:.0f} GiB)"


def gpu_node_types(cluster_yaml: Path) -> list[GpuNodeType]:
    """Return the node types of ``cluster_yaml`` that declare GPUs, in file order.

    Each needs an instance type of the instance table and a ``resources.GPU`` equal to that
    instance's GPUs; anything else raises ClusterConfigError naming the node type.
    """
    path = Path(cluster_yaml)
    if not path.is_file():
        raise ClusterConfigError(f"cluster config {str(path)!r} does not exist")
    config = yaml.safe_load(path.read_text()) or {}
    node_types = config.get("available_node_types") if isinstance(config, dict) else None
    if not isinstance(node_types, dict) or not node_types:
        raise ClusterConfigError(f"cluster config {str(path)!r} has no available_node_types")
    default_max = int(config.get("max_workers", 0))  # Ray's default for a node type without its own
    found = []
    for name, node_type in node_types.items():
        declared = int((node_type.get("resources") or {}).get("GPU", 0))
        if declared == 0:
            continue
        instance = (node_type.get("node_config") or {}).get("InstanceType")
        if instance not in INSTANCE_GPUS:
            raise ClusterConfigError(
                f"node type {name!r}: instance type {instance!r} is not in the plan's instance table "
                f"(sizing/plan_figures.py); known: {', '.join(sorted(INSTANCE_GPUS))}"
            )
        gpu, gpus = INSTANCE_GPUS[instance]
        if declared != gpus:
            raise ClusterConfigError(
                f"node type {name!r}: resources.GPU is {declared}, but a {instance} has {gpus} GPUs"
            )
        found.append(GpuNodeType(name, instance, gpu, gpus, int(node_type.get("max_workers", default_max))))
    if not found:
        raise ClusterConfigError(f"cluster config {str(path)!r} declares no node type with GPUs")
    return found
