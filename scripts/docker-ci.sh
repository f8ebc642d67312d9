#!/usr/bin/env bash
# A Docker engine for the container tests on a machine that has none running (CI, this dev box):
#
#   scripts/docker-ci.sh start   install docker.io + debootstrap, start dockerd (overlay2), and make the
#                                local base image paritybundle-test-base:bookworm (Debian minbase with
#                                python3 and venv; image registries are unreachable here)
#   scripts/docker-ci.sh stop    stop the dockerd this script started and remove what it added
#                                (the docker0 bridge, its iptables rules)
#
# When an engine already answers, start changes nothing and stop leaves it alone.
set -euo pipefail

STATE=/tmp/paritybundle-docker-ci
BASE_IMAGE=${PARITYBUNDLE_TEST_BASE_IMAGE:-paritybundle-test-base:bookworm}

log() { echo "docker-ci: $*" >&2; }

mirror() {
    # The Debian mirror apt already uses (deb822 sources first, then the classic list).
    local uri
    uri=$(grep -hm1 '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | head -1 || true)
    if [ -z "$uri" ]; then
        uri=$(grep -hm1 '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | head -1 || true)
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

start() {
    mkdir -p "$STATE"
    if docker info >/dev/null 2>&1; then
        log "a Docker engine already answers; using it"
    else
        if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
            log "installing docker.io and debootstrap"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io debootstrap >"$STATE/apt.log" 2>&1 \
                || { apt-get update -q >>"$STATE/apt.log" 2>&1 && \
                     DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io debootstrap >>"$STATE/apt.log" 2>&1; }
        fi
        # The firewall as it is before dockerd adds its chains, to put back on stop.
        iptables-save >"$STATE/iptables.before" 2>/dev/null || true
        ip6tables-save >"$STATE/ip6tables.before" 2>/dev/null || true
        log "starting dockerd (overlay2)"
        dockerd --storage-driver overlay2 --pidfile "$STATE/dockerd.pid" >"$STATE/dockerd.log" 2>&1 &
        for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
        docker info >/dev/null 2>&1 || { log "dockerd did not come up: $(tail -3 "$STATE/dockerd.log")"; exit 1; }
        touch "$STATE/started-by-us"
    fi
    if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >"$STATE/apt.log" 2>&1
        local rootfs
        rootfs=$(mktemp -d /tmp/paritybundle-rootfs.XXXXXX)
        log "building $BASE_IMAGE with debootstrap from $(mirror)"
        debootstrap --variant=minbase --include=python3,python3-venv bookworm "$rootfs" "$(mirror)" >"$STATE/debootstrap.log" 2>&1
        tar -C "$rootfs" -c . | docker import - "$BASE_IMAGE" >/dev/null
        rm -rf "$rootfs"
    fi
    log "ready: $(docker version --format 'engine {{.Server.Version}}'), base image $BASE_IMAGE"
}

restore_firewall() {
    # Put back the tables saved before dockerd started; where there were none, drop what dockerd made.
    local tool=$1 saved="$STATE/$1.before"
    command -v "$tool" >/dev/null || return 0
    if [ -s "$saved" ] && grep -q '^\*' "$saved"; then
        "$tool-restore" <"$saved" 2>/dev/null || true
    fi
    for table in filter nat; do
        if ! { [ -s "$saved" ] && grep -q "^\*$table" "$saved"; }; then
            "$tool" -t "$table" -F 2>/dev/null || true
            "$tool" -t "$table" -X 2>/dev/null || true
        fi
    done
    if ! { [ -s "$saved" ] && grep -q '^\*filter' "$saved"; }; then "$tool" -P FORWARD ACCEPT 2>/dev/null || true; fi
}

stop() {
    if [ ! -f "$STATE/started-by-us" ]; then
        log "this script started no dockerd; nothing to stop"
        return 0
    fi
    if [ -f "$STATE/dockerd.pid" ]; then
        local pid
        pid=$(cat "$STATE/dockerd.pid")
        log "stopping dockerd (pid $pid)"
        docker ps -q | xargs -r docker rm -f >/dev/null 2>&1 || true
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    ip link delete docker0 2>/dev/null || true
    restore_firewall iptables
    restore_firewall ip6tables
    rm -rf "$STATE"
    log "stopped; docker0 and dockerd's iptables rules removed"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
