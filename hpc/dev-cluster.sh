#!/usr/bin/env bash
# A real single-node SLURM cluster (munged, mariadb, slurmdbd, slurmctld, slurmd) for tests and
# for trying chatspace's SLURM path on one workstation. Root, no systemd; idempotent.
#
#   hpc/dev-cluster.sh start    install packages if missing, start daemons, wait for an idle
#                               node; the last line printed is `export SLURM_CONF=...`
#   hpc/dev-cluster.sh stop     stop exactly the daemons this script started (by pid file)
#   hpc/dev-cluster.sh status   which daemons run, and sinfo
#
# Settings (environment):
#   CHATSPACE_SLURM_DIR             config, state and logs (default /tmp/chatspace-slurm)
#   CHATSPACE_SLURM_MAX_ARRAY_SIZE  MaxArraySize (default 1001)
#   CHATSPACE_SLURM_CPUS            CPUs the node offers (default: nproc, at least 4)
#   CHATSPACE_SLURM_DB_PORT         mariadb port on 127.0.0.1 (default 3307)
set -euo pipefail

DIR=${CHATSPACE_SLURM_DIR:-/tmp/chatspace-slurm}
MAX_ARRAY=${CHATSPACE_SLURM_MAX_ARRAY_SIZE:-1001}
DB_PORT=${CHATSPACE_SLURM_DB_PORT:-3307}
CONF=$DIR/etc/slurm.conf
MUNGE_SOCKET=$DIR/munge/munge.socket.2
DB_SOCKET=$DIR/mysql/mysqld.sock
export SLURM_CONF=$CONF

say() { echo "dev-cluster: $*" >&2; }

alive() {  # alive PIDFILE: its process runs and is the daemon named by the file (no reused pid)
    local pid name
    [[ -s $1 ]] || return 1
    pid=$(cat "$1")
    name=$(basename "$1" .pid)
    [[ $name == mysqld ]] && name=mariadbd
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]]
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local deadline=$((SECONDS + $1)) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS > deadline)); then
            say "timed out waiting for $what"
            return 1
        fi
        sleep 0.5
    done
}

