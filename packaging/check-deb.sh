#!/usr/bin/env bash
# Checks the .deb as it would be installed, without installing it: unpacks it into a scratch
# tree, checks the files are there, and runs the unpacked agent the way its systemd unit does
# (own user, the unit's capabilities, own mount namespace with a private /tmp and a read-only
# root) against a workload of another user: `lru_stats` must find the schemas and `memory`
# the hook library, and nothing may be left in the target's /tmp.
# Usage: packaging/check-deb.sh [DEB]  (root, or sudo; run from the source tree after `make`)
set -euo pipefail
cd "$(dirname "$0")/.."
deb=${1:-build/profiler-agent_$(cat VERSION)_amd64.deb}
sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo
# Not under /tmp, which the sandbox replaces (the source tree itself may be there);
# readable by the sandbox's user.
root=$(mktemp -d /var/tmp/check-deb.XXXXXX)
chmod 0755 "$root"
target_pid=""
cleanup() {
    [ -z "$target_pid" ] || kill "$target_pid" 2>/dev/null || true
    rm -rf "$root"
}
trap cleanup EXIT
fail() { echo "check-deb: $*" >&2; exit 1; }

dpkg-deb -x "$deb" "$root"
for f in usr/bin/profiler-agent usr/lib/profiler-agent/libprofiler-agent-memhook.so \
         usr/share/profiler-agent/schemas/memory.json usr/share/man/man8/profiler-agent.8.gz \
         etc/profiler-agent/profiler-agent.conf lib/systemd/system/profiler-agent.service; do
    [ -e "$root/$f" ] || fail "missing /$f"
done
dpkg-deb -f "$deb" Depends | grep -q adduser || fail "Depends lacks adduser"
dpkg-deb -I "$deb" conffiles | grep -qx /etc/profiler-agent/profiler-agent.conf ||
    fail "the config is not a conffile"
grep -q '^output_dir = /var/lib/profiler-agent/profiles$' \
    "$root/etc/profiler-agent/profiler-agent.conf" || fail "the config's output_dir"
help=$("$root/usr/bin/profiler-agent" --help)
grep -q '^Usage: profiler-agent' <<< "$help" || fail "--help"
[ "$("$root/usr/bin/profiler-agent" --version)" = "profiler-agent $(cat VERSION)" ] ||
    fail "--version"

if command -v systemd-analyze >/dev/null; then
    # verify wants ExecStart's binary and the man page where the unit names them.
    sed "s|^ExecStart=/usr/bin/|ExecStart=$root/usr/bin/|" \
        "$root/lib/systemd/system/profiler-agent.service" > "$root/profiler-agent.service"
    MANPATH="$root/usr/share/man" systemd-analyze verify "$root/profiler-agent.service"
fi

# The unit's capabilities, as setpriv spells them.
caps=$(sed -n 's/^AmbientCapabilities=//p' "$root/lib/systemd/system/profiler-agent.service" |
       tr '[:upper:]' '[:lower:]' | sed -e 's/cap_/+/g' -e 's/ /,/g')
[ -n "$caps" ] || fail "no AmbientCapabilities in the unit"
shared_files() {
    find /tmp /dev/shm -maxdepth 1 \( -name 'profiler-agent-ring.*' -o \
        -name 'profiler-agent-memhook.*' \) | sort
}
before=$(shared_files)
build/workloads/allocs > /dev/null &
target_pid=$!
sleep 0.3
# /usr/lib gets the package's files through an overlay, where the agent looks for the hook
# library; the target stays outside, so the library and ring go through /proc/PID/root/tmp.
# shellcheck disable=SC2016 # the inner script gets its values as arguments
out=$($sudo unshare -m --propagation private bash -c '
    set -e
    mount -t overlay overlay -o "lowerdir=$1/usr/lib:/usr/lib" /usr/lib
    mount -t tmpfs -o mode=1777 tmpfs /tmp
    install -d -o 64999 -g 64999 -m 0750 /tmp/state
    mount --bind / / && mount -o remount,bind,ro /
    run() {
        setpriv --reuid=64999 --regid=64999 --clear-groups --no-new-privs \
            --inh-caps=-all,"$2" --ambient-caps=-all,"$2" --bounding-set=-all,"$2" \
            "$1/usr/bin/profiler-agent" run "${@:3}" --output-dir /tmp/state/profiles \
            --database /tmp/state/runs.db 2>/dev/null | tail -n 1
    }
    run "$1" "$2" lru_stats
    run "$1" "$2" memory "{\"seconds\": 1}" --target "pid:$3"
    ls /tmp/state/profiles' bash "$root" "$caps" "$target_pid")
echo "$out"
[ "$(grep -c '"status":"ok"' <<< "$out")" = 2 ] || fail "an action failed in the sandbox"
grep -q '"method":"inject"' <<< "$out" || fail "memory did not use the hook library"
grep -q '^massif\.out\.' <<< "$out" || fail "memory wrote no massif.out"
leftover=$(comm -13 <(echo "$before") <(shared_files))
[ -z "$leftover" ] || fail "left in /tmp or /dev/shm: $leftover"
echo "check-deb: $deb unpacks, runs sandboxed and finds its schemas and hook library"
