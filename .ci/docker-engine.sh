#!/usr/bin/env bash
# CI / sandbox bootstrap, not something users run on their laptops: make sure a Docker engine is
# answering on this machine. Installs Debian's docker.io (and debootstrap, for the offline base
# image) when dockerd is missing, starts dockerd in the background when it is not running, and
# waits until `docker info` answers. Idempotent: a second run with the engine up does nothing.
set -euo pipefail

log() { printf '[docker-engine] %s\n' "$*" >&2; }

DOCKERD_LOG="${DOCKERD_LOG:-/var/log/dockerd-ci.log}"
WAIT_S="${DOCKER_ENGINE_WAIT_S:-60}"

if docker info >/dev/null 2>&1; then
    log "engine already answering: $(docker info --format '{{.ServerVersion}}')"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    log "dockerd is not running and this script is not root; start the engine yourself"
    exit 1
fi

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]} from the configured Debian mirror"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # The docker.io package ships its own CLI in /usr/bin; an existing newer CLI earlier in PATH keeps working
    # (the API version is negotiated down to the engine's).
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! pgrep -x dockerd >/dev/null 2>&1; then
    log "starting dockerd (log: ${DOCKERD_LOG})"
    # The package's containerd is started by dockerd itself when no system containerd runs.
    nohup dockerd >"${DOCKERD_LOG}" 2>&1 &
fi

for _ in $(seq 1 "${WAIT_S}"); do
    if docker info >/dev/null 2>&1; then
        log "engine answering: $(docker info --format '{{.ServerVersion}} ({{.Driver}}, {{.CgroupDriver}})')"
        exit 0
    fi
    sleep 1
done
log "dockerd did not answer within ${WAIT_S}s; last log lines:"
tail -n 30 "${DOCKERD_LOG}" >&2 || true
exit 1
