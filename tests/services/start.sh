#!/usr/bin/env bash
# Start what the test suite needs beyond Python: a throwaway PostgreSQL cluster, headless
# Chromium, and the DICOM reference tools (dcmtk, OpenJPH) the decoder is compared with. Idempotent and quick on a second run. Writes .cxr-sweep/services/env (export lines)
# for the services that are up; a missing service is one warning line and exit 0, so the
# tests for it skip (or fail when CXR_SWEEP_REQUIRE_SERVICES=1, as in CI).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DIR=$ROOT/.cxr-sweep/services            # gitignored (/.cxr-sweep)
PGDATA=$DIR/pg
ENV_FILE=$DIR/env
mkdir -p "$DIR"
trap 'echo "[services] ERROR: ${BASH_SOURCE[0]} line $LINENO: $BASH_COMMAND failed" >&2' ERR
# Two `make test` at once must not race initdb/apt. The server must not inherit fd 9 (9>&-
# below), or it would hold the lock for its whole life.
exec 9>"$DIR/lock"; flock 9

say() { echo "[services] $*"; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }

# apt_install PKG...: only as root; `apt-get update` only when the install fails without it,
# because the update alone costs tens of seconds.
apt_install() {
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || return 1
    local apt=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends)
    "${apt[@]}" "$@" >>"$DIR/apt.log" 2>&1 && return 0
    apt-get update -q >>"$DIR/apt.log" 2>&1 && "${apt[@]}" "$@" >>"$DIR/apt.log" 2>&1
}
why_not_installed() {
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then echo "apt-get failed: see $DIR/apt.log"
    else echo "installing it needs root and apt-get"; fi
}
# One line per missing service; its tests then skip (fail under CXR_SWEEP_REQUIRE_SERVICES=1).
missing() { say "WARNING: $1: $2 tests will be skipped"; }

# bash's /dev/tcp connects only if something listens on the port.
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Newest installed server (a client-only package has the bin dir but no initdb).
pg_bindir() { ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1 | xargs -r dirname || true; }