install_packages() {
    local missing=()
    for cmd in slurmctld slurmd sbatch munged slurmdbd mariadbd; do
        command -v "$cmd" >/dev/null || missing+=("$cmd")
    done
    ((${#missing[@]} == 0)) && return
    say "installing SLURM packages (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
    # without recommends: 30-odd packages instead of 88 (optional plugins and their -dev twins)
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends slurmctld slurmd \
        slurm-client munge slurmdbd mariadb-server >&2
}

write_config() {
    mkdir -p "$DIR"/{etc,munge,mysql,state,spool,log,run}
    chmod 755 "$DIR/munge"
    local host node
    host=$(hostname -s)
    # job slots, not the hardware's topology: CR_Core on a machine whose cores have two threads
    # would run one job at a time, and the test workers' jobs would wait on each other
    local cpus=${CHATSPACE_SLURM_CPUS:-$(($(nproc) > 4 ? $(nproc) : 4))} mem
    mem=$(slurmd -C | head -1 | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
    node="NodeName=$host CPUs=$cpus Boards=1 SocketsPerBoard=1 CoresPerSocket=$cpus"
    node+=" ThreadsPerCore=1 RealMemory=$mem"
    cat >"$CONF.new" <<EOF
ClusterName=chatspace-dev
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MailProg=/bin/true
ReturnToService=2
MaxArraySize=$MAX_ARRAY
SchedulerParameters=batch_sched_delay=0,sched_interval=1,bf_interval=1
MinJobAge=600
KillWait=5
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePass=$MUNGE_SOCKET
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    if cmp -s "$CONF.new" "$CONF"; then
        rm "$CONF.new"
    else
        mv "$CONF.new" "$CONF"
        CONFIG_CHANGED=1
    fi
    cat >"$DIR/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=localhost
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$DIR/etc/slurmdbd.conf"
}

start_munge() {
    alive "$DIR/munge/munged.pid" && return
    [[ -s $DIR/munge/munge.key ]] || {
        dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
        chmod 400 "$DIR/munge/munge.key"
    }
    munged --force --socket="$MUNGE_SOCKET" --key-file="$DIR/munge/munge.key" \
        --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/log/munged.log" \
        --seed-file="$DIR/munge/munged.seed"
    wait_for 20 munged test -S "$MUNGE_SOCKET"
}

start_mariadb() {
    alive "$DIR/mysql/mysqld.pid" && return
    if [[ ! -d $DIR/mysql/data/mysql ]]; then
        mariadb-install-db --user=root --datadir="$DIR/mysql/data" \
            --auth-root-authentication-method=socket >"$DIR/log/mariadb-install.log" 2>&1
    fi
    setsid mariadbd --user=root --datadir="$DIR/mysql/data" --socket="$DB_SOCKET" \
        --port="$DB_PORT" --bind-address=127.0.0.1 --pid-file="$DIR/mysql/mysqld.pid" \
        --log-error="$DIR/log/mariadb.log" </dev/null >/dev/null 2>&1 &
    wait_for 60 mariadb mariadb --socket="$DB_SOCKET" -uroot -e "SELECT 1"
    mariadb --socket="$DB_SOCKET" -uroot -e "
        CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
        CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
}

start_slurm() {
    if ! alive "$DIR/run/slurmdbd.pid"; then
        slurmdbd  # reads slurmdbd.conf beside $SLURM_CONF
    fi
    wait_for 60 slurmdbd sacctmgr -n list cluster
    if ! sacctmgr -n -P list cluster format=cluster | grep -qx chatspace-dev; then
        sacctmgr -i add cluster chatspace-dev >/dev/null
    fi
    if alive "$DIR/run/slurmctld.pid" && ((${CONFIG_CHANGED:-0})); then
        say "configuration changed: restarting slurmctld and slurmd"
        stop_one slurmd "$DIR/run/slurmd.pid"
        stop_one slurmctld "$DIR/run/slurmctld.pid"
    fi
    alive "$DIR/run/slurmctld.pid" || slurmctld
    wait_for 60 slurmctld scontrol ping
    alive "$DIR/run/slurmd.pid" || slurmd
    local node
    node=$(hostname -s)
    local deadline=$((SECONDS + 90)) state
    while true; do
        state=$(sinfo -h -n "$node" -o %T 2>/dev/null | head -1)
        [[ $state == idle* || $state == mixed* || $state == allocated* ]] && break
        if [[ $state == down* || $state == drain* ]]; then
            scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true
        fi
        if ((SECONDS > deadline)); then
            say "node $node did not become idle (state: ${state:-none}); see $DIR/log"
            return 1
        fi
        sleep 0.5
    done
}

stop_one() {  # stop_one NAME PIDFILE
    if alive "$2"; then
        local pid deadline=$((SECONDS + 20))
        pid=$(cat "$2")
        kill "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
        kill -9 "$pid" 2>/dev/null || true
        say "stopped $1"
    fi
    rm -f "$2"
}

case ${1:-} in
start)
    [[ $(id -u) == 0 ]] || { say "must run as root"; exit 2; }
    install_packages
    write_config
    start_munge
    start_mariadb
    start_slurm
    say "cluster up: $(sinfo -h -o '%P %D %T' | head -1); MaxArraySize=$MAX_ARRAY"
    echo "export SLURM_CONF=$CONF"
    ;;
stop)
    stop_one slurmd "$DIR/run/slurmd.pid"
    stop_one slurmctld "$DIR/run/slurmctld.pid"
    stop_one slurmdbd "$DIR/run/slurmdbd.pid"
    stop_one mariadb "$DIR/mysql/mysqld.pid"
    stop_one munged "$DIR/munge/munged.pid"
    ;;
status)
    for d in slurmd:run/slurmd.pid slurmctld:run/slurmctld.pid slurmdbd:run/slurmdbd.pid \
        mariadb:mysql/mysqld.pid munged:munge/munged.pid; do
        if alive "$DIR/${d#*:}"; then echo "${d%%:*}: running"; else echo "${d%%:*}: stopped"; fi
    done
    [[ -f $CONF ]] && sinfo 2>/dev/null || true
    ;;
*)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
