#!/bin/bash
# The README's two commands on a clean Debian 12: a debootstrapped rootfs with GNU make and
# Python 3.11 but no Redis and no PostgreSQL, run as root under systemd-nspawn with a private
# network (slirp4netns gives it the internet, for apt and pip, and nothing of the host's:
# its 127.0.0.1:6379 and :5432 are its own). Inside, as root:
#
#   make run     (in the background) installs redis-server + postgresql with apt-get, starts
#                them, migrates, runs the worker: /readyz must answer 200, `alchemy status`
#                must list its processes, SIGTERM must stop it with exit status 0
#   make test    the whole suite, or PYTEST_ARGS="..." for part of it
#
# `make first-run-trial` runs it. Needs root on a Debian-like Linux (apt) and the Debian mirror.
#   scripts/try-first-run.sh                 run and test, the whole suite
#   PYTEST_ARGS="tests/queue" scripts/...    run, and test only part of it
#   SKIP_TEST=1 scripts/...                  only `make run`
#
# Files: $FIRST_RUN_DIR (default .local/first-run): pristine/ (debootstrapped once, never
# changed, ~250 MB), rootfs/ (a fresh copy of it each run, ~1.5 GB after the run), last-run.log.
# Host-side changes: apt packages debootstrap, systemd-container and slirp4netns when missing.
set -uo pipefail

MAIN=$(cd "$(dirname "$0")/.." && pwd)
FR=${FIRST_RUN_DIR:-$MAIN/.local/first-run}
PRISTINE=$FR/pristine
ROOT=$FR/rootfs
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# A CPython 3.11.3+ (pyproject: asyncio.timeout fix; Debian 12's python3 is 3.11.2), copied
# to /usr/local in the rootfs as a user's own python3.11 build would be: by default the one
# the project's .venv was made from.
HOSTPY=${HOSTPY:-$("$MAIN/.venv/bin/python" -c 'import sys; print(sys.base_prefix)' 2>/dev/null)}

