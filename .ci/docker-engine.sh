#!/usr/bin/env bash
# CI / sandbox bootstrap, not something users run on their laptops: make sure a Docker engine is
# answering on this machine. Installs Debian's docker.io (and debootstrap, for the offline base
# image; ipset and iptables, for tests/parity) when they are missing, starts dockerd in the background when it is not running, and
# waits until `docker info` answers. Idempotent: a second run with the engine up does nothing.
set -euo pipefail

log() { printf '[docker-engine] %s\n' "$*" >&2; }

DOCKERD_LOG="${DOCKERD_LOG:-/var/log/dockerd-ci.log}"
WAIT_S="${DOCKER_ENGINE_WAIT_S:-60}"

if [ "$(id -u)" -ne 0 ]; then
    if docker info >/dev/null 2>&1; then
        log "engine already answering: $(docker info --format '{{.ServerVersion}}')"
        exit 0
    fi
    log "dockerd is not running and this script is not root; start the engine yourself"
    exit 1
fi

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
# tests/parity runs the NetworkPolicy engine (kube-router) in network namespaces: iptables with ipset.
command -v ipset >/dev/null 2>&1 || missing+=(ipset)
command -v iptables >/dev/null 2>&1 || missing+=(iptables)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]} from the configured Debian mirror"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # The docker.io package ships its own CLI in /usr/bin; an existing newer CLI earlier in PATH keeps working
    # (the API version is negotiated down to the engine's).
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Sandbox adaptation (CI and development VMs here; never part of what users run): when this machine's capability
# bounding set lacks capabilities (CAP_SYS_RESOURCE here), privileged containers such as kind nodes fail with
# "unable to apply caps". .ci/runc-caps drops the absent ones from each container's spec before runc runs it;
# it becomes dockerd's default runtime. A full bounding set needs none of this.
RUNC_CAPS=/usr/local/libexec/eks-ci/runc-caps
DAEMON_JSON=/etc/docker/daemon.json
restart=0
if [ "$(awk '/^CapBnd:/ {print $2}' /proc/self/status)" != "$(printf '%016x' $(( (1 << ($(cat /proc/sys/kernel/cap_last_cap) + 1)) - 1 )))" ]; then
    src_sum=$(cat .ci/runc-caps/go.mod .ci/runc-caps/main.go | sha256sum | cut -d' ' -f1)
    if [ ! -x "${RUNC_CAPS}" ] || [ "$(cat "${RUNC_CAPS}.sha256" 2>/dev/null)" != "${src_sum}" ]; then
        log "bounding set lacks capabilities: building .ci/runc-caps"
        mkdir -p "$(dirname "${RUNC_CAPS}")"
        go=$(command -v go || echo /usr/local/go/bin/go)
        (cd .ci/runc-caps && CGO_ENABLED=0 "${go}" build -trimpath -o "${RUNC_CAPS}" .)
        echo "${src_sum}" >"${RUNC_CAPS}.sha256"
    fi
    wanted=$(printf '{\n  "runtimes": {"runc-caps": {"path": "%s"}},\n  "default-runtime": "runc-caps"\n}\n' "${RUNC_CAPS}")
    if [ "$(cat "${DAEMON_JSON}" 2>/dev/null)" != "${wanted}" ]; then
        log "registering runc-caps as dockerd's default runtime (${DAEMON_JSON})"
        mkdir -p "$(dirname "${DAEMON_JSON}")"
        printf '%s\n' "${wanted}" >"${DAEMON_JSON}"
        restart=1
    fi
fi
if [ "${restart}" = 1 ] && pgrep -x dockerd >/dev/null 2>&1; then
    log "restarting dockerd for the new runtime"
    pkill -x dockerd
    for _ in $(seq 1 30); do pgrep -x dockerd >/dev/null 2>&1 || break; sleep 1; done
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
