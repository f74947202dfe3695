#!/usr/bin/env bash
# A SLURM cluster on this machine, from Debian's slurmctld, slurmd, slurm-client, munge.
#
# One node (default): slurmd runs on this host under its host name.
# Several nodes (LABELFEW_SLURM_NODES=2): each slurmd runs in its own network namespace
# (lfnode1, lfnode2, ...: $LABELFEW_SLURM_NODE_PREFIX<i>) with its own address on a private
# bridge ($LABELFEW_SLURM_BRIDGE, default lfslurm-br0; veth pairs, subnet
# $LABELFEW_SLURM_SUBNET.0/24, default 10.213.0.0/24; slurmctld listens on .1) and its own host
# name (a UTS namespace). Names resolve inside the namespaces through /etc/netns/<ns>/hosts,
# bind-mounted over /etc/hosts in the node's own mount namespace; this host's /etc/hosts is
# never edited.
# `stop` removes the namespaces, links, bridge and /etc/netns entries it created.
#
#   launch/testing/slurm_cluster.sh start    # idempotent: reuses a running cluster
#   launch/testing/slurm_cluster.sh stop     # cancels its jobs, stops the daemons it started
#   launch/testing/slurm_cluster.sh status   # exit 0 when the node answers, else 1
#   launch/testing/slurm_cluster.sh env      # prints `export SLURM_CONF=...` for your shell
#   launch/testing/slurm_cluster.sh kill-node lfnode2   # a node dies (several nodes only)
#
# State (slurm.conf, cgroup.conf, spool, logs, pid files) lives in $LABELFEW_SLURM_DIR
# (default /tmp/labelfew-slurm). Client commands find the cluster through SLURM_CONF.
# Needs root: slurmd starts jobs as their user, munged needs /run/munge, namespaces need
# CAP_NET_ADMIN and CAP_SYS_ADMIN.
set -euo pipefail

STATE="${LABELFEW_SLURM_DIR:-/tmp/labelfew-slurm}"
CONF="$STATE/slurm.conf"
HOST="$(hostname -s)"
CTLD_PORT="${LABELFEW_SLURMCTLD_PORT:-6817}"
SLURMD_PORT="${LABELFEW_SLURMD_PORT:-6818}"
WAIT_S="${LABELFEW_SLURM_WAIT_S:-60}"
NODES="${LABELFEW_SLURM_NODES:-1}"
SUBNET="${LABELFEW_SLURM_SUBNET:-10.213.0}"
BRIDGE="${LABELFEW_SLURM_BRIDGE:-lfslurm-br0}"
NODE_PREFIX="${LABELFEW_SLURM_NODE_PREFIX:-lfnode}"  # node, namespace and host name stem
# munged is shared by every cluster of this script; the marker says one of them started it.
MUNGE_MARK=/run/munge/labelfew-started
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
  if [ "$NODES" -gt 1 ]; then
    command -v ip >/dev/null 2>&1 || die "missing ip; install with: apt-get install iproute2"
    command -v nsenter >/dev/null 2>&1 || die "missing nsenter; install with: apt-get install util-linux"
  fi
}

multi() { [ "$NODES" -gt 1 ]; }
node_names() { local i; for i in $(seq "$NODES"); do echo "$NODE_PREFIX$i"; done; }
node_addr() { echo "$SUBNET.$((10 + $1))"; }
ctld_addr() { echo "$SUBNET.1"; }

# The node line from slurmd itself (real CPUs, sockets, cores, memory), so slurmd never
# finds the node smaller than configured and drains it.
# Several nodes each get this host's description: SLURM schedules them as separate machines.
node_hw() {
  local line
  line="$(slurmd -C | head -n 1)"
  case "$line" in NodeName=*) ;; *) die "slurmd -C printed no node line: $line" ;; esac
  echo "${line#* }"
}

node_lines() {
  local hw="$1" i
  if ! multi; then
    echo "NodeName=$HOST $hw State=UNKNOWN"
    echo "PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP"
    return
  fi
  for i in $(seq "$NODES"); do
    echo "NodeName=$NODE_PREFIX$i NodeHostname=$NODE_PREFIX$i NodeAddr=$(node_addr "$i") $hw State=UNKNOWN"
  done
  echo "PartitionName=debug Nodes=$NODE_PREFIX[1-$NODES] Default=YES MaxTime=INFINITE State=UP"
}

