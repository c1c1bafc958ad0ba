"""alfm.cluster: SLURM's partitions from sinfo/scontrol output, and the requests it could never
start (tests/test_slurm.py checks the same on a real SLURM through the workflow)."""

from __future__ import annotations

import re
import subprocess

import pytest

from alfm.cluster import (
    Partition,
    Request,
    check_requests,
    never_starts,
    node_gpus,
    parse_partitions,
    slurm_minutes,
    slurm_partitions,
)

SINFO = """\
cpu*|2|7800|(null)
cpu*|4|15000|(null)
gpu|64|500000|gpu:h200:8(S:0-1),shard:16
gpu|32|250000+|gpu:4
"""
SCONTROL = """\
PartitionName=cpu AllowGroups=ALL Default=YES MaxNodes=UNLIMITED MaxTime=UNLIMITED MaxCPUsPerNode=UNLIMITED MaxMemPerNode=UNLIMITED State=UP
PartitionName=gpu AllowGroups=ALL MaxTime=2-00:00:00 MaxCPUsPerNode=48 MaxMemPerNode=400000 State=UP
"""  # noqa: E501
PARTITIONS = parse_partitions(SINFO, SCONTROL)


@pytest.mark.parametrize(
    ("text", "minutes"),
    [
        ("UNLIMITED", None),
        ("INFINITE", None),
        ("90", 90),
        ("90:30", 91),
        ("2:00:00", 120),
        ("1-0", 1440),
        ("1-2:30", 1590),
        ("1-2:30:01", 1591),
    ],
)
def test_slurm_times_in_minutes(text, minutes):
    assert slurm_minutes(text) == minutes


def test_gpus_of_a_node_from_its_gres():
    assert node_gpus("gpu:h200:8(S:0-1),shard:16") == 8
    assert node_gpus("gpu:4,gpu:a100:2") == 6
    assert node_gpus("(null)") == 0
    assert node_gpus("shard:16") == 0


def test_partitions_take_the_largest_node_within_the_per_node_limits():
    partitions = parse_partitions(SINFO, SCONTROL)
    assert partitions == {
        "cpu": Partition("cpu", cpus=4, mem_mb=15000, gpus=0, max_minutes=None, default=True),
        "gpu": Partition("gpu", cpus=48, mem_mb=400000, gpus=8, max_minutes=2880),
    }


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (Request("rule a", cpus=4, mem_mb=15000), None),
        (Request("rule a", cpus=48, gpus=8, runtime=2880, partition="gpu"), None),
        (
            Request("rule extract", cpus=8, where="extract.resources"),
            "rule extract asks for 8 CPUs per job (threads, set in extract.resources) but the "
            "largest node of partition 'cpu' has 4; SLURM would leave it pending for ever "
            "(PartitionConfig)",
        ),
        (
            Request("rule extract", gpus=1),
            "rule extract asks for 1 GPU(s) per job (gpu, set in the profile's set-resources) "
            "but partition 'cpu' has no GPUs (sbatch: Invalid generic resource); set gpu: 0 for "
            "a CPU-only partition",
        ),
        (Request("rule a", gpus=9, partition="gpu"), "partition 'gpu' has 8 GPUs per node"),
        (Request("rule a", cpus=49, partition="gpu"), "the largest node of partition 'gpu' has 48"),
        (Request("rule a", mem_mb=16000), "asks for 16000 MB per job (mem_mb"),
        (Request("rule a", runtime=2881, partition="gpu"), "allows 2880; SLURM would leave it"),
        (Request("rule a", partition="big"), "partition 'big', which the cluster does not have"),
    ],
)
def test_a_request_slurm_could_never_start_names_rule_and_resource(request_, message):
    found = never_starts(request_, PARTITIONS)
    assert found == message if message is None else message in found


def test_check_requests_lists_every_problem_once():
    twice = [Request("rule a", cpus=8), Request("rule a", cpus=8)]
    requests = [*twice, Request("rule b", gpus=1), Request("rule c")]
    with pytest.raises(ValueError) as error:
        check_requests(requests, PARTITIONS)
    problems = str(error.value).split("; rule ")
    assert len(problems) == 2 and problems[0].startswith("rule a asks for 8 CPUs")
    check_requests([Request("rule c")], PARTITIONS)


def test_no_default_partition_asks_for_one():
    partitions = parse_partitions("gpu|4|1000|gpu:1\n", "")
    assert "names no slurm_partition" in never_starts(Request("rule a"), partitions)


def test_slurm_partitions_reads_sinfo_and_scontrol_and_names_a_failing_command():
    outputs = {"sinfo": SINFO, "scontrol": SCONTROL}

    def run(command, **kwargs):
        return subprocess.CompletedProcess(command, 0, outputs[command[0]], "")

    assert slurm_partitions(run) == PARTITIONS

    def failing(command, **kwargs):
        return subprocess.CompletedProcess(command, 1, "", "slurm_load_partitions: Zero Bytes")

    with pytest.raises(ValueError, match=re.escape("sinfo -h -N -o %P|%c|%m|%G failed: slurm_")):
        slurm_partitions(failing)
