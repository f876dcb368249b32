#!/usr/bin/env bash
# Start or stop a dockerd isolated from any other one (own data root, exec root, pid file, API
# socket; no bridge, no iptables).  start prints the DOCKER_HOST to use.
#   dockerd.sh start DIR     dockerd.sh stop DIR
# DOCKPLUG_ENGINE=28 runs dockerd 28.5 unpacked from Debian's archive instead of bookworm's 20.10
# (fetched once into /var/cache/dockplug/engines/; the recipe is dockplug.testing.engines').
set -euo pipefail
cmd=$1 dir=$2
case $cmd in
start)
    mkdir -p "$dir"
    bin=dockerd path=$PATH extra=()
    if [[ ${DOCKPLUG_ENGINE:-20.10} != 20.10 ]]; then
        py=${DOCKPLUG_PYTHON:-$(dirname "$0")/../.venv/bin/python}
        mapfile -t engine < <("$py" -m dockplug.testing.engines "$DOCKPLUG_ENGINE")
        bin=${engine[0]} path=${engine[1]}:$PATH
        read -r -a extra <<<"${engine[2]}"
    fi
    PATH=$path "$bin" --data-root "$dir/data" --exec-root "$dir/exec" --pidfile "$dir/dockerd.pid" \
        -H "unix://$dir/docker.sock" --bridge=none --iptables=false "${extra[@]}" \
        >"$dir/dockerd.log" 2>&1 &
    for _ in $(seq 1 150); do
        if DOCKER_HOST="unix://$dir/docker.sock" docker version >/dev/null 2>&1; then
            echo "unix://$dir/docker.sock"
            exit 0
        fi
        sleep 0.2
    done
    echo "dockerd did not answer within 30s; its log:" >&2
    tail -n 30 "$dir/dockerd.log" >&2
    exit 1
    ;;
stop)
    if [[ -f $dir/dockerd.pid ]]; then
        pid=$(cat "$dir/dockerd.pid")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    fi
    # unmount what a dockerd may leave behind, deepest first, then remove the tree
    awk -v d="$dir" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r |
        xargs -r -n1 umount -l 2>/dev/null || true
    rm -rf "$dir"
    ;;
esac
