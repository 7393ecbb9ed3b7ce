#!/usr/bin/env bash
# Tear down the test cluster of tests/cluster/slurm_up.sh: cancel its jobs, stop slurmd, slurmctld and
# munged (by the pids in their pid files, nothing else), and delete DMD_SLURM_DIR (default
# /tmp/dmd-dist-slurm; DMD_SLURM_KEEP=1 keeps it, e.g. for its logs).  Safe to run when nothing is up.
set -uo pipefail
dir="${DMD_SLURM_DIR:-/tmp/dmd-dist-slurm}"
say() { echo "slurm_down: $*" >&2; }
[ -d "$dir" ] || { say "nothing at $dir"; exit 0; }
export SLURM_CONF="$dir/etc/slurm.conf"

alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }
pid_of() { cat "$1" 2>/dev/null || true; }
stop() {  # stop NAME PIDFILE: SIGTERM, then SIGKILL after 15 s
  local pid; pid="$(pid_of "$2")"
  alive "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 150); do alive "$pid" || { say "$1 stopped"; return 0; }; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null; say "$1 killed"
}

if alive "$(pid_of "$dir/run/slurmctld.pid")" && [ -f "$SLURM_CONF" ]; then
  # Jobs first, so that no job step (slurmstepd and its tasks) outlives the daemons.
  # Every job of the cluster: SIGKILL to all processes of the running ones, then cancel them all (pending too).
  jobs="$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')"
  if [ -n "${jobs// }" ]; then
    scancel --quiet --full --signal=KILL $jobs 2>/dev/null
    scancel --quiet $jobs 2>/dev/null
  fi
  for _ in $(seq 60); do
    [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
    sleep 0.5
  done
  left="$(squeue -h -o '%i %T' 2>/dev/null)"
  [ -z "$left" ] || say "jobs still listed: $left"
fi
stop slurmd "$dir/run/slurmd.pid"
stop slurmctld "$dir/run/slurmctld.pid"
stop munged "$dir/munge/munged.pid"
if [ "${DMD_SLURM_KEEP:-0}" = 1 ]; then
  say "kept $dir"
else
  rm -rf "$dir"
fi