write_conf() {
  mkdir -p "$STATE/ctld" "$STATE/spool" "$STATE/log"
  local hw cpus mem ctld="$HOST" name=labelfew
  hw="$(node_hw)"
  cpus="$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$hw")"
  mem="$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")"
  # Nodes in namespaces reach slurmctld at the bridge's address, not through a host name.
  if multi; then ctld="$HOST($(ctld_addr))"; name="labelfew$NODES"; fi
  cat >"$CONF.tmp" <<EOF
# Written by launch/testing/slurm_cluster.sh for $HOST; $NODES node(s), no accounting database.
ClusterName=$name
SlurmctldHost=$ctld
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job may start again after cred_expire seconds (default 120): keep tests quick.
AuthInfo=cred_expire=5
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool$(multi && echo /%n)
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd$(multi && echo .%n).pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd$(multi && echo .%n).log
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
SlurmdTimeout=$(multi && echo 10 || echo 30)
InactiveLimit=0
KillWait=10
MinJobAge=600
$(node_lines "$hw")
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
  runuser -u munge -- /usr/sbin/munged 8>&- 9>&-
  : >"$MUNGE_MARK"
  for _ in $(seq 50); do munge_ok && return 0; sleep 0.1; done
  die "munged did not answer; see /var/log/munge/munged.log"
}

pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

slurmd_pidfiles() {
  if multi; then
    local n
    for n in $(node_names); do echo "$STATE/slurmd.$n.pid"; done
  else
    echo "$STATE/slurmd.pid"
  fi
}

all_slurmd_alive() {
  local f
  for f in $(slurmd_pidfiles); do pid_alive "$f" || return 1; done
}

node_list() { if multi; then echo "$NODE_PREFIX[1-$NODES]"; else echo "$HOST"; fi; }

# One state per line, one line per node.
node_states() { sinfo -h -N -n "$(node_list)" -o '%t' 2>/dev/null; }

all_nodes_in() {
  local states n=0 st
  states="$(node_states)"
  for st in $states; do
    n=$((n + 1))
    case " $* " in *" $st "*) ;; *) return 1 ;; esac
  done
  [ "$n" -eq "$NODES" ]
}

cluster_up() {
  pid_alive "$STATE/slurmctld.pid" && all_slurmd_alive &&
    scontrol ping 2>/dev/null | grep -q UP && all_nodes_in idle mix alloc comp
}

# The private network: a bridge on this host at .1, one namespace per node at .11, .12, ...
# joined by a veth pair; each namespace sees every node name through /etc/netns/<ns>/hosts.
make_network() {
  local i ns
  ip netns add lfprobe$$ 2>/dev/null && ip netns del lfprobe$$ ||
    die "cannot create a network namespace (needs root with CAP_SYS_ADMIN and CAP_NET_ADMIN)"
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    echo "bridge $BRIDGE" >>"$STATE/started"
  fi
  ip addr replace "$(ctld_addr)/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  for i in $(seq "$NODES"); do
    ns="$NODE_PREFIX$i"
    mkdir -p "/etc/netns/$ns"
    {
      echo "127.0.0.1 localhost"
      echo "$(ctld_addr) $HOST"
      local j
      for j in $(seq "$NODES"); do echo "$(node_addr "$j") $NODE_PREFIX$j"; done
    } >"/etc/netns/$ns/hosts"
    echo "hosts $ns" >>"$STATE/started"
    if ! ip netns list | grep -qw "^$ns"; then
      ip netns add "$ns"
      echo "netns $ns" >>"$STATE/started"
    fi
    if ! ip link show "$ns-h" >/dev/null 2>&1; then
      ip link add "$ns-h" type veth peer name eth0 netns "$ns"
      echo "link $ns-h" >>"$STATE/started"
    fi
    ip link set "$ns-h" master "$BRIDGE"
    ip link set "$ns-h" up
    ip -n "$ns" addr replace "$(node_addr "$i")/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
  done
}

