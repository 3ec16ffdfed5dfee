#!/bin/bash
# Try the units for real: boot systemd (a Debian 12 rootfs under systemd-nspawn) and run the
# systemctl / journalctl steps of docs/operations.md against systemd/alchemy.service and
# systemd/alchemy@.service, printing every command with its output, exit status and time.
# `make systemd-trial` runs it. Needs root on a Debian-like Linux (apt, CAP_SYS_ADMIN), the
# Debian package mirror, and the Redis and PostgreSQL the project's tests use.
#
#   systemd/try-in-container.sh            reuse the rootfs if present (~20 s)
#   systemd/try-in-container.sh --fresh    debootstrap the rootfs again first (~90 s in all)
#   WATCHDOG_TEST=1 ...                    also freeze alchemy@research (SIGSTOP) until the
#                                          watchdog kills and restarts it (+~10 s)
#   ALCHEMY_SRC=head ...                   install `git archive HEAD`, not the working tree
#   KEEP=1 ...                             leave the container running at the end (stop it with
#                                          nsenter -t $(cat $SD/leader.pid) -a systemctl poweroff;
#                                          the next run also stops it; LIFETIME=seconds
#                                          (default 1200) bounds its life in any case)
#
# Its files live in $SYSTEMD_TRIAL_DIR (default .local/systemd-trial, about 600 MB). Host-side
# state it touches: apt packages debootstrap + systemd-container (installed if missing),
# PostgreSQL database "alchemy_sd" (dropped and re-created), Redis database 13 (flushed),
# /run/systemd/nspawn/propagate/alchemy-sd. The transcript also goes to $SD/last-run.log.
set -uo pipefail

MAIN=$(cd "$(dirname "$0")/.." && pwd)
SD=${SYSTEMD_TRIAL_DIR:-$MAIN/.local/systemd-trial}
ROOT=$SD/rootfs
MACHINE=alchemy-sd
# A CPython 3.11.3+ build (Debian 12's is 3.11.2), copied to /usr/local in the rootfs: by
# default the one the project's .venv was made from.
HOSTPY=${HOSTPY:-$("$MAIN/.venv/bin/python" -c 'import sys; print(sys.base_prefix)' 2>/dev/null)}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PGDB=alchemy_sd
REDIS_DB=13
FRESH=0; [[ ${1:-} == --fresh ]] && FRESH=1