start_postgres() {
    local t0 bin
    t0=$(now)
    bin=$(pg_bindir)
    if [ -z "$bin" ]; then
        # The package would create and start the system's own "main" cluster; we never use it.
        if [ "$(id -u)" = 0 ]; then
            mkdir -p /etc/postgresql-common/createcluster.d
            echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.d/cxr-sweep.conf
        fi
        apt_install postgresql || { missing "postgresql not installed ($(why_not_installed))" PostgreSQL; return 0; }
        bin=$(pg_bindir)
        say "postgresql installed with apt ($(secs "$t0"))"
        t0=$(now)
    fi
    local version=${bin%/bin}; version=${version##*/}

    # PostgreSQL refuses to run as root, so root runs it as the package's `postgres` user.
    local as=()
    if [ "$(id -u)" = 0 ]; then as=(runuser -u postgres --); fi
    # A cluster from another major version (after an upgrade) is useless: it is throwaway, re-create.
    if [ -f "$PGDATA/PG_VERSION" ] && [ "$(cat "$PGDATA/PG_VERSION")" != "$version" ]; then
        "${as[@]}" "$bin/pg_ctl" stop -D "$PGDATA" -m immediate >/dev/null 2>&1 || true
        rm -rf "$(readlink -f "$PGDATA")" "$PGDATA"
    fi
    if [ ! -e "$PGDATA" ] && [ "$(id -u)" = 0 ] && ! runuser -u postgres -- test -x "$DIR"; then
        # postgres cannot reach into this checkout (e.g. under /root, mode 700): keep the data
        # where it can, and a symlink to it at the usual place.
        local real
        real=/var/tmp/cxr-sweep-pg-$(printf %s "$ROOT" | cksum | cut -d' ' -f1)
        mkdir -p "$real" && ln -s "$real" "$PGDATA"
    fi
    mkdir -p "$PGDATA"
    PGDATA=$(readlink -f "$PGDATA")   # the path postgres can reach
    if [ "$(id -u)" = 0 ]; then chown -R postgres: "$PGDATA"; fi
    chmod 700 "$PGDATA"
    if ! "${as[@]}" test -w "$PGDATA"; then
        missing "user ${as[2]:-$(id -un)} cannot write $PGDATA (a parent directory closed to it?)" PostgreSQL
        return 0
    fi

    local port how
    if "${as[@]}" "$bin/pg_ctl" status -D "$PGDATA" >/dev/null 2>&1; then
        port=$(sed -n 4p "$PGDATA/postmaster.pid")   # line 4 of the pid file is the port
        if listening "$port"; then how="already running"; else
            # Its pid is alive but it does not answer (crashed, not yet reaped): replace it.
            "${as[@]}" "$bin/pg_ctl" stop -D "$PGDATA" -m immediate -t 10 >/dev/null 2>&1 || true
        fi
    fi
    if [ -z "${how:-}" ]; then
        if [ ! -f "$PGDATA/PG_VERSION" ]; then
            "${as[@]}" "$bin/initdb" -D "$PGDATA" -U postgres --auth=trust -E UTF8 --locale=C --no-sync >"$DIR/initdb.log" 2>&1 \
                || { missing "initdb failed (see $DIR/initdb.log)" PostgreSQL; return 0; }
            # Test data is disposable: skip durability for speed. A unix socket path is limited
            # to ~107 bytes, so only put the socket in the data dir when the path fits.
            local sockdir=$PGDATA; [ ${#PGDATA} -lt 90 ] || sockdir=""
            cat >>"$PGDATA/postgresql.conf" <<EOF
# cxr-sweep test cluster (tests/services/start.sh)
listen_addresses = '127.0.0.1'
unix_socket_directories = '$sockdir'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 50
EOF
        fi
        port=55432   # first free port from here up
        while listening "$port"; do port=$((port + 1)); done
        "${as[@]}" "$bin/pg_ctl" start -D "$PGDATA" -w -t 30 -o "-p $port" -l "$PGDATA/server.log" >/dev/null 9>&- \
            || { missing "postgresql did not start (see $PGDATA/server.log)" PostgreSQL; return 0; }
        how="started"
    fi
    port=$(sed -n 4p "$PGDATA/postmaster.pid")
    echo "export CXR_SWEEP_TEST_POSTGRES_URL=postgresql+psycopg://postgres@127.0.0.1:$port/postgres" >>"$ENV_FILE.tmp"
    say "postgresql $version $how on 127.0.0.1:$port, data in ${PGDATA#"$ROOT"/} ($(secs "$t0"))"
}

find_chromium() { command -v chromium || command -v chromium-browser || true; }

setup_chromium() {
    local t0 exe
    t0=$(now)
    exe=$(find_chromium)
    if [ -z "$exe" ]; then
        # fonts-dejavu-core: chromium only *recommends* fonts; without one, text renders as nothing.
        apt_install chromium fonts-dejavu-core || { missing "chromium not installed ($(why_not_installed))" browser; return 0; }
        exe=$(find_chromium)
        say "chromium installed with apt ($(secs "$t0"))"
    fi
    echo "export CXR_SWEEP_TEST_CHROMIUM=$exe" >>"$ENV_FILE.tmp"
    say "$("$exe" --version 2>/dev/null | awk '{ print $1, $2; exit }') ready: $exe"
}

# setup_tool PACKAGE PROGRAM VAR WHAT: a command-line tool from apt; VAR names its directory.
setup_tool() {
    local t0 exe
    t0=$(now)
    exe=$(command -v "$2" || true)
    if [ -z "$exe" ]; then
        apt_install "$1" || { missing "$1 not installed ($(why_not_installed))" "$4"; return 0; }
        exe=$(command -v "$2")
        say "$1 installed with apt ($(secs "$t0"))"
    fi
    echo "export $3=$(dirname "$exe")" >>"$ENV_FILE.tmp"
    say "$1 ready: $exe"
}

# A single-node Slurm cluster (slurmctld and slurmd on localhost, munge for authentication), its own
# slurm.conf and state under $DIR/slurm: tests/sweeper/test_slurm.py submits docs/slurm/cxr-sweep.sbatch to it.
SLURM=$DIR/slurm
start_slurm() {
    local t0 node
    t0=$(now)
    if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
        apt_install slurm-wlm munge || { missing "slurm not installed ($(why_not_installed))" Slurm; return 0; }
        say "slurm-wlm and munge installed with apt ($(secs "$t0"))"
        t0=$(now)
    fi
    if [ "$(id -u)" != 0 ]; then missing "slurmctld and slurmd need root here" Slurm; return 0; fi
    if ! pgrep -x munged >/dev/null; then
        [ -s /etc/munge/munge.key ] || { mkdir -p /etc/munge && /usr/sbin/mungekey --create --force >/dev/null 2>&1 \
            && chown munge: /etc/munge/munge.key; } || true
        mkdir -p /run/munge && chown munge: /run/munge
        runuser -u munge -- /usr/sbin/munged 9>&- || { missing "munged did not start" Slurm; return 0; }
    fi
    mkdir -p "$SLURM/state" "$SLURM/spool" "$SLURM/log"
    node=$(slurmd -C | head -n 1)
    cat >"$SLURM/slurm.conf" <<CONF
ClusterName=cxrtest
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6917
SlurmdPort=6918
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$SLURM/state
SlurmdSpoolDir=$SLURM/spool
SlurmctldPidFile=$SLURM/slurmctld.pid
SlurmdPidFile=$SLURM/slurmd.pid
SlurmctldLogFile=$SLURM/log/slurmctld.log
SlurmdLogFile=$SLURM/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
    # (re)start both daemons on this configuration: a second run of this script reuses nothing stale
    pkill -x slurmctld 2>/dev/null || true; pkill -x slurmd 2>/dev/null || true
    sleep 1
    slurmctld -f "$SLURM/slurm.conf" 9>&- && slurmd -f "$SLURM/slurm.conf" 9>&- || {
        missing "slurmctld/slurmd did not start (see $SLURM/log)" Slurm; return 0; }
    local i
    for i in $(seq 1 30); do
        SLURM_CONF=$SLURM/slurm.conf sinfo -h -o %t 2>/dev/null | grep -qx idle && break
        sleep 1
    done
    if ! SLURM_CONF=$SLURM/slurm.conf sinfo -h -o %t 2>/dev/null | grep -qx idle; then
        missing "the Slurm node did not become idle (see $SLURM/log)" Slurm; return 0
    fi
    echo "export CXR_SWEEP_TEST_SLURM_CONF=$SLURM/slurm.conf" >>"$ENV_FILE.tmp"
    say "slurm $(slurmd -V | awk '{ print $2 }') up: slurmctld and slurmd on 127.0.0.1 ($(secs "$t0"))"
}

# Two "machines" for `ray up docs/cluster-onprem.yaml` (tests/sweeper/test_ray_up_onprem.py): an OpenSSH
# server on 127.0.0.1:22 (the head) and one on 127.0.0.2:22 (a worker), loopback only, for one unprivileged
# user with a throwaway key made here. Port 22 because Ray's cluster launcher has no SSH port setting. Each
# server runs in its own PID and mount namespace with its own /tmp ($SSH/<ip>/tmp), as on separate machines:
# a node's `ray stop` sees only its own processes (never the other node's, nor another test's Ray), and
# each node's Ray keeps its session, /tmp/ray/ray_current_cluster and the launcher's state to itself. The
# nodes share the user's home (one ~/cxr-sweep/.venv), which separate machines would not.
SSH=$DIR/ssh
SSH_USER=cxrnode
SSH_HOSTS="127.0.0.1 127.0.0.2"
ssh_login() {   # ssh_login IP: our key logs in to our server there (its host key in $SSH/known_hosts)
    ssh -q -i "$SSH/id_ed25519" -o BatchMode=yes -o ConnectTimeout=5 -o UserKnownHostsFile="$SSH/known_hosts" \
        -o StrictHostKeyChecking=yes "$SSH_USER@$1" true </dev/null 2>/dev/null
}
# Inside a node's namespace its own /tmp hides the real one, and with it this folder where the checkout
# lies under /tmp: the server reads its files through a bind mount of $SSH at $NODE_FILES/<ip> instead.
NODE_FILES=/run/cxr-sweep-sshd
sshd_config() {  # sshd_config IP: the server for one node
    cat <<CONF
ListenAddress $1:22
HostKey $NODE_FILES/$1/ssh_host_ed25519_key
PidFile none
AllowUsers $SSH_USER
AuthorizedKeysFile .ssh/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
UsePAM no
X11Forwarding no
PrintMotd no
MaxSessions 50
MaxStartups 50:30:100
Subsystem sftp internal-sftp
CONF
}
start_sshd() {
    local t0 ip
    t0=$(now)
    if ! [ -x /usr/sbin/sshd ] || ! command -v rsync >/dev/null; then
        # rsync: how `ray up` copies the file's file_mounts to the nodes
        apt_install openssh-server rsync || { missing "openssh-server not installed ($(why_not_installed))" "ray up (SSH)"; return 0; }
        say "openssh-server and rsync installed with apt ($(secs "$t0"))"
        t0=$(now)
    fi
    if [ "$(id -u)" != 0 ]; then missing "an SSH server for another user on port 22 needs root here" "ray up (SSH)"; return 0; fi
    if ! id "$SSH_USER" >/dev/null 2>&1; then
        # '*': no password, but not locked ('!' would make sshd refuse the key without PAM)
        useradd -m -s /bin/bash -p '*' "$SSH_USER" || { missing "useradd $SSH_USER failed" "ray up (SSH)"; return 0; }
    fi
    local home
    home=$(getent passwd "$SSH_USER" | cut -d: -f6)
    mkdir -p "$SSH" /run/sshd
    [ -s "$SSH/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C "cxr-sweep test" -f "$SSH/id_ed25519"
    [ -s "$SSH/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -C "cxr-sweep test host" -f "$SSH/ssh_host_ed25519_key"
    install -d -m 700 -o "$SSH_USER" -g "$SSH_USER" "$home/.ssh"
    install -m 600 -o "$SSH_USER" -g "$SSH_USER" "$SSH/id_ed25519.pub" "$home/.ssh/authorized_keys"
    echo "127.0.0.1,127.0.0.2 $(cut -d' ' -f1,2 "$SSH/ssh_host_ed25519_key.pub")" >"$SSH/known_hosts"
    for ip in $SSH_HOSTS; do
        ssh_login "$ip" && continue
        if (exec 3<>"/dev/tcp/$ip/22") 2>/dev/null; then
            missing "port 22 on $ip answers, but not as this test's SSH server (another sshd?)" "ray up (SSH)"; return 0
        fi
        # a namespace left from an earlier run whose server died: its unshare, and with it the namespace, ends
        [ -s "$SSH/$ip.pid" ] && kill -KILL "$(cat "$SSH/$ip.pid")" 2>/dev/null || true
        sshd_config "$ip" >"$SSH/$ip.conf"
        install -d -m 1777 "$SSH/$ip/tmp"
        mkdir -p "$NODE_FILES/$ip"  # an empty mount point out here; the mount is the namespace's own
        # --kill-child: stopping the unshare (stop.sh) ends sshd, the namespace's PID 1, and everything in it
        setsid unshare --pid --mount --fork --kill-child --mount-proc sh -c \
            'mount --bind "$1" "$2" && mount --bind "$1/$3/tmp" /tmp && exec /usr/sbin/sshd -D -e -f "$2/$3.conf"' \
            sh "$SSH" "$NODE_FILES/$ip" "$ip" >>"$SSH/$ip.log" 2>&1 </dev/null 9>&- &
        echo $! >"$SSH/$ip.pid"
    done
    local i
    for i in $(seq 1 20); do
        ssh_login 127.0.0.1 && ssh_login 127.0.0.2 && break
        sleep 0.5
    done
    for ip in $SSH_HOSTS; do
        ssh_login "$ip" || { missing "sshd on $ip:22 did not let the test key in (see $SSH/$ip.log)" "ray up (SSH)"; return 0; }
    done
    {
        echo "export CXR_SWEEP_TEST_SSH_USER=$SSH_USER"
        echo "export CXR_SWEEP_TEST_SSH_KEY=$SSH/id_ed25519"
        echo "export CXR_SWEEP_TEST_SSH_KNOWN_HOSTS=$SSH/known_hosts"
        echo "export CXR_SWEEP_TEST_SSH_NODES=$SSH"   # <ip>/tmp: each node's /tmp, seen from here
    } >>"$ENV_FILE.tmp"
    say "sshd for $SSH_USER on $SSH_HOSTS (port 22), one PID and mount namespace each ($(secs "$t0"))"
}

: >"$ENV_FILE.tmp"
start_postgres
start_slurm
start_sshd
setup_chromium
# dcmtk renders DICOM through the PS3.4 grey pipeline and re-encodes it (JPEG, JPEG-LS, RLE);
# OpenJPH encodes and decodes HTJ2K: tests/data_prep/test_dicom_dcmtk.py compares data_prep.dicom with them.
setup_tool dcmtk dcmj2pnm CXR_SWEEP_TEST_DCMTK "dcmtk comparison"
setup_tool openjph-tools ojph_compress CXR_SWEEP_TEST_OPENJPH "HTJ2K comparison"
mv "$ENV_FILE.tmp" "$ENV_FILE"
