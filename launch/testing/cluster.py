"""Python handle on the one-node SLURM cluster of ``slurm_cluster.sh`` (tests and demos).

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

    @property
    def conf(self) -> Path:
        return self.state_dir / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """Variables a client needs to reach this cluster (sbatch, squeue, submitit)."""
        return {"SLURM_CONF": str(self.conf)}

    def _script(self, command: str, timeout: float = 120) -> subprocess.CompletedProcess:
        env = {**os.environ, "LABELFEW_SLURM_DIR": str(self.state_dir)}
        env["PATH"] = env.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin"
        return subprocess.run(
            ["bash", str(SCRIPT), command],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def is_up(self) -> bool:
        return self._script("status", timeout=30).returncode == 0

    def start(self) -> None:
        """Start the daemons (or reuse them) and wait until the node is idle."""
        reason = unavailable_reason()
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
