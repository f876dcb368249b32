#!/usr/bin/env bash
# Installs what dockplug needs on a Debian machine (idempotent; quick when already done):
#   setup.sh serve   Docker Engine + the dockplug package
#   setup.sh test    that, plus the real components the tests use and the dev tools
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-serve}

packages=(docker.io e2fsprogs util-linux python3-venv iptables)
if [[ $mode == test ]]; then
    packages+=(
        busybox-static
        ca-certificates
        debian-archive-keyring
        debootstrap
        docker-registry
        etcd-server
        fuse3
        iperf3
        iproute2
        iputils-ping
        openssh-server
        openssl
        procps
        prometheus
        rclone
        rsyslog
        rsyslog-gnutls
        sshfs
        systemd
        systemd-journal-remote
    )
fi
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "==> apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [[ ! -x .venv/bin/python ]]; then
    echo "==> creating .venv"
    python3 -m venv .venv
fi
extra=""
[[ $mode == test ]] && extra="[dev]"
echo "==> pip install -e .$extra"
.venv/bin/pip install -q --disable-pip-version-check -e ".$extra" \
    2> >(grep -v "^WARNING: Location" >&2)
