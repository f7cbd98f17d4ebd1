#!/usr/bin/env bash
# The add-on's entry point: writes the agent's config from the add-on options (/data/options.json)
# and the Supervisor's mqtt service, keeps a pidfile naming Home Assistant Core's process when the
# target is "homeassistant", and runs the agent as the unprivileged user profiler-agent with only
# the capabilities its actions need.
set -euo pipefail

options=/data/options.json
conf=/data/profiler-agent.conf
rundir=/run/profiler-agent
pidfile=$rundir/homeassistant.pid
caps=+sys_ptrace,+perfmon,+dac_read_search,+chown,+fowner,+checkpoint_restore

log() { echo "[profiler-agent add-on] $*" >&2; }
option() { jq -r --arg k "$1" '.[$k] // empty | tostring' "$options"; }
# A config value on one line: the agent reads `key = value` lines.
oneline() { tr -d '\r\n'; }

# The pid of Home Assistant Core: `python3 -m homeassistant ...` in any container (host_pid).
find_core() {
    local d
    for d in /proc/[0-9]*; do
        if tr '\0' ' ' < "$d/cmdline" 2>/dev/null | grep -qE '(^| )-m homeassistant( |$)'; then
            echo "${d#/proc/}"
            return 0
        fi
    done
    return 1
}

# Core restarts with a new pid; the agent reads the pidfile again at every command.
follow_core() {
    local pid
    while :; do
        if pid=$(find_core); then
            [ "$(cat "$pidfile" 2>/dev/null)" = "$pid" ] || {
                echo "$pid" > "$pidfile.new" && mv "$pidfile.new" "$pidfile"
                log "Home Assistant Core is process $pid"
            }
        fi
        sleep 10
    done
}

mqtt=$(curl -fsS -H "Authorization: Bearer ${SUPERVISOR_TOKEN}" http://supervisor/services/mqtt)
service() { jq -r --arg k "$1" '.data[$k] // empty | tostring' <<< "$mqtt" | oneline; }
[ -n "$(service host)" ] || { log "the Supervisor names no MQTT broker"; exit 1; }

install -d -o profiler-agent -g profiler-agent -m 0750 /data/state /share/profiler-agent
install -d -o root -g profiler-agent -m 0750 "$rundir"

target=$(option target | oneline)
if [ "$target" = homeassistant ]; then
    pid=$(find_core) || { log "Home Assistant Core (python3 -m homeassistant) is not running"; exit 1; }
    echo "$pid" > "$pidfile"
    chmod 0640 "$pidfile" && chgrp profiler-agent "$pidfile"
    log "Home Assistant Core is process $pid"
    follow_core &
    target=pidfile:$pidfile
fi

umask 0027
password_file=$rundir/mqtt-password
service password > "$password_file"
chgrp profiler-agent "$password_file"
{
    echo "broker_host = $(service host)"
    echo "broker_port = $(service port)"
    echo "username = $(service username)"
    echo "password_file = $password_file"
    if [ "$(service ssl)" = true ]; then
        echo "tls_ca_file = /etc/ssl/certs/ca-certificates.crt"
    fi
    echo "node_id = $(option node_id | oneline)"
    echo "target = $target"
    echo "allowed_targets = $(option allowed_targets | oneline)"
    echo "discovery = $([ "$(option discovery)" = true ] && echo on || echo off)"
    echo "output_dir = /share/profiler-agent"
    echo "database = /data/state/profiler-agent.db"
    echo "log_level = $(option log_level | oneline)"
} > "$conf"
chgrp profiler-agent "$conf"

log "broker $(service host):$(service port), target $target, results in /share/profiler-agent"
exec setpriv --reuid=profiler-agent --regid=profiler-agent --init-groups --no-new-privs \
    --inh-caps=-all,"$caps" --ambient-caps=-all,"$caps" --bounding-set=-all,"$caps" \
    /usr/bin/profiler-agent --config "$conf"
