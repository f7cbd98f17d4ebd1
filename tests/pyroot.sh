#!/bin/sh
# Prints the path of a Debian unstable root that holds python3.13, python3.14 and python3.15, for
# the Python frame tests (`chroot ROOT /usr/bin/python3.14 ...`), creating it first when missing.
# Cached in the build tree as build/pyroot (PYROOT overrides). A lock file serialises callers;
# debootstrap works in a temporary directory that is renamed into place only when complete, so a
# half-made root is never used. Not a test: needs root, and network the first time (~370 MB).
set -eu

top=$(cd "$(dirname "$0")/.." && pwd)
dir=${PYROOT:-$top/build/pyroot}
pkgs=python3.13,python3.14,python3.15

ready() {
    for v in 3.13 3.14 3.15; do
        [ -x "$dir/usr/bin/python$v" ] || return 1
    done
}

# The Debian mirror this machine's apt uses (deb822 .sources first, then sources.list), not its
# security archive; deb.debian.org when there is none.
mirror() {
    m=$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources 2>/dev/null |
        tr ' ' '\n' | grep -v -e security -e '^$' | head -n 1 || true)
    if [ -z "$m" ] && [ -f /etc/apt/sources.list ]; then
        m=$(awk '$1 == "deb" && $2 !~ /security/ { print ($2 ~ /^\[/ ? $3 : $2); exit }' \
            /etc/apt/sources.list)
    fi
    echo "${m:-http://deb.debian.org/debian}"
}

if ready; then
    echo "$dir"
    exit 0
fi
mkdir -p "$(dirname "$dir")"
exec 9>"$dir.lock"
flock 9
if ! ready; then
    if [ -e "$dir" ]; then
        echo "pyroot.sh: $dir exists but lacks python3.13-3.15; move it away first" >&2
        exit 1
    fi
    tmp=$(mktemp -d "$dir.tmp.XXXXXX")
    trap 'umount "$tmp/proc" "$tmp/sys" 2>/dev/null || true; rm -rf "$tmp"' EXIT
    debootstrap --variant=minbase --include="$pkgs" sid "$tmp" "$(mirror)" >&2
    mv "$tmp" "$dir"
    trap - EXIT
fi
echo "$dir"
