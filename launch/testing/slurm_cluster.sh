#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, from Debian's slurmctld, slurmd, slurm-client, munge.
#
#   launch/testing/slurm_cluster.sh start    # idempotent: reuses a running cluster
#   launch/testing/slurm_cluster.sh stop     # cancels its jobs, stops the daemons it started
#   launch/testing/slurm_cluster.sh status   # exit 0 when the node answers, else 1
#   launch/testing/slurm_cluster.sh env      # prints `export SLURM_CONF=...` for your shell
#
# State (slurm.conf, cgroup.conf, spool, logs, pid files) lives in $LABELFEW_SLURM_DIR
# (default /tmp/labelfew-slurm). Client commands find the cluster through SLURM_CONF.
# Needs root: slurmd starts jobs as their user and munged needs /run/munge.
set -euo pipefail

STATE="${LABELFEW_SLURM_DIR:-/tmp/labelfew-slurm}"
CONF="$STATE/slurm.conf"
HOST="$(hostname -s)"
CTLD_PORT="${LABELFEW_SLURMCTLD_PORT:-6817}"
SLURMD_PORT="${LABELFEW_SLURMD_PORT:-6818}"
WAIT_S="${LABELFEW_SLURM_WAIT_S:-60}"
export SLURM_CONF="$CONF"

die() { echo "slurm_cluster: $*" >&2; exit 1; }
log() { echo "slurm_cluster: $*" >&2; }

need_tools() {
  local missing=()
  for tool in slurmctld slurmd munged sinfo scontrol sbatch; do
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || missing+=("$tool")
  done
  [ ${#missing[@]} -eq 0 ] ||
    die "missing ${missing[*]}; install with: apt-get install slurmctld slurmd slurm-client munge"
  [ "$(id -u)" -eq 0 ] || die "must run as root (slurmd launches jobs, munged needs /run/munge)"
}

# The node line from slurmd itself (real CPUs, sockets, cores, memory), so slurmd never
# finds the node smaller than configured and drains it.
node_line() {
  local line
  line="$(slurmd -C | head -n 1)"
  case "$line" in NodeName=*) ;; *) die "slurmd -C printed no node line: $line" ;; esac
  echo "NodeName=$HOST ${line#* } State=UNKNOWN"
}

write_conf() {
  mkdir -p "$STATE/ctld" "$STATE/spool" "$STATE/log"
  local node cpus mem
  node="$(node_line)"
  cpus="$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$node")"
  mem="$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$node")"
  cat >"$CONF.tmp" <<EOF
# Written by launch/testing/slurm_cluster.sh for $HOST; one node, no accounting database.
ClusterName=labelfew
SlurmctldHost=$HOST
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job may start again after cred_expire seconds (default 120): keep tests quick.
AuthInfo=cred_expire=5
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
PlugStackConfig=$STATE/plugstack.conf
# No cgroups in containers/VMs without delegation: track processes by parent id.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Jobs that give no --mem get an equal share per CPU, so two 1-CPU jobs run side by side.
DefMemPerCPU=$((mem / cpus))
SchedulerType=sched/backfill
# Dependents of a failed job are cancelled instead of pending forever; short scheduling
# intervals so a requeued or newly eligible job starts within seconds.
SchedulerParameters=kill_invalid_depend,bf_interval=2,sched_interval=2
ReturnToService=2
JobRequeue=1
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=10
MinJobAge=600
$node
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
  mv "$CONF.tmp" "$CONF"
  : >"$STATE/plugstack.conf"
  printf 'CgroupPlugin=autodetect\nIgnoreSystemd=yes\n' >"$STATE/cgroup.conf"
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
  if munge_ok; then return 0; fi
  mkdir -p /run/munge /var/lib/munge /var/log/munge /etc/munge
  chown munge:munge /run/munge /var/lib/munge /var/log/munge /etc/munge
  chmod 0755 /run/munge
  if [ ! -s /etc/munge/munge.key ]; then
    log "creating /etc/munge/munge.key"
    dd if=/dev/urandom of=/etc/munge/munge.key bs=128 count=1 status=none
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
  runuser -u munge -- /usr/sbin/munged 9>&-
  echo "munged" >>"$STATE/started"
  for _ in $(seq 50); do munge_ok && return 0; sleep 0.1; done
  die "munged did not answer; see /var/log/munge/munged.log"
}

pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

node_state() { sinfo -h -n "$HOST" -o '%t' 2>/dev/null | head -n 1; }

cluster_up() {
  pid_alive "$STATE/slurmctld.pid" && pid_alive "$STATE/slurmd.pid" &&
    scontrol ping 2>/dev/null | grep -q UP &&
    case "$(node_state)" in idle | mix | alloc | comp) true ;; *) false ;; esac
}

start() {
  need_tools
  mkdir -p "$STATE"
  # Several pytest workers may start the cluster at once: one does it, the others wait and reuse.
  # The daemons get fd 9 closed (9>&-) so they never hold this lock.
  exec 9>"$STATE/start.lock"
  flock 9
  if cluster_up; then
    log "reusing the running cluster ($CONF)"
    return 0
  fi
  write_conf
  start_munge
  pid_alive "$STATE/slurmctld.pid" || { slurmctld -f "$CONF" 9>&- && echo slurmctld >>"$STATE/started"; }
  pid_alive "$STATE/slurmd.pid" || { slurmd -f "$CONF" 9>&- && echo slurmd >>"$STATE/started"; }
  local state=""
  for _ in $(seq $((WAIT_S * 2))); do
    state="$(node_state)"
    case "$state" in
      idle | mix | alloc) log "node $HOST is $state ($CONF)"; return 0 ;;
      drain* | down* | inval*) scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 0.5
  done
  die "node $HOST not idle after ${WAIT_S}s (state '$state'); see $STATE/log/"
}

stop_pid() {
  local file="$1"
  pid_alive "$file" || return 0
  local pid
  pid="$(cat "$file")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}

stop() {
  [ -d "$STATE" ] || return 0
  exec 9>"$STATE/start.lock"
  flock 9
  if pid_alive "$STATE/slurmctld.pid"; then
    scancel --full --quiet --user=root 2>/dev/null || true
  fi
  stop_pid "$STATE/slurmd.pid"
  stop_pid "$STATE/slurmctld.pid"
  if grep -qx munged "$STATE/started" 2>/dev/null; then
    stop_pid /run/munge/munged.pid
  fi
  rm -f "$STATE/started"
  log "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) cluster_up ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
