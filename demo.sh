#!/usr/bin/env bash
# The demo: installs what is missing to build and run it (Debian 12; packaging/deps-build.txt and
# deps-demo.txt, not the test tools), builds, starts a private mosquitto on a free loopback port,
# the bundled demo service and the agent, sends commands with mosquitto_pub, prints the results
# and log records, a CPU profile read back by pstats, and tears everything down. Run as root or
# with sudo.
set -euo pipefail
cd "$(dirname "$0")"

bash packaging/install-deps.sh build demo

echo "== building"
make -s -j"$(nproc)"

work=$(mktemp -d /tmp/profiler-agent-demo.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$port" >"$work/mosquitto.conf"
/usr/sbin/mosquitto -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do
    mosquitto_sub -p "$port" -t x -W 1 -C 1 -E >/dev/null 2>&1 && break
    sleep 0.1
done
echo "== private mosquitto on 127.0.0.1:$port"

coproc DEMO { exec build/workloads/demo_service; }
pids+=("$DEMO_PID")
read -r _ready svc_port <&"${DEMO[0]}"
echo "== demo service: pid $DEMO_PID, listening on 127.0.0.1:$svc_port"

# The agent refuses root unless told; a demo run by root says so.
allow_root=()
[ "$(id -u)" = 0 ] && allow_root=(--allow-root)
build/profiler-agent --broker "127.0.0.1:$port" --node-id demo --target "pid:$DEMO_PID" \
    --database "$work/runs.db" --output-dir "$work/profiles" "${allow_root[@]}" 2>"$work/agent.log" &
pids+=($!)
mosquitto_sub -p "$port" -t profiler/demo/status -C 1 -W 10 >/dev/null
echo "== agent online as node 'demo'"

send() {
    local action=$1 payload=$2
    echo
    echo "\$ mosquitto_pub -t profiler/$action -m '$payload'"
    mosquitto_sub -p "$port" -v -t profiler/demo/log -t profiler/demo/result -W 20 \
        --remove-retained -C 1000 >"$work/out" 2>/dev/null &
    local sub=$!
    sleep 0.2
    mosquitto_pub -p "$port" -q 1 -t "profiler/$action" -m "$payload"
    for _ in $(seq 150); do
        grep -q '^profiler/demo/result ' "$work/out" && break
        sleep 0.1
    done
    kill "$sub" 2>/dev/null || true
    wait "$sub" 2>/dev/null || true
    sed -e 's/^profiler\/demo\/log //' -e 's/^profiler\/demo\/result /result: /' "$work/out"
}

send log_thread_frames '{"request_id": "demo-1"}'
send dump_sockets '{"request_id": "demo-2"}'
send lru_stats '{"request_id": "demo-3"}'
send log_current_tasks '{"request_id": "demo-4"}'
send start '{"request_id": "demo-5", "seconds": 3, "frequency": 499}'
send start '{"request_id": "demo-6", "seconds": 0}'

cprof=$(ls "$work"/profiles/profile.*.cprof)
echo
echo "== the CPU profile as Python's pstats reads it (also: $(ls "$work"/profiles | tr '\n' ' '))"
printf 'sort tottime\nstats 6\nquit\n' | /usr/bin/python3 -m pstats "$cprof" | sed -n '/function calls/,/^$/p;/ncalls/,/^$/p' | grep -v Goodbye

echo
echo "== runs recorded in SQLite"
sqlite3 -header -column "$work/runs.db" \
    "SELECT id, request_id, action, status, coalesce(error, '') AS error FROM runs"
echo
echo "== done; everything torn down"
