#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for testing sweeps on a real scheduler:
#   scripts/slurm-local.sh start   installs Debian's slurm-wlm and munge when missing (needs root), writes
#                                  /etc/slurm/slurm.conf (controller and node on this host, the CPUs nproc
#                                  says), starts munged, slurmctld and slurmd, and waits for the node to be idle
#   scripts/slurm-local.sh stop    stops the daemons this script started
# `start` prints "already running" and changes nothing when a cluster already answers; it refuses to
# replace a slurm.conf that it did not write. State and logs live in $LORAKIT_SLURM_DIR (/tmp/lorakit-slurm).
set -euo pipefail
dir=${LORAKIT_SLURM_DIR:-/tmp/lorakit-slurm}
conf=/etc/slurm/slurm.conf
marker='# written by lorakit scripts/slurm-local.sh'

stop() {
  for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munged.pid"; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$pidfile"
  done
}

start() {
  if command -v sinfo >/dev/null 2>&1 && timeout 5 sinfo -h -o %T 2>/dev/null | grep -qE 'idle|mix|alloc'; then
    echo "already running"
    return 0
  fi
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    [ "$(id -u)" = 0 ] || { echo "slurm-local: slurm-wlm and munge are missing, and installing them needs root" >&2; exit 1; }
    echo "installing: slurm-wlm munge" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
  fi
  [ "$(id -u)" = 0 ] || { echo "slurm-local: the daemons run as root here; run as root" >&2; exit 1; }
  if [ -f "$conf" ] && ! grep -qF "$marker" "$conf"; then
    echo "slurm-local: $conf exists and was not written by this script; not replacing it" >&2
    exit 1
  fi
  stop
  mkdir -p "$dir/state" "$dir/spool" /etc/slurm
  host=$(hostname -s)
  # As many CPUs as the machine has, never more: the runs share them with everything else on it.
  cat >"$conf.tmp" <<EOF
$marker
ClusterName=lorakit-local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=30
NodeName=$host CPUs=$(nproc) State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  mv "$conf.tmp" "$conf"
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
  fi
  chown munge:munge /etc/munge/munge.key 2>/dev/null || true
  chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge && chown munge:munge /run/munge 2>/dev/null || true
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    # munged runs as its own user where the package made one; its pid file is kept so that stop ends it.
    if id munge >/dev/null 2>&1; then runuser -u munge -- munged; else munged --force; fi
    for _ in $(seq 50); do [ -s /run/munge/munged.pid ] && break; sleep 0.1; done
    cp /run/munge/munged.pid "$dir/munged.pid"
  fi
  slurmctld -c
  slurmd -c
  for _ in $(seq 60); do
    if timeout 5 sinfo -h -o %T 2>/dev/null | grep -qE 'idle|mix|alloc'; then echo "started"; return 0; fi
    sleep 1
  done
  echo "slurm-local: the node did not come up within a minute; the logs:" >&2
  tail -n 20 "$dir/slurmctld.log" "$dir/slurmd.log" >&2 || true
  exit 1
}

case "${1:-}" in
  start) start ;;
  stop) stop; echo "stopped" ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
