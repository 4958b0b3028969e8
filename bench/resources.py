"""Whether each run fits the Ray it will run on, checked before anything starts.

A run asks Ray for ``cpus`` CPUs and ``gpus`` GPUs on one node. Ray queues a run that no node
can ever hold and waits for it in silence, so ``podbench run`` and ``podbench tune`` compare every
run's request with the nodes first and refuse with one sentence: the field, what the machine or
cluster has, and the fix.

- Embedded Ray (no ``--address``): this machine, with ``--num-cpus`` CPUs (default: all of them)
  and the GPUs CUDA shows (``CUDA_VISIBLE_DEVICES`` respected, as Ray does).
- A cluster (``--address``): the alive nodes Ray reports (``ray.nodes()``), after connecting the
  way the executor does (:func:`podbench.ray_cluster.init_ray`), which the runs then reuse.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass

from podbench.errors import UserError
from podbench.runs import RunSettings

__all__ = ["Capacity", "check_resources", "cluster_capacity", "local_capacity"]


@dataclass(frozen=True)
class Capacity:
    """The nodes a run may land on, as (CPUs, GPUs) each, and how to name them in a message."""

    nodes: tuple[tuple[float, float], ...]
    where: str
    embedded: bool  # an embedded Ray: --num-cpus can change its CPUs

    @property
    def cpus(self) -> float:
        return max((c for c, _ in self.nodes), default=0.0)

    @property
    def gpus(self) -> float:
        return max((g for _, g in self.nodes), default=0.0)

    def fits(self, cpus: float, gpus: float) -> bool:
        return any(c >= cpus and g >= gpus for c, g in self.nodes)


def _visible_gpus() -> int:
    """GPUs this machine shows CUDA (what an embedded Ray detects)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return 0
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return 0
    return int(torch.cuda.device_count())


def local_capacity(num_cpus: int | None) -> Capacity:
    """The embedded Ray's one node: ``--num-cpus`` (or all) CPUs and the visible GPUs."""
    cpus = float(num_cpus or os.cpu_count() or 1)
    gpus = float(_visible_gpus())
    source = f"--num-cpus {num_cpus}" if num_cpus else "all of this machine's"
    where = f"the embedded Ray on this machine ({cpus:g} CPUs, {source}; {gpus:g} GPUs)"
    return Capacity(((cpus, gpus),), where, embedded=True)


def cluster_capacity(address: str, num_cpus: int | None = None) -> Capacity:
    """The alive nodes of the Ray cluster at ``address`` (connecting to it; ``num_cpus`` is
    passed on as the runs would, and ignored there)."""
    import ray

    from podbench.ray_cluster import init_ray

    init_ray(address, num_cpus)
    nodes = tuple(
        (float(n["Resources"].get("CPU", 0.0)), float(n["Resources"].get("GPU", 0.0)))
        for n in ray.nodes()
        if n.get("Alive")
    )
    gpus = max((g for _, g in nodes), default=0.0)
    cpus = max((c for c, _ in nodes), default=0.0)
    where = (
        f"the Ray cluster at {address} ({len(nodes)} node(s), at most {cpus:g} CPUs and "
        f"{gpus:g} GPUs on one)"
    )
    return Capacity(nodes, where, embedded=False)


def check_resources(
    runs: Iterable[RunSettings], capacity: Capacity, source: str, *, what: str = "run"
) -> None:
    """Refuse when some run asks for more than any node has (one sentence, with the fix).

    Args:
        runs: the runs (or a tune file, whose trials all ask for its ``cpus`` and ``gpus``).
        capacity: :func:`local_capacity` or :func:`cluster_capacity`.
        source: the spec file, for the message.
        what: "run" or "trial", for the message.
    """
    requests = sorted({(float(r.cpus), float(r.gpus)) for r in runs}, reverse=True)
    for cpus, gpus in requests:
        if capacity.fits(cpus, gpus):
            continue
        if gpus > capacity.gpus:
            raise UserError(
                f"{source}: field 'gpus': each {what} asks for {gpus:g} GPU, more than any node of "
                f"{capacity.where} has, so it would wait forever; train on the CPU with --set "
                "gpus=0 --set device=cpu, or give --address of a Ray cluster with GPUs."
            )
        more = f"raise --num-cpus to {math.ceil(cpus)}, " if capacity.embedded else ""
        if cpus > capacity.cpus:
            raise UserError(
                f"{source}: field 'cpus': each {what} asks for {cpus:g} CPUs, more than any node "
                f"of {capacity.where} has, so it would wait forever; lower it "
                f"(--set cpus={capacity.cpus:g}), {more}or give --address of a larger cluster."
            )
        raise UserError(
            f"{source}: fields 'cpus' and 'gpus': each {what} asks for {cpus:g} CPUs and {gpus:g} "
            f"GPU on one node, but no node of {capacity.where} has both, so it would wait "
            "forever; lower cpus (--set cpus=...) to what a GPU node has, or add such a node."
        )
