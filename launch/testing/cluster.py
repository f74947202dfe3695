"""Python handle on the SLURM clusters of ``slurm_cluster.sh`` (tests and demos).

``LocalSlurm()`` is the one-node cluster on this host; ``LocalSlurm.multi_node(2)`` is a
separate cluster (own state directory and slurmctld port, so both can run at once) whose nodes
are network namespaces with their own addresses and host names.

``LocalSlurm.session()`` starts the cluster (or reuses a running one) and registers the calling
process as a user; when the last registered user leaves, a cluster that a session started is
stopped again, so test runs leave no daemons behind while parallel pytest workers share one.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SCRIPT = Path(__file__).with_name("slurm_cluster.sh")
DEFAULT_STATE_DIR = Path(os.environ.get("LABELFEW_SLURM_DIR", "/tmp/labelfew-slurm"))
REQUIRED_TOOLS = ("slurmctld", "slurmd", "munged", "sinfo", "sbatch", "scontrol", "srun")
APT_PACKAGES = "slurmctld slurmd slurm-client munge"
NAMESPACE_TOOLS = ("ip", "nsenter", "unshare")


class ClusterError(RuntimeError):
    """The local cluster could not be started; the message points at its logs."""


def unavailable_reason() -> str | None:
    """Why this machine cannot run the local cluster, or None when it can."""
    if os.geteuid() != 0:
        return "the local SLURM cluster needs root (slurmd starts jobs, munged needs /run/munge)"
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin"
    missing = [t for t in REQUIRED_TOOLS if shutil.which(t, path=path) is None]
    if missing:
        return f"SLURM tools missing ({', '.join(missing)}): apt-get install {APT_PACKAGES}"
    return None


def namespace_reason() -> str | None:
    """Why nodes in network namespaces cannot be made here, or None when they can.

    Tries the real thing (create and delete a namespace): capabilities are often dropped in
    containers even for root."""
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin"
    missing = [t for t in NAMESPACE_TOOLS if shutil.which(t, path=path) is None]
    if missing:
        return f"{', '.join(missing)} missing: apt-get install iproute2 util-linux"
    probe = f"lfprobe{os.getpid()}"
    ip = shutil.which("ip", path=path)
    proc = subprocess.run([ip, "netns", "add", probe], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        return (
            f"cannot create a network namespace for the nodes ({proc.stderr.strip()}); needs "
            "root with CAP_SYS_ADMIN and CAP_NET_ADMIN"
        )
    subprocess.run([ip, "netns", "del", probe], capture_output=True, timeout=30)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class LocalSlurm:
    """The cluster whose config and state live in ``state_dir``."""

    state_dir: Path = DEFAULT_STATE_DIR
    nodes: int = 1
    ctld_port: int | None = None  # None: the script's default (6817)
    # Several nodes: their name stem, private /24 and bridge; unique per cluster on a host.
    node_prefix: str = "lfnode"
    subnet: str = "10.213.0"
    bridge: str = "lfslurm-br0"

    @classmethod
    def multi_node(cls, nodes: int = 2) -> LocalSlurm:
        """``nodes`` nodes in network namespaces, beside the one-node cluster."""
        return cls(
            DEFAULT_STATE_DIR.with_name(f"{DEFAULT_STATE_DIR.name}-nodes{nodes}"), nodes, 6827
        )

    @property
    def node_names(self) -> list[str]:
        """SLURM's names of the nodes (the host name for the one-node cluster)."""
        if self.nodes == 1:
            return [os.uname().nodename.split(".")[0]]
        return [f"{self.node_prefix}{i}" for i in range(1, self.nodes + 1)]

    @property
    def conf(self) -> Path:
        return self.state_dir / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """Variables a client needs to reach this cluster (sbatch, squeue, submitit)."""
        return {"SLURM_CONF": str(self.conf)}

    def kill_node(self, name: str) -> None:
        """The node dies: its slurmd and every process in its namespace are killed."""
        proc = self._script("kill-node", name)
        if proc.returncode != 0:
            raise ClusterError(proc.stderr.strip())

    def _script(
        self, command: str, *args: str, timeout: float = 120
    ) -> subprocess.CompletedProcess:
        env = {**os.environ, "LABELFEW_SLURM_DIR": str(self.state_dir)}
        env["LABELFEW_SLURM_NODES"] = str(self.nodes)
        env["LABELFEW_SLURM_NODE_PREFIX"] = self.node_prefix
        env["LABELFEW_SLURM_SUBNET"] = self.subnet
        env["LABELFEW_SLURM_BRIDGE"] = self.bridge
        if self.ctld_port is not None:
            env["LABELFEW_SLURMCTLD_PORT"] = str(self.ctld_port)
        env["PATH"] = env.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin"
        return subprocess.run(
            ["bash", str(SCRIPT), command, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def is_up(self) -> bool:
        return self._script("status", timeout=30).returncode == 0

    def start(self) -> None:
        """Start the daemons (or reuse them) and wait until the node is idle."""
        reason = unavailable_reason() or (namespace_reason() if self.nodes > 1 else None)
        if reason:
            raise ClusterError(reason)
        proc = self._script("start")
        if proc.returncode != 0:
            raise ClusterError(
                f"could not start the local SLURM cluster: {proc.stderr.strip()} "
                f"(logs in {self.state_dir / 'log'})"
            )
        log.info("local SLURM cluster ready: SLURM_CONF=%s", self.conf)

    def stop(self) -> None:
        """Cancel every job and stop the daemons this cluster's script started."""
        proc = self._script("stop")
        if proc.returncode != 0:
            raise ClusterError(f"could not stop the local SLURM cluster: {proc.stderr.strip()}")

    @contextmanager
    def _users_lock(self) -> Iterator[Path]:
        users = self.state_dir / "users"
        users.mkdir(parents=True, exist_ok=True)
        with (self.state_dir / "users.lock").open("w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield users
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @contextmanager
    def session(self) -> Iterator[LocalSlurm]:
        """Use the cluster within the block; the last user out stops what a session started."""
        with self._users_lock() as users:
            live = [p for p in users.iterdir() if p.name.isdigit() and _alive(int(p.name))]
            owned = self.state_dir / "owned_by_session"
            if not live:
                # No live user: the cluster is ours to manage only if it was not already running.
                owned.unlink(missing_ok=True)
                if not self.is_up():
                    owned.touch()
            for stale in set(users.iterdir()) - set(live):
                stale.unlink(missing_ok=True)
            self.start()
            (users / str(os.getpid())).touch()
        try:
            yield self
        finally:
            with self._users_lock() as users:
                (users / str(os.getpid())).unlink(missing_ok=True)
                others = [p for p in users.iterdir() if p.name.isdigit() and _alive(int(p.name))]
                if not others and owned.is_file():
                    self.stop()
                    owned.unlink(missing_ok=True)
