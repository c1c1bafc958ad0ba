"""Jobs a SLURM cluster could never start, found before the workflow submits anything.

SLURM takes such a job and leaves it pending for ever (reason ``PartitionConfig`` for more CPUs or
memory than any node of the partition has, ``PartitionTimeLimit`` for a runtime over its
``MaxTime``), or ``sbatch`` refuses it (``Invalid generic resource`` for a GPU on a cluster
without GPUs), while Snakemake waits without a word. :func:`check_requests` compares what each
job asks for with the partitions ``sinfo`` and ``scontrol`` describe and raises one error that
names every such job (its rule or group), the resource, where it is set and what the partition
has. The workflow calls it when it starts with the SLURM executor (workflow/rules/common.smk).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

UNLIMITED = ("UNLIMITED", "INFINITE")
_GPU = re.compile(r"^gpu(?::[^:(]+)?:(\d+)")


@dataclass(frozen=True)
class Request:
    """What a job asks SLURM for: ``cpus`` (``--cpus-per-task``), ``mem_mb`` (``--mem``),
    ``gpus``, ``runtime`` in minutes, ``partition`` (None: the default one). ``job`` names it in
    the message (``rule extract_features``, ``group job al (4 active_learning jobs)``) and
    ``where`` says where the user sets its resources."""

    job: str
    cpus: int = 1
    mem_mb: int | None = None
    gpus: int = 0
    runtime: int | None = None
    partition: str | None = None
    where: str = "the profile's set-resources"


@dataclass(frozen=True)
class Partition:
    """The most one job can get in a partition: CPUs, memory (MB) and GPUs of its largest node
    (within the partition's per-node limits), its time limit in minutes (None: unlimited)."""

    name: str
    cpus: int
    mem_mb: int
    gpus: int
    max_minutes: int | None
    default: bool = False


def slurm_minutes(text: str) -> int | None:
    """A SLURM time (``UNLIMITED``, ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``)
    in whole minutes, rounded up; None when unlimited."""
    text = text.strip()
    if text.upper() in UNLIMITED:
        return None
    days, _, clock = text.rpartition("-")
    fields = [int(f) for f in clock.split(":")]
    if days:
        hours, minutes, seconds = (fields + [0, 0])[:3]
    else:
        hours, minutes, seconds = ([0, 0] + fields)[-3:] if len(fields) < 3 else fields
        if len(fields) == 1:
            hours, minutes, seconds = 0, fields[0], 0
    total = ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds
    return -(-total // 60)


def node_gpus(gres: str) -> int:
    """The GPUs in a node's ``sinfo`` GRES field (``gpu:a100:4(S:0-1),shard:8``: 4)."""
    return sum(int(m[1]) for part in gres.split(",") if (m := _GPU.match(part.strip())))


def parse_partitions(sinfo: str, scontrol: str) -> dict[str, Partition]:
    """Partitions from ``sinfo -h -N -o '%P|%c|%m|%G'`` (one line per node and partition; the
    default partition's name ends in ``*``) and ``scontrol show partition --oneliner``."""
    limits: dict[str, dict[str, str]] = {}
    for line in scontrol.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if "PartitionName" in fields:
            limits[fields["PartitionName"]] = fields
    nodes: dict[str, list[tuple[int, int, int]]] = {}
    defaults = set()
    for line in sinfo.splitlines():
        if not line.strip():
            continue
        name, cpus, mem, gres = line.strip().split("|")
        if name.endswith("*"):
            name = name[:-1]
            defaults.add(name)
        nodes.setdefault(name, []).append(
            (int(cpus.rstrip("+")), int(mem.rstrip("+")), node_gpus(gres))
        )
    partitions = {}
    for name, sizes in nodes.items():
        fields = limits.get(name, {})
        cpus, mem, gpus = (max(size[i] for size in sizes) for i in range(3))
        if fields.get("MaxCPUsPerNode", "UNLIMITED") not in UNLIMITED:
            cpus = min(cpus, int(fields["MaxCPUsPerNode"]))
        if fields.get("MaxMemPerNode", "UNLIMITED") not in UNLIMITED:
            mem = min(mem, int(fields["MaxMemPerNode"]))
        partitions[name] = Partition(
            name,
            cpus,
            mem,
            gpus,
            slurm_minutes(fields.get("MaxTime", "UNLIMITED")),
            default=name in defaults or fields.get("Default") == "YES",
        )
    return partitions


def slurm_partitions(
    run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
) -> dict[str, Partition]:
    """The cluster's partitions, from ``sinfo`` and ``scontrol``."""
    commands = (
        ["sinfo", "-h", "-N", "-o", "%P|%c|%m|%G"],
        ["scontrol", "show", "partition", "--oneliner"],
    )
    outputs = []
    for command in commands:
        try:
            result = run(command, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise ValueError(f"cannot ask SLURM for its partitions ({command[0]}: {err})") from None
        if result.returncode != 0:
            raise ValueError(f"{' '.join(command)} failed: {result.stderr.strip()}")
        outputs.append(result.stdout)
    return parse_partitions(*outputs)


def never_starts(request: Request, partitions: Mapping[str, Partition]) -> str | None:
    """Why SLURM could never start a job of ``request`` (one sentence), or None."""
    if request.partition is None:
        found = [p for p in partitions.values() if p.default]
        if not found:
            return (
                f"{request.job} names no slurm_partition and the cluster has no default "
                f"partition; set slurm_partition (one of {', '.join(sorted(partitions))}) in the "
                "profile's default-resources"
            )
        partition = found[0]
    elif request.partition in partitions:
        partition = partitions[request.partition]
    else:
        return (
            f"{request.job} asks for partition {request.partition!r}, which the cluster "
            f"does not have (it has {', '.join(sorted(partitions))})"
        )
    where = f"set in {request.where}"
    name = f"partition {partition.name!r}"
    if request.gpus > partition.gpus:
        has = f"{partition.gpus} GPUs per node" if partition.gpus else "no GPUs"
        fix = "; set gpu: 0 for a CPU-only partition" if not partition.gpus else ""
        return (
            f"{request.job} asks for {request.gpus} GPU(s) per job (gpu, {where}) but "
            f"{name} has {has} (sbatch: Invalid generic resource){fix}"
        )
    if request.cpus > partition.cpus:
        return (
            f"{request.job} asks for {request.cpus} CPUs per job (threads, {where}) but "
            f"the largest node of {name} has {partition.cpus}; SLURM would leave it pending for "
            "ever (PartitionConfig)"
        )
    if request.mem_mb is not None and request.mem_mb > partition.mem_mb:
        return (
            f"{request.job} asks for {request.mem_mb} MB per job (mem_mb, {where}) but "
            f"the largest node of {name} has {partition.mem_mb} MB; SLURM would leave it pending "
            "for ever (PartitionConfig)"
        )
    if (
        request.runtime is not None
        and partition.max_minutes is not None
        and request.runtime > partition.max_minutes
    ):
        return (
            f"{request.job} asks for {request.runtime} minutes per job (runtime, {where}) "
            f"but {name} allows {partition.max_minutes}; SLURM would leave it pending for ever "
            "(PartitionTimeLimit)"
        )
    return None


def check_requests(requests: Iterable[Request], partitions: Mapping[str, Partition]) -> None:
    """Raise a ValueError naming every request SLURM could never start (one line each)."""
    problems = list(dict.fromkeys(p for r in requests if (p := never_starts(r, partitions))))
    if problems:
        raise ValueError("; ".join(problems))
