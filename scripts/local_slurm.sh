#!/usr/bin/env bash
# A private single-node Slurm (munged + slurmctld + slurmd) for trying `slm submit` on one
# machine and for the Slurm tests. Nothing under /etc is touched: config, state, logs and the
# munge key live in $SLM_SLURM_DIR. Needs root (apt install, and slurmd starts jobs as root).
#
#   scripts/local_slurm.sh start    # install slurm-wlm + munge if missing, start, wait until idle
#   eval "$(scripts/local_slurm.sh env)"   # or copy the `export SLURM_CONF=...` line start prints
#   scripts/local_slurm.sh status   # daemons and `sinfo`
#   scripts/local_slurm.sh stop     # stop the three daemons by their PID files
#
# Environment: SLM_SLURM_DIR (default /tmp/slm-slurm), SLURMCTLD_PORT / SLURMD_PORT (default
# 16817 / 16818; change them if another Slurm listens there), SLM_SLURM_AUTH=munge|none.
set -euo pipefail

DIR=${SLM_SLURM_DIR:-/tmp/slm-slurm}
AUTH=${SLM_SLURM_AUTH:-munge}
export SLURM_CONF=$DIR/slurm.conf
PIDS=("$DIR/slurmd.pid" "$DIR/slurmctld.pid")  # stop order
[[ $AUTH == munge ]] && PIDS+=("$DIR/munge/munged.pid")

say() { echo "local_slurm: $*" >&2; }

alive() {  # alive PIDFILE: the daemon recorded there is running
  [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

install_if_missing() {
  command -v slurmctld >/dev/null && command -v munged >/dev/null && return
  [[ $(id -u) == 0 ]] || { say "slurm-wlm and munge are missing; install them as root (apt-get install slurm-wlm munge)"; exit 1; }
  say "installing slurm-wlm and munge with apt (about 15 s)"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >&2
}

start_munge() {
  mkdir -p "$DIR/munge"
  chmod 755 "$DIR" "$DIR/munge"  # clients need o+x to reach the socket
  if [[ ! -f $DIR/munge/munge.key ]]; then
    dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1 count=1024 2>/dev/null
    chmod 600 "$DIR/munge/munge.key"
  fi
  alive "$DIR/munge/munged.pid" && return
  munged --socket="$DIR/munge/munge.socket" --key-file="$DIR/munge/munge.key" \
    --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed"
}

# A requeued job may start again only after the job credential expires (default 120 s); 15 s
# keeps the preemption -> requeue -> resume loop quick to try here.
CRED_EXPIRE=${SLM_SLURM_CRED_EXPIRE:-15}

auth_lines() {
  if [[ $AUTH == munge ]]; then
    printf 'AuthType=auth/munge\nAuthInfo=socket=%s,cred_expire=%s\nCredType=cred/munge\n' "$DIR/munge/munge.socket" "$CRED_EXPIRE"
  else
    printf 'AuthType=auth/none\nAuthInfo=cred_expire=%s\nCredType=cred/none\n' "$CRED_EXPIRE"
  fi
}

write_conf() {
  local mem cpus
  mem=$(( $(awk '/MemTotal/{print $2}' /proc/meminfo) / 1024 - 2048 ))  # MiB, leave 2 GiB to the OS
  cpus=$(nproc)
  # batch_sched_delay=0: jobs start at once. MinJobAge=3600: ended jobs stay visible to
  # `scontrol show job` (and `slm status`) for an hour; there is no accounting daemon (no sacct).
  # kill_invalid_depend: a job whose afterok dependency failed is cancelled, not left pending.
  cat > "$SLURM_CONF" <<EOF
ClusterName=slmlocal
SlurmctldHost=localhost
SlurmctldPort=${SLURMCTLD_PORT:-16817}
SlurmdPort=${SLURMD_PORT:-16818}
SlurmUser=$(id -un)
SlurmdUser=root
$(auth_lines)
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MaxArraySize=1001
DependencyParameters=kill_invalid_depend
MinJobAge=3600
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

wait_idle() {
  local state=""
  for _ in $(seq 1 60); do
    state=$(sinfo -h -o %T 2>/dev/null || true)
    [[ $state == idle || $state == mixed || $state == allocated ]] && return
    sleep 0.5
  done
  say "the node did not become idle (state: '${state:-no answer}'); see $DIR/log/"
  exit 1
}

start() {
  install_if_missing
  mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
  [[ $AUTH == munge ]] && start_munge
  alive "$DIR/slurmctld.pid" || { write_conf; slurmctld -f "$SLURM_CONF"; }
  # -N: the node is named `localhost` in slurm.conf, whatever this machine's hostname is.
  alive "$DIR/slurmd.pid" || slurmd -f "$SLURM_CONF" -N localhost
  wait_idle
  sinfo >&2
  echo "export SLURM_CONF=$SLURM_CONF"
}

stop() {
  local f pid
  for f in "${PIDS[@]}"; do
    alive "$f" || continue
    pid=$(cat "$f")
    kill "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && say "$f: PID $pid did not stop within 5 s"
  done
  return 0
}

status() {
  local f rc=0
  for f in "${PIDS[@]}"; do
    if alive "$f"; then say "$(basename "$f" .pid) running (PID $(cat "$f"))"; else say "$(basename "$f" .pid) stopped"; rc=1; fi
  done
  [[ $rc == 0 ]] && sinfo >&2 && echo "export SLURM_CONF=$SLURM_CONF"
  return $rc
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) echo "export SLURM_CONF=$SLURM_CONF" ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
