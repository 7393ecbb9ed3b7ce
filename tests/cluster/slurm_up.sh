#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine for tests/cluster (and Open MPI for its mpirun test):
# installs the Debian packages when missing, writes a slurm.conf for this machine (all its CPUs, no GPUs,
# proctrack/linuxproc, task/none: nothing needs systemd or cgroups), starts munged, slurmctld and slurmd
# as root with their own key, socket, ports, state and logs under one directory, and waits until the node
# is idle.  Tear down with tests/cluster/slurm_down.sh.  Run as root (apt-get, slurmd).
#
#   bash tests/cluster/slurm_up.sh        # prints: export SLURM_CONF=/tmp/dmd-dist-slurm/etc/slurm.conf
#
# DMD_SLURM_DIR (default /tmp/dmd-dist-slurm): everything of the cluster (config, munge key and socket,
# state, spool, logs); tests/cluster/conftest.py looks for the cluster there.  An old cluster in it is
# torn down first, so the cluster always starts empty.  Ports: two free ones, chosen now.
# DMD_SLURM_PARTITION (default cpu): the name of its one partition.
# Nothing under /etc is written: the cluster lives next to (and does not disturb) a SLURM or munge
# already installed on the machine.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dir="${DMD_SLURM_DIR:-/tmp/dmd-dist-slurm}"
partition="${DMD_SLURM_PARTITION:-cpu}"
say() { echo "slurm_up: $*" >&2; }
die() { say "error: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (it installs packages and runs slurmd, which starts jobs as their users)"

# 1. Packages: the daemons, the client commands, munge, and Open MPI's mpirun (for tests/cluster/test_openmpi.py).
need=()
command -v slurmctld >/dev/null || need+=(slurmctld)
command -v slurmd >/dev/null || need+=(slurmd)
command -v sbatch >/dev/null || need+=(slurm-client)
command -v munged >/dev/null || need+=(munge)
command -v mpirun.openmpi >/dev/null || need+=(openmpi-bin)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  t0=$SECONDS
  export DEBIAN_FRONTEND=noninteractive
  # The package lists may be missing or stale (a fresh container): update them only when the install fails.
  apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null; } \
    || die "apt-get install ${need[*]} failed"
  say "installed in $((SECONDS - t0)) s"
fi

# 2. A clean directory (an old cluster in it is stopped first).
[ -e "$dir" ] && bash "$here/slurm_down.sh" >&2
mkdir -p "$dir"/{etc,munge,state,spool,log,run}
chmod 755 "$dir"
chmod 755 "$dir/munge"  # munged wants its socket directory searchable by all; the key itself is 0400

# 3. munge with its own key and socket (a munged of the system, if any, is left alone).
dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$dir/munge/munge.key"
socket="$dir/munge/munge.socket"
munged --force --key-file="$dir/munge/munge.key" --socket="$socket" --pid-file="$dir/munge/munged.pid" \
  --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munged.seed" \
  || die "munged did not start: $(tail -5 "$dir/log/munged.log" 2>/dev/null)"
munge --socket="$socket" -n | unmunge --socket="$socket" >/dev/null || die "munge does not work"

# 4. slurm.conf: this machine as the one node, all of its CPUs, no GPUs, one partition.
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'; }
ctld_port=$(free_port)
slurmd_port=$(free_port)
while [ "$slurmd_port" = "$ctld_port" ]; do slurmd_port=$(free_port); done
host="$(hostname -s)"
cpus="$(nproc --all)"
cat > "$dir/etc/slurm.conf" <<EOF
# Written by tests/cluster/slurm_up.sh: a one-node test cluster, everything under $dir.
ClusterName=dmdtest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
# munge through this cluster's own daemon.  cred_expire is also how long a requeued job waits before it
# may start again (default 120 s); 5 s keeps the requeue tests short.
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$socket,cred_expire=5
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
# debug2: the controller logs its 30-second time-limit pass ("Testing job time limits"), which
# tests/cluster/test_slurm.py reads to submit its time-limit job in step with it.
SlurmctldDebug=debug2
SlurmdDebug=info
# No systemd, no cgroups needed: processes are tracked by their parentage, tasks are not bound.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
# Look at pending jobs every 2 s (default 60 s, backfill 30 s), so a requeued job starts as soon as it may.
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MailProg=/bin/true
PropagateResourceLimits=NONE
# Defaults spelled out, as a cluster would have them: SIGTERM, then SIGKILL 30 s later at the time limit
# or on scancel; no grace beyond the time limit; jobs may be requeued; finished jobs stay listed 5 min.
KillWait=30
OverTimeLimit=0
JobRequeue=1
MinJobAge=300
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=$partition Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF="$dir/etc/slurm.conf"
echo "export SLURM_CONF=$SLURM_CONF" > "$dir/env.sh"

# 5. The daemons (they daemonize; their pid files are what slurm_down.sh stops).
slurmctld -c -f "$SLURM_CONF" || die "slurmctld did not start: $(tail -20 "$dir/log/slurmctld.log" 2>/dev/null)"
slurmd -f "$SLURM_CONF" -N "$host" || die "slurmd did not start: $(tail -20 "$dir/log/slurmd.log" 2>/dev/null)"

# 6. Wait (at most 60 s) for the node to be idle.
for _ in $(seq 120); do
  state="$(sinfo -h -n "$host" -o %T 2>/dev/null || true)"
  [ "$state" = idle ] && break
  sleep 0.5
done
if [ "${state:-}" != idle ]; then
  say "node state '${state:-unknown}' after 60 s"; tail -20 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
  bash "$here/slurm_down.sh" >&2 || true
  die "the node did not become idle"
fi
say "$(sinfo --version): node $host idle ($cpus CPUs, partition $partition), controller port $ctld_port"
echo "export SLURM_CONF=$SLURM_CONF"
