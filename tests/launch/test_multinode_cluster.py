"""The multi-node test cluster itself: nodes in network namespaces start, answer as separate
machines, and leave nothing behind when stopped."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from launch.testing.cluster import LocalSlurm, namespace_reason, unavailable_reason

pytestmark = pytest.mark.slurm
PREFIX = "lfclean"  # names of its own, so the two-node cluster of other tests runs on beside it


def _traces(state_dir: Path) -> list[str]:
    """Everything of the cluster that could outlive it: namespaces, links, hosts files,
    daemons reading its config."""
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    out = [f"netns {line}" for line in netns.splitlines() if PREFIX in line]
    out += [f"link {line}" for line in links.splitlines() if PREFIX in line or "br7" in line]
    if Path("/etc/netns").is_dir():
        out += [f"hosts {p}" for p in Path("/etc/netns").iterdir() if PREFIX in p.name]
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(state_dir) in cmd:
            out.append(f"process {proc.name}: {cmd}")
    return out


def test_three_nodes_in_namespaces_answer_as_three_machines_and_stop_without_trace(
    tmp_path: Path,
) -> None:
    """Three slurmd, each in its own namespace: one srun task per node sees its own host name
    and address and resolves the others by name; `stop` removes every trace."""
    reason = unavailable_reason() or namespace_reason()
    if reason:
        pytest.skip(f"multi-node SLURM cluster unavailable: {reason}")
    hosts_before = Path("/etc/hosts").read_text()
    state = tmp_path / "state"
    cluster = LocalSlurm(state, 3, 6837, PREFIX, "10.213.7", "lfslurm-br7")
    assert _traces(state) == []
    try:
        cluster.start()
        script = "echo $(hostname) $(getent hosts lfclean3 | cut -d' ' -f1) $SLURM_PROCID"
        proc = subprocess.run(
            ["srun", "-N3", "--ntasks-per-node=1", "-c1", "sh", "-c", script],
            env={**os.environ, **cluster.env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        lines = sorted(proc.stdout.split("\n")[:-1])
        assert lines == [f"lfclean{i} 10.213.7.13 {i - 1}" for i in (1, 2, 3)]
        addrs = subprocess.run(
            ["ip", "-n", "lfclean2", "-br", "addr", "show", "eth0"], capture_output=True, text=True
        )
        assert "10.213.7.12/24" in addrs.stdout
    finally:
        cluster.stop()
    assert _traces(state) == []
    assert Path("/etc/hosts").read_text() == hosts_before