die() { echo "try-in-container: $*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || die "must run as root (it boots a container)"
command -v apt-get >/dev/null || die "needs apt-get (Debian or Ubuntu) for debootstrap and systemd-nspawn"
[[ -x $HOSTPY/bin/python3.11 ]] || die "no CPython 3.11 at HOSTPY='$HOSTPY' (run make venv, or set HOSTPY)"
mkdir -p "$SD"
exec > >(tee "$SD/last-run.log") 2>&1
T0=$(date +%s.%N)
elapsed() { printf '%.1f' "$(echo "$(date +%s.%N) - $T0" | bc)"; }
say() { printf '\n=== [%ss] %s\n' "$(elapsed)" "$*"; }

# h CMD: run CMD on the host, printed first.
h() { printf '+ %s\n' "$*"; bash -c "$*"; local rc=$?; ((rc)) && printf '(exit %d)\n' "$rc"; return $rc; }

# c CMD: run CMD as root inside the booted container (all its namespaces), printed first,
# with its exit status and duration. CT= sets the time limit (default 150 s).
c() {
    printf '[%s]# %s\n' "$MACHINE" "$*"
    local t=$(date +%s.%N)
    timeout -k 5 "${CT:-150}" nsenter -t "$LEADER" -a \
        env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
        TERM=dumb LANG=C.UTF-8 SYSTEMD_COLORS=0 SYSTEMD_PAGER= SYSTEMD_LESS= \
        bash -c "cd /root; . /root/.alchemy-fn 2>/dev/null; $*"
    local rc=$?
    printf '(exit %d, %.2fs)\n' "$rc" "$(echo "$(date +%s.%N) - $t" | bc)"
    return $rc
}

NSPAWN_PID=
LEADER=
cleanup() {
    local rc=$?
    if [[ -n $NSPAWN_PID ]] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
        if [[ ${KEEP:-0} == 1 ]]; then
            say "KEEP=1: container left running (nspawn pid $NSPAWN_PID, leader $LEADER)"
            return
        fi
        say "shutting the container down"
        [[ -n $LEADER ]] && timeout 20 nsenter -t "$LEADER" -a systemctl poweroff 2>/dev/null
        for _ in $(seq 60); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.5; done
        if kill -0 "$NSPAWN_PID" 2>/dev/null; then
            echo "nspawn $NSPAWN_PID still running: SIGTERM"; kill -TERM "$NSPAWN_PID"; sleep 5
            kill -0 "$NSPAWN_PID" 2>/dev/null && { echo "SIGKILL $NSPAWN_PID"; kill -KILL "$NSPAWN_PID"; }
        fi
        wait "$NSPAWN_PID" 2>/dev/null
        echo "nspawn exited; console log tail:"; tail -n 5 "$SD/console.log"
    fi
    rm -rf "/run/systemd/nspawn/propagate/$MACHINE" "$SD/nspawn.pid" "$SD/leader.pid"
    say "done (exit $rc); total $(elapsed)s; disk: $(du -sh "$ROOT" | cut -f1) rootfs, $(du -sh "$SD" | cut -f1) all of $SD"
}
trap cleanup EXIT

say "0. stale container from an earlier run?"
if [[ -f $SD/nspawn.pid ]]; then
    old=$(cat "$SD/nspawn.pid")
    if kill -0 "$old" 2>/dev/null && grep -q systemd-nspawn "/proc/$old/cmdline"; then
        echo "stopping earlier nspawn $old"
        [[ -f $SD/leader.pid ]] && timeout 20 nsenter -t "$(cat "$SD/leader.pid")" -a systemctl poweroff
        for _ in $(seq 40); do kill -0 "$old" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$old" 2>/dev/null && kill -TERM "$old"
        sleep 2
    fi
    rm -f "$SD/nspawn.pid" "$SD/leader.pid"
fi

say "1. host tools"
command -v debootstrap >/dev/null && command -v systemd-nspawn >/dev/null ||
    h 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap systemd-container' || exit 1
h 'systemd-nspawn --version | head -1'

say "2. rootfs $ROOT"
[[ $FRESH == 1 ]] && h "rm -rf '$ROOT'"
if [[ ! -x $ROOT/lib/systemd/systemd || ! -f $ROOT/.debootstrap-done ]]; then
    rm -rf "$ROOT"
    # systemd + dbus to boot; the libraries the copied CPython's extension modules link to; jq
    # for the docs' log filter.
    PKGS=systemd,systemd-sysv,dbus,libnss-systemd,ca-certificates,procps,iproute2,less,jq
    PKGS+=,libssl3,libffi8,libsqlite3-0,libuuid1,libbz2-1.0,liblzma5,libreadline8,libncursesw6
    PKGS+=,zlib1g,libexpat1,libnsl2,libtirpc3
    h "timeout 600 debootstrap --variant=minbase --include=$PKGS bookworm '$ROOT' $MIRROR > '$SD/debootstrap.log' 2>&1 && tail -1 '$SD/debootstrap.log'" || { tail -20 "$SD/debootstrap.log"; exit 1; }
    echo "$MACHINE" > "$ROOT/etc/hostname"
    touch "$ROOT/.debootstrap-done"
else
    echo "reusing it ($(du -sh "$ROOT" | cut -f1))"
fi

say "3. Python 3.11.3+ in the rootfs's /usr/local (Debian 12's python3.11 is 3.11.2)"
want=$("$HOSTPY/bin/python3.11" -c 'import sys; print(sys.version.split()[0])')
have=$(chroot "$ROOT" /usr/local/bin/python3.11 -c 'import sys; print(sys.version.split()[0])' 2>/dev/null)
if [[ $have != "$want" ]]; then
    h "mkdir -p '$ROOT/usr/local/bin' '$ROOT/usr/local/lib' && cp -a '$HOSTPY/bin/python3.11' '$ROOT/usr/local/bin/' && cp -a '$HOSTPY'/lib/libpython3.11.so* '$ROOT/usr/local/lib/'" || exit 1
    # the stdlib only: not the host's site-packages, nor the test suite
    h "rsync -a --delete --exclude=/site-packages/ --exclude=/test/ --exclude=__pycache__ '$HOSTPY/lib/python3.11/' '$ROOT/usr/local/lib/python3.11/' && mkdir -p '$ROOT/usr/local/lib/python3.11/site-packages' && chroot '$ROOT' ldconfig" || exit 1
fi
# its RPATH points into /root/.pyenv, which does not exist in the rootfs; ld.so falls back
# to /usr/local/lib (ldconfig)
h "chroot '$ROOT' /usr/local/bin/python3.11 -c 'import sys, ssl, sqlite3, ctypes; print(sys.executable, sys.version)'" || exit 1

say "4. the checkout to install (from $MAIN) -> $SD/src"
h "rm -rf '$SD/src' && mkdir -p '$SD/src'"
if [[ ${ALCHEMY_SRC:-worktree} == head ]]; then
    h "git -C '$MAIN' archive --format=tar HEAD | tar -x -C '$SD/src'" || exit 1
else
    # the working tree: tracked files (with uncommitted changes) and untracked, not ignored ones
    h "cd '$MAIN' && GIT_OPTIONAL_LOCKS=0 git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - 2>/dev/null | tar -x -C '$SD/src'" || exit 1
fi
h "GIT_OPTIONAL_LOCKS=0 git -C '$MAIN' log -1 --format='%h %s'; GIT_OPTIONAL_LOCKS=0 git -C '$MAIN' status --short | head"

say "5. wheels for an offline pip install in the container (redone when pyproject.toml changes)"
stamp=$(sha256sum "$SD/src/pyproject.toml" | cut -c1-16)
if [[ $(cat "$SD/wheels/.stamp" 2>/dev/null) != "$stamp" ]]; then
    h "rm -rf '$SD/wheels' && mkdir -p '$SD/wheels' && cp -a '$SD/src' '$SD/wheels-build' && timeout 300 '$HOSTPY/bin/python3.11' -m pip download --quiet -d '$SD/wheels' '$SD/wheels-build' 'setuptools>=68' wheel 2>&1 | grep -v 'is ignored'; rm -rf '$SD/wheels-build'; ls '$SD/wheels' | wc -l" || exit 1
    echo "$stamp" > "$SD/wheels/.stamp"
else
    echo "reusing $(ls "$SD/wheels" | wc -l) wheels"
fi

say "6. the service's Redis and PostgreSQL (host): database $PGDB, Redis db $REDIS_DB"
h "dropdb -h 127.0.0.1 -U postgres --if-exists $PGDB && createdb -h 127.0.0.1 -U postgres $PGDB && redis-cli -n $REDIS_DB flushdb" || exit 1

say "7. boot: systemd-nspawn -b (host network, so 127.0.0.1:6379/5432 are the host's)"
rm -rf "/run/systemd/nspawn/propagate/$MACHINE"
# an empty journal each run, so journalctl shows this run only (the rootfs keeps a persistent one)
h "rm -rf '$ROOT'/var/log/journal/*"
# --register=no --keep-unit: no systemd/machined/D-Bus on the host to register with.
# timeout: a backstop; SIGTERM makes nspawn shut the container down cleanly.
printf '+ %s\n' "systemd-nspawn --register=no --keep-unit -M $MACHINE -D $ROOT -b --console=pipe --bind-ro=$SD/src:/srv/checkout --bind-ro=$SD/wheels:/srv/wheels &"
timeout -k 10 "${LIFETIME:-1200}" systemd-nspawn --register=no --keep-unit -M "$MACHINE" -D "$ROOT" -b \
    --console=pipe --bind-ro="$SD/src:/srv/checkout" --bind-ro="$SD/wheels:/srv/wheels" \
    </dev/null >"$SD/console.log" 2>&1 &
NSPAWN_PID=$!          # the timeout process; systemd-nspawn is its child
echo "$NSPAWN_PID" > "$SD/nspawn.pid"
for _ in $(seq 100); do
    nspawn=$(pgrep -P "$NSPAWN_PID" -x systemd-nspawn)
    [[ -n $nspawn ]] && LEADER=$(pgrep -P "$nspawn" -x systemd)
    [[ -n $LEADER ]] && break
    sleep 0.1
done
[[ -n $LEADER ]] || { echo "no container init found"; cat "$SD/console.log"; exit 1; }
echo "$LEADER" > "$SD/leader.pid"
echo "nspawn pid $nspawn, container PID 1 = host pid $LEADER"
# systemctl needs PID 1's private socket, which appears a moment after the leader exists
CT=60 c 'until [ -S /run/systemd/private ]; do sleep 0.1; done; systemctl is-system-running --wait; systemd-analyze | head -1; systemctl --version | head -1'

say "8. docs/operations.md, Installing with systemd, steps 1-3 (as root in the container)"
# The docs' shell function, verbatim, for the c() commands.
cat > "$ROOT/root/.alchemy-fn" <<'EOF'
alchemy() (set -a; . /etc/alchemy/alchemy.env; set +a; cd /opt/alchemy &&
    exec .venv/bin/python -m alchemy --config /etc/alchemy/config.toml "$@")
EOF
c 'id alchemy >/dev/null 2>&1 || useradd --system --user-group --home-dir /var/lib/alchemy --no-create-home --shell /usr/sbin/nologin alchemy; id alchemy'
c 'PY=/usr/local/bin/python3.11; "$PY" -c "import sys; assert sys.version_info >= (3, 11, 3), sys.version; print(sys.version)"' || exit 1
# instead of `git archive HEAD | tar -x -C /opt/alchemy`: the checkout bind-mounted at
# /srv/checkout; the old files are removed first (keeping .venv) so runs are repeatable.
c 'install -d -m 755 /opt/alchemy && find /opt/alchemy -mindepth 1 -maxdepth 1 ! -name .venv -exec rm -rf {} + && tar -C /srv/checkout -cf - . | tar -x -C /opt/alchemy --no-same-owner && ls /opt/alchemy' || exit 1
c '[ -x /opt/alchemy/.venv/bin/python ] || /usr/local/bin/python3.11 -m venv /opt/alchemy/.venv; /opt/alchemy/.venv/bin/python -V' || exit 1
# the docs' `pip install --quiet /opt/alchemy`, offline from the wheels the host downloaded
CT=300 c '/opt/alchemy/.venv/bin/pip install --quiet --disable-pip-version-check --no-index --find-links /srv/wheels /opt/alchemy && /opt/alchemy/.venv/bin/pip list 2>/dev/null | grep -iE "^(alchemy|redis|asyncpg) "' || exit 1
c 'install -d -m 750 -g alchemy /etc/alchemy && install -m 640 -g alchemy /opt/alchemy/config.toml /etc/alchemy/config.toml && install -m 600 /opt/alchemy/systemd/alchemy.env.example /etc/alchemy/alchemy.env' || exit 1
# "Then edit both files": the media directory, and the secrets for this machine
c "sed -i 's|^directory = \".local/media\"|directory = \"/var/lib/alchemy/media\"|' /etc/alchemy/config.toml && grep -n '^directory' /etc/alchemy/config.toml"
c "printf '%s\n' 'REDIS_URL=redis://127.0.0.1:6379/$REDIS_DB' 'DATABASE_URL=postgresql://postgres@127.0.0.1:5432/$PGDB' 'ANTHROPIC_API_KEY=' 'OPENAI_API_KEY=' 'ALCHEMY_FORBID_OFFLINE=0' > /etc/alchemy/alchemy.env && ls -l /etc/alchemy && cat /etc/alchemy/alchemy.env"

say "9. step 4: check the configuration, create the schema"
c 'alchemy check-config | head -3' || exit 1
c 'alchemy migrate' || exit 1

say "10. step 5: install the units, check them, start"
c 'cd /opt/alchemy && install -m 644 systemd/alchemy.service "systemd/alchemy@.service" /etc/systemd/system/'
c 'systemd-analyze verify /etc/systemd/system/alchemy.service "/etc/systemd/system/alchemy@.service"'
c 'for u in alchemy.service alchemy@research.service; do printf "%s: " $u; systemd-analyze security --offline=true --no-pager /etc/systemd/system/$u | tail -1; done'
c 'systemctl daemon-reload'
c 'systemctl enable --now alchemy' || { c 'journalctl -u alchemy -n 40 --no-pager'; exit 1; }
c 'systemctl status alchemy --no-pager -l'
c 'journalctl -u alchemy -n 20 --no-pager'

say "10b. is the sandbox really applied inside nspawn? (the service's own view)"
# a helper run inside the service's mount namespace (not in /root: ProtectHome hides it there)
cat > "$ROOT/usr/local/sbin/sandbox-view" <<'EOF'
#!/bin/sh
pid=$1
grep -E '^(Uid|NoNewPrivs|Seccomp|CapPrm|CapEff|CapBnd|CapAmb|Umask)' /proc/$pid/status
for ns in mnt uts ipc net; do echo "ns $ns: service $(readlink /proc/$pid/ns/$ns), PID 1 $(readlink /proc/1/ns/$ns)"; done
nsenter -t $pid -m sh -c '
  for p in / /usr /etc /opt/alchemy /var /var/lib/alchemy/media /tmp /dev /proc /proc/sys /sys /sys/fs/cgroup /root /home /run/user; do
    printf "  %-24s %s\n" $p "$(findmnt -n -o FSTYPE,OPTIONS --target $p 2>/dev/null | tail -1 | cut -d, -f1-2)"; done
  echo "  ls -A /root: $(ls -A /root 2>&1 | head -3 | tr "\n" " ")"
  echo "  /dev: $(ls /dev | tr "\n" " ")"
  echo "  /proc: $(findmnt -n -o OPTIONS /proc)"
  touch /opt/alchemy/x /etc/x 2>&1; true'
EOF
chmod 755 "$ROOT/usr/local/sbin/sandbox-view"
c 'sandbox-view $(systemctl show -P MainPID alchemy)'

say "11. jobs through the hardened service (offline providers): a research job, an image"
ids=$(psql -h 127.0.0.1 -U postgres -d "$PGDB" -Atc "WITH b AS (INSERT INTO brands (name) VALUES ('sd-brand') RETURNING id), i AS (INSERT INTO ideas (brand_id, title) SELECT id, 'heat pumps in cold climates' FROM b RETURNING id, brand_id) SELECT id || ' ' || brand_id FROM i")
read -r IDEA BRAND <<<"$ids"
echo "idea $IDEA, brand $BRAND"
c "alchemy enqueue research '{\"idea_id\":\"$IDEA\",\"type\":\"full\"}' --id sd-research-1 && alchemy enqueue media-generation '{\"brand_id\":\"$BRAND\",\"prompt\":\"a heat pump in snow\"}' --id sd-media-1"
sleep 3
c "journalctl -u alchemy -o cat --no-pager | jq -cR 'fromjson? | select(.event == \"job_finished\")'"
c 'ls -l /var/lib/alchemy /var/lib/alchemy/media | head; alchemy status'
c 'systemctl status alchemy --no-pager | grep -E "Active|Status|Main PID"'

say "12. one process per queue (alchemy@.service), beside alchemy.service"
c 'systemctl enable --now alchemy@research alchemy@content-generation alchemy@media-generation'
c "systemctl status 'alchemy@*' --no-pager -n 3"
c 'alchemy status'

say "12b. a drop-in (docs: systemctl edit), then undone"
# the "editor" writes the docs' two lines into the file systemctl edit hands it
printf '#!/bin/sh\nprintf "[Service]\\nTimeoutStopSec=75\\n" > "$1"\n' > "$ROOT/usr/local/sbin/write-dropin"
chmod 755 "$ROOT/usr/local/sbin/write-dropin"
# (systemctl edit wants a terminal: script(1) gives it one)
c 'script -qec "EDITOR=/usr/local/sbin/write-dropin systemctl edit alchemy@research" /dev/null && cat /etc/systemd/system/alchemy@research.service.d/override.conf && echo && systemctl show -P TimeoutStopUSec alchemy@research'
c 'systemctl revert alchemy@research && systemctl show -P TimeoutStopUSec alchemy@research'

say "12c. the HTTP listener, one port per process (docs: HTTP listener)"
# port 9464 for alchemy.service from the config file; a drop-in per alchemy@ instance
printf '#!/bin/sh\nprintf "[Service]\\nEnvironment=ALCHEMY_HTTP_PORT=%%s\\n" "$PORT" > "$1"\n' > "$ROOT/usr/local/sbin/write-port-dropin"
chmod 755 "$ROOT/usr/local/sbin/write-port-dropin"
c "sed -i '/^\\[http\\]/,/^\\[/ s/^port = 0 /port = 9464/' /etc/alchemy/config.toml && grep -n '^port' /etc/alchemy/config.toml"
c 'port=9465; for unit in alchemy@research alchemy@content-generation alchemy@media-generation; do script -qec "PORT=$port EDITOR=/usr/local/sbin/write-port-dropin systemctl edit $unit" /dev/null || break; port=$((port + 1)); done; cat /etc/systemd/system/alchemy@*.service.d/override.conf'
c "systemctl restart alchemy 'alchemy@*' && systemctl is-active alchemy 'alchemy@*'"
c 'for port in 9464 9465 9466 9467; do python3.11 -c "import sys, urllib.request as u; r = u.urlopen(\"http://127.0.0.1:$port/readyz\"); print($port, r.status, r.read().decode())"; done'
c "python3.11 -c 'import urllib.request as u; print(u.urlopen(\"http://127.0.0.1:9465/metrics\").read().decode())' | grep -E '^alchemy_(jobs_completed_total|queue_jobs|jobs_in_flight|redis_up)' | head -12"
c "journalctl -u alchemy -u 'alchemy@*' -o cat --since -1min | jq -cR 'fromjson? | select(.event == \"http_listening\")'"

say "12d. watching it (docs: Watching it)"
c "systemctl status alchemy 'alchemy@*' --no-pager -n 2"
c 'timeout 2 journalctl -u alchemy -f --no-pager; echo "(journalctl -f stopped by timeout: $?)"'
c "journalctl -u 'alchemy@*' -o cat --since -1h | jq -cR 'fromjson? | select(.level != \"info\")'"
c 'alchemy status'

say "13. a rolling restart (docs: Upgrades and rolling restarts) while research jobs wait"
# 8 research jobs: the queue's rate limit (5/min, burst 5) starts 5 at once and the others
# 12 s apart, so jobs are waiting in Redis across the restarts.
c "for n in 1 2 3 4 5 6 7 8; do alchemy enqueue research '{\"idea_id\":\"$IDEA\",\"type\":\"keywords\"}' --id sd-roll-\$n >/dev/null; done; alchemy status | head -4"
# The docs' block; the code comes from the bind-mounted checkout (the container has no git)
# and pip installs offline from the host's wheels.
c 'tar -C /srv/checkout -cf - . | tar -x -C /opt/alchemy --no-same-owner'
CT=300 c '/opt/alchemy/.venv/bin/pip install --quiet --disable-pip-version-check --no-index --find-links /srv/wheels /opt/alchemy'
c 'alchemy check-config >/dev/null && echo check-config ok; alchemy migrate'
c 'TIMEFORMAT="  took %Rs"; for unit in alchemy@research alchemy@content-generation alchemy@media-generation; do echo "systemctl restart $unit"; time systemctl restart "$unit" || break; echo "  MainPID=$(systemctl show -P MainPID "$unit") Status: $(systemctl show -P StatusText "$unit")"; done'
c 'TIMEFORMAT="  took %Rs"; time systemctl restart alchemy; echo "  MainPID=$(systemctl show -P MainPID alchemy) Status: $(systemctl show -P StatusText alchemy)"'
c 'journalctl -u alchemy@research -n 30 --no-pager | tail -12'
# every one of the 8 jobs completes, once, whichever process took it
CT=90 c "for i in \$(seq 80); do n=\$(journalctl -u alchemy -u 'alchemy@*' -o cat --no-pager | jq -cR 'fromjson? | select(.event == \"job_finished\" and (.job_id | startswith(\"sd-roll-\")))' | wc -l); [ \$n -ge 8 ] && break; sleep 1; done; echo \"finished: \$n of 8\"; journalctl -u alchemy -u 'alchemy@*' -o cat --no-pager | jq -rR 'fromjson? | select(.event == \"job_finished\" and (.job_id | startswith(\"sd-roll-\"))) | [.job_id, .outcome, .worker, .ts] | @tsv' | sort; alchemy status | head -4"
c "journalctl -u 'alchemy@*' -o cat --since -5min --no-pager | jq -cR 'fromjson? | select(.level != \"info\")' | head -20"
c "systemctl status alchemy 'alchemy@*' --no-pager -n 0"

if [[ ${WATCHDOG_TEST:-0} == 1 ]]; then
    say "13b. the watchdog (docs: The watchdog): freeze alchemy@research with SIGSTOP"
    # no WATCHDOG=1 while stopped; systemd sends SIGABRT (then SIGCONT) after WatchdogSec=2
    c 'systemctl kill -s SIGSTOP alchemy@research; date -u +%T'
    CT=60 c 'for i in $(seq 50); do [ "$(systemctl show -P Result alchemy@research)" = watchdog ] && break; sleep 1; done; date -u +%T; systemctl show -P Result alchemy@research'
    sleep 7   # RestartSec=5
    c 'systemctl status alchemy@research --no-pager -n 0; systemctl show -P NRestarts alchemy@research'
    # the docs' command
    c "journalctl -u alchemy@research -o cat --no-pager | grep -A 30 'Fatal Python error' | head -25"
    c "journalctl -u alchemy@research --no-pager -n 40 | grep -E 'systemd\\[1\\]|recovered_own|worker_started|systemd_ready'"
fi

say "14. stop (docs: Stopping), timed"
c "TIMEFORMAT='  took %Rs'; time systemctl stop alchemy 'alchemy@*'"
c "journalctl -u alchemy -u 'alchemy@research' -n 10 --no-pager"
c "systemctl status alchemy alchemy@research --no-pager -n 0"
c 'alchemy status'
# leave nothing enabled for the next boot of this rootfs
c 'systemctl disable alchemy alchemy@research alchemy@content-generation alchemy@media-generation && systemctl revert alchemy@research alchemy@content-generation alchemy@media-generation'
c 'journalctl -b -p warning --no-pager | grep -v -E "^-- " | head -20; systemctl --failed --no-pager'