start_slurmd() {
  if ! multi; then
    pid_alive "$STATE/slurmd.pid" || { slurmd -f "$CONF" 9>&- && echo slurmd >>"$STATE/started"; }
    return 0
  fi
  local n
  for n in $(node_names); do
    pid_alive "$STATE/slurmd.$n.pid" && continue
    mkdir -p "$STATE/spool/$n"
    # Its own network, host name and /etc/hosts, like a separate machine. Not `ip netns exec`:
    # it remounts /sys, hiding the cgroup tree slurmd reads.
    nsenter --net="/run/netns/$n" unshare --uts --mount sh -c \
      "mount --bind /etc/netns/$n/hosts /etc/hosts && hostname $n && exec slurmd -f '$CONF' -N $n" 9>&-
    echo "slurmd $n" >>"$STATE/started"
  done
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
  if multi; then make_network; fi
  # Clusters in other state directories share munged: under this lock one starts it, and
  # none stops it between another's start of munged and of its slurmctld.
  exec 8>/tmp/labelfew-munge.lock
  flock 8
  start_munge
  pid_alive "$STATE/slurmctld.pid" || { slurmctld -f "$CONF" 8>&- 9>&- && echo slurmctld >>"$STATE/started"; }
  exec 8>&-
  start_slurmd
  local states=""
  for _ in $(seq $((WAIT_S * 2))); do
    states="$(node_states | tr '\n' ' ')"
    if all_nodes_in idle mix alloc; then
      log "$(node_list) $states($CONF)"
      return 0
    fi
    case "$states" in
      *drain* | *down* | *inval*) scontrol update NodeName="$(node_list)" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 0.5
  done
  die "nodes $(node_list) not idle after ${WAIT_S}s (states '$states'); see $STATE/log/"
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

# Whatever still runs in a node's namespace (job steps outliving slurmd) ends with it.
kill_namespace() {
  local ns="$1" pids
  pids="$(ip netns pids "$ns" 2>/dev/null || true)"
  [ -n "$pids" ] || return 0
  kill $pids 2>/dev/null || true
  for _ in $(seq 30); do
    pids="$(ip netns pids "$ns" 2>/dev/null || true)"
    [ -n "$pids" ] || return 0
    sleep 0.1
  done
  kill -9 $pids 2>/dev/null || true
}

remove_network() {
  local kind name
  # Namespaces first (their ends of the veth pairs go with them), then links, bridge, hosts.
  while read -r kind name; do
    case "$kind" in netns) kill_namespace "$name"; ip netns del "$name" 2>/dev/null || true ;; esac
  done <"$STATE/started"
  while read -r kind name; do
    case "$kind" in
      link) ip link del "$name" 2>/dev/null || true ;;
      hosts) rm -rf "/etc/netns/$name" ;;
    esac
  done <"$STATE/started"
  while read -r kind name; do
    case "$kind" in bridge) ip link del "$name" 2>/dev/null || true ;; esac
  done <"$STATE/started"
  rmdir /etc/netns 2>/dev/null || true
}

# munged stays while any slurmctld (of another cluster of this script) still runs.
stop_munge() {
  exec 8>/tmp/labelfew-munge.lock
  flock 8
  if [ -e "$MUNGE_MARK" ] && ! pidof slurmctld >/dev/null 2>&1; then
    stop_pid /run/munge/munged.pid
    rm -f "$MUNGE_MARK"
  fi
  exec 8>&-
}

stop() {
  [ -d "$STATE" ] || return 0
  exec 9>"$STATE/start.lock"
  flock 9
  if pid_alive "$STATE/slurmctld.pid"; then
    scancel --full --quiet --user=root 2>/dev/null || true
  fi
  local f
  for f in $(slurmd_pidfiles); do stop_pid "$f"; done
  stop_pid "$STATE/slurmctld.pid"
  stop_munge
  if [ -f "$STATE/started" ]; then remove_network; fi
  rm -f "$STATE/started"
  log "stopped"
}

# A node dies: its slurmd and everything running on it (job steps included) end at once.
# `start` brings it back.
kill_node() {
  local n="${1:-}"
  multi && [ -n "$n" ] && node_names | grep -qx "$n" ||
    die "kill-node needs a node name of a multi-node cluster ($(node_names | tr '\n' ' '))"
  # SIGKILL only: a node that loses power gives its processes no signal to react to.
  local pids
  pids="$(ip netns pids "$n" 2>/dev/null || true)"
  [ -z "$pids" ] || kill -9 $pids 2>/dev/null || true
  for _ in $(seq 50); do
    [ -z "$(ip netns pids "$n" 2>/dev/null || true)" ] && break
    sleep 0.1
  done
  log "node $n killed"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) cluster_up ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  kill-node) kill_node "${2:-}" ;;
  *) echo "usage: $0 start|stop|status|env|kill-node NODE" >&2; exit 2 ;;
esac
