#!/bin/bash
# A real two-node SLURM cluster on this one machine, for the test suite.
#
#   tests/slurm/cluster.sh install          apt-get install slurm-wlm munge if missing
#   tests/slurm/cluster.sh up STATE_DIR     install if needed, start munged, slurmctld,
#                                           and slurmd for fake nodes n1 and n2; wait idle
#   tests/slurm/cluster.sh down STATE_DIR   stop only the daemons started here; remove STATE_DIR
#
# Clients need SLURM_CONF=STATE_DIR/slurm.conf. Runs as root (Debian's slurm-wlm, no systemd).
set -euo pipefail
cmd=${1:?usage: cluster.sh install|up|down STATE_DIR}
[ "$cmd" = install ] || [ $# -ge 2 ] || { echo "usage: cluster.sh up|down STATE_DIR" >&2; exit 2; }
state=$(realpath -m "${2:-.}")
conf=$state/slurm.conf

install() {
  if command -v slurmctld >/dev/null && command -v munged >/dev/null; then return; fi
  [ "$(id -u)" = 0 ] || { echo "cluster.sh: SLURM is not installed and we are not root" >&2; exit 3; }
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends slurm-wlm munge >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null && apt-get install -y --no-install-recommends slurm-wlm munge >/dev/null; } \
    || { echo "cluster.sh: apt-get install slurm-wlm munge failed" >&2; exit 3; }
}

start_munge() {
  if munge -n </dev/null >/dev/null 2>&1; then return; fi  # a munged is already serving
  [ -s /etc/munge/munge.key ] || { mungekey -c 2>/dev/null || create-munge-key -f; }
  chown munge:munge /etc/munge/munge.key
  mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
  runuser -u munge -- /usr/sbin/munged --pid-file="$state/munged.pid" \
    || runuser -u munge -- /usr/sbin/munged
  touch "$state/munged.started-here"
}

write_conf() {
  local host; host=$(hostname -s)
  mkdir -p "$state/ctld" "$state/spool"
  cat >"$conf" <<CONF
ClusterName=diffdenoise-test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=16817
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=5
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/spool/%n
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd-%n.pid
SlurmctldLogFile=$state/slurmctld.log
SlurmdLogFile=$state/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
JobRequeue=1
SchedulerParameters=sched_interval=2,bf_interval=1
NodeName=n1 NodeHostname=$host NodeAddr=127.0.0.1 Port=17001 CPUs=1 State=UNKNOWN
NodeName=n2 NodeHostname=$host NodeAddr=127.0.0.1 Port=17002 CPUs=1 State=UNKNOWN
PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
CONF
}

up() {
  install
  mkdir -p "$state"
  start_munge
  write_conf
  slurmctld -f "$conf"
  slurmd -f "$conf" -N n1
  slurmd -f "$conf" -N n2
  for _ in $(seq 60); do
    if [ "$(SLURM_CONF=$conf sinfo -h -o '%t' 2>/dev/null | sort -u)" = "idle" ]; then
      echo "cluster up: $(SLURM_CONF=$conf sinfo -h -o '%D nodes %t on %P')"
      return
    fi
    sleep 1
  done
  echo "cluster.sh: nodes did not become idle; see $state/*.log" >&2
  SLURM_CONF=$conf sinfo >&2 || true
  exit 4
}

down() {
  for pidfile in "$state"/slurmd-n1.pid "$state"/slurmd-n2.pid "$state"/slurmctld.pid; do
    [ -s "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
  done
  if [ -e "$state/munged.started-here" ] && [ -s "$state/munged.pid" ]; then
    kill "$(cat "$state/munged.pid")" 2>/dev/null || true
  fi
  sleep 1
  rm -rf "$state"
}

case $cmd in
  install) install ;;
  up) up ;;
  down) down ;;
  *) echo "usage: cluster.sh install|up|down STATE_DIR" >&2; exit 2 ;;
esac
