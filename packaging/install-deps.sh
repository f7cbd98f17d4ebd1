#!/usr/bin/env bash
# Installs, from Debian 12, the packages of the lists named (build, demo, test: the files
# packaging/deps-NAME.txt) that are missing; no name means all three. Root or sudo.
set -euo pipefail
cd "$(dirname "$0")"
[ $# -gt 0 ] || set -- build demo test
sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo
missing=()
for p in $(for l in "$@"; do sed 's/#.*//' "deps-$l.txt"; done); do
    [ "$(dpkg-query -W -f '${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing ${missing[*]}"
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# The viewers the tests open files in that only the npm registry has (tests/viewers/package.json,
# pinned by its package-lock.json): with the test list.
for l in "$@"; do
    if [ "$l" = test ]; then
        # Debian's npm unless one is there already (a Node.js from elsewhere brings its own).
        command -v npm >/dev/null ||
            DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends npm
        npm ci --prefix ../tests/viewers --no-audit --no-fund
    fi
done
