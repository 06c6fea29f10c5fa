#!/usr/bin/env bash
# Stop the test PostgreSQL cluster started by start.sh. Its data stays (start.sh reuses it);
# `make clean` or `rm -rf .cxr-sweep/services` throws it away.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DIR=$ROOT/.cxr-sweep/services
PGDATA=$(readlink -f "$DIR/pg")   # may be a symlink to where postgres can reach (see start.sh)

# The test Slurm cluster's daemons (start.sh starts them on its own slurm.conf).
pkill -x slurmctld 2>/dev/null && echo "[services] slurmctld stopped" || true
pkill -x slurmd 2>/dev/null && echo "[services] slurmd stopped" || true

# The SSH servers for `ray up` (start.sh): killing a server's unshare ends its namespace, and with it every
# process still running there (a test's Ray). Its key, home and the user stay for the next start.sh.
for pid in "$DIR"/ssh/*.pid; do
    [ -s "$pid" ] || continue
    kill -KILL "$(cat "$pid")" 2>/dev/null && echo "[services] sshd on $(basename "$pid" .pid) stopped" || true
    rm -f "$pid"
done
sed -i '/CXR_SWEEP_TEST_SSH_/d' "$DIR/env" 2>/dev/null || true

bin=$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1 | xargs -r dirname || true)
if [ -z "$bin" ] || [ ! -f "$PGDATA/postmaster.pid" ]; then
    echo "[services] postgresql not running"
    exit 0
fi
as=()
if [ "$(id -u)" = 0 ]; then as=(runuser -u postgres --); fi   # the server runs as postgres under root
"${as[@]}" "$bin/pg_ctl" stop -D "$PGDATA" -m fast -w >/dev/null
echo "[services] postgresql stopped"
# The env file would now point at a dead server.
sed -i '/CXR_SWEEP_TEST_POSTGRES_URL/d' "$DIR/env" 2>/dev/null || true