die() { echo "try-first-run: $*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || die "must run as root (debootstrap, systemd-nspawn)"
command -v apt-get >/dev/null || die "needs apt-get (Debian or Ubuntu)"
[[ -x $HOSTPY/bin/python3.11 ]] || die "no CPython 3.11 at HOSTPY='$HOSTPY' (run make venv)"
mkdir -p "$FR"
exec > >(tee "$FR/last-run.log") 2>&1
T0=$(date +%s)
say() { printf '\n=== [%ss] %s\n' "$(($(date +%s) - T0))" "$*"; }
h() { printf '+ %s\n' "$*"; bash -c "$*"; }

NSPAWN=
SLIRP=
cleanup() {
    local rc=$?
    [[ -n $SLIRP ]] && kill "$SLIRP" 2>/dev/null
    [[ -n $NSPAWN ]] && kill -0 "$NSPAWN" 2>/dev/null && kill -TERM "$NSPAWN"
    say "done (exit $rc) in $(($(date +%s) - T0)) s"
}
trap cleanup EXIT

say "1. host tools"
command -v debootstrap >/dev/null && command -v systemd-nspawn >/dev/null &&
    command -v slirp4netns >/dev/null ||
    h 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap systemd-container slirp4netns' ||
    exit 1

say "2. pristine Debian 12 rootfs: minbase + make + the libraries CPython links to"
if [[ ! -f $PRISTINE/.debootstrap-done ]]; then
    rm -rf "$PRISTINE"
    PKGS=make,ca-certificates,procps,libssl3,libffi8,libsqlite3-0,libuuid1,libbz2-1.0,liblzma5
    PKGS+=,libreadline8,libncursesw6,zlib1g,libexpat1,libnsl2,libtirpc3
    h "debootstrap --variant=minbase --include=$PKGS bookworm '$PRISTINE' $MIRROR > '$FR/debootstrap.log' 2>&1" ||
        { tail -20 "$FR/debootstrap.log"; exit 1; }
    touch "$PRISTINE/.debootstrap-done"
fi

say "3. a fresh copy, with Python 3.11 in /usr/local and the checkout in /root/alchemy"
h "rm -rf '$ROOT' && cp -a '$PRISTINE' '$ROOT'" || exit 1
h "cp -a '$HOSTPY/bin/python3.11' '$ROOT/usr/local/bin/' && ln -s python3.11 '$ROOT/usr/local/bin/python3' && cp -a '$HOSTPY'/lib/libpython3.11.so* '$ROOT/usr/local/lib/'" || exit 1
h "tar -C '$HOSTPY/lib' --exclude=python3.11/site-packages --exclude=python3.11/test --exclude=__pycache__ -cf - python3.11 | tar -C '$ROOT/usr/local/lib' -xf - && mkdir -p '$ROOT/usr/local/lib/python3.11/site-packages' && chroot '$ROOT' ldconfig" || exit 1
h "cd '$MAIN' && git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - 2>/dev/null | (mkdir -p '$ROOT/root/alchemy' && tar -x -C '$ROOT/root/alchemy')" || exit 1
echo 'nameserver 10.0.2.3' > "$ROOT/etc/resolv.conf"   # slirp4netns's DNS
# This machine's network: the certificate authorities the host trusts beyond Debian's (an
# intercepting egress proxy's, say), so that pip's HTTPS works as it does on the host.
if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    h "cp /usr/local/share/ca-certificates/*.crt '$ROOT/usr/local/share/ca-certificates/' && chroot '$ROOT' update-ca-certificates 2>&1 | tail -1" || exit 1
    # pip trusts its own bundle, not the system's, unless told (the host's /etc/pip.conf does)
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$ROOT/etc/pip.conf"
fi
echo first-run > "$ROOT/etc/hostname"
h "chroot '$ROOT' /bin/sh -c 'python3.11 -V; make -v | head -1; for p in redis-server redis-cli psql pg_ctl pg_ctlcluster; do command -v \$p || echo \"no \$p\"; done; ls /usr/lib/postgresql 2>&1'"

cat > "$ROOT/root/first-run.sh" <<'EOF'
#!/bin/bash
set -uo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
for _ in $(seq 100); do [[ -e /sys/class/net/tap0 ]] && break; sleep 0.1; done
cd /root/alchemy
T=$(date +%s)
step() { printf '\n--- [+%ss in the container] %s\n' "$(($(date +%s) - T))" "$*"; }

step "make run (in the background), the HTTP listener on 9464"
ALCHEMY_HTTP_PORT=9464 setsid make run > /root/run.log 2>&1 &
RUN=$!
ready=
for _ in $(seq 900); do
    kill -0 $RUN 2>/dev/null || break
    if /usr/local/bin/python3.11 -c 'import urllib.request as u; u.urlopen("http://127.0.0.1:9464/readyz", timeout=2)' 2>/dev/null; then
        ready=1; break
    fi
    sleep 1
done
# make's and ensure_services' lines, without pip's download progress
grep -v '^{' /root/run.log | grep -vE '^ |Collecting|Downloading|Requirement|Obtaining|Using cached|INFO: pip|notice|━' | head -40
echo "... worker log (JSON lines):"; grep '^{' /root/run.log | head -8
echo "... the startup warning:"; grep '"offline_provider_in_use"' /root/run.log
if [[ -z $ready ]]; then echo "make run: never ready"; tail -30 /root/run.log; exit 1; fi
step "ready: /readyz, status, check-config"
/usr/local/bin/python3.11 -c 'import urllib.request as u; print(u.urlopen("http://127.0.0.1:9464/readyz").read().decode())'
.venv/bin/python -m alchemy status
.venv/bin/python -m alchemy check-config | grep -E '^# providers in use|^providers\.(text|image)_provider'
command -v redis-server psql; ls /usr/lib/postgresql
step "SIGTERM to make run's process group"
kill -TERM -- -$RUN
wait $RUN
echo "make run exit status $? (make itself dies of the signal)"
grep -E '"event": ?"worker_stopped"' /root/run.log | tail -1
grep -q '"worker_stopped"' /root/run.log || { echo "no worker_stopped line"; tail -20 /root/run.log; exit 1; }

step "the production guard: ALCHEMY_FORBID_OFFLINE=1 and no API key"
ALCHEMY_FORBID_OFFLINE=1 .venv/bin/python -m alchemy run
echo "exit status $?"

[[ ${SKIP_TEST:-0} == 1 ]] && exit 0
step "make test PYTEST_ARGS='$PYTEST_ARGS'"
make test PYTEST_ARGS="$PYTEST_ARGS -p no:cacheprovider -q"
rc=$?
step "make test: exit $rc"
exit $rc
EOF
chmod 755 "$ROOT/root/first-run.sh"

say "4. systemd-nspawn --private-network, slirp4netns for the internet"
systemd-nspawn --register=no --keep-unit --quiet -M first-run -D "$ROOT" --private-network \
    --as-pid2 --setenv=PYTEST_ARGS="${PYTEST_ARGS:-}" --setenv=SKIP_TEST="${SKIP_TEST:-0}" \
    /root/first-run.sh &
NSPAWN=$!
# the first process under nspawn in a network namespace other than ours: the container's
INIT=
for _ in $(seq 100); do
    for pid in $(pgrep -P "$NSPAWN") $(pgrep -P "$(pgrep -P "$NSPAWN" | tr '\n' ',' | sed 's/,$//')" 2>/dev/null); do
        if [[ $(readlink "/proc/$pid/ns/net") != "$(readlink /proc/self/ns/net)" ]]; then
            INIT=$pid; break
        fi
    done
    [[ -n $INIT ]] && break
    sleep 0.1
done
[[ -n $INIT ]] || die "no container process found"
slirp4netns --configure --mtu=65520 --disable-host-loopback "$INIT" tap0 > "$FR/slirp.log" 2>&1 &
SLIRP=$!
wait "$NSPAWN"
rc=$?
NSPAWN=
say "the container's script exited with $rc"
exit $rc
