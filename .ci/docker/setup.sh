#!/usr/bin/env bash
# Start dockerd and build the local test image cpt-launch-test:latest, without any registry.
#
# Usage: .ci/docker/setup.sh [up|down|status]     (default: up)
#
#   up      start dockerd unless `docker info` already answers, then make sure the image exists:
#           a Debian bookworm minbase rootfs with python3 (3.11) made by debootstrap from the Debian
#           archive, cached as a tarball under $CPT_DOCKER_CACHE (default /tmp/cpt-docker-cache), then
#           `docker import`ed. Idempotent: a second run with the image present takes about a second.
#   down    stop the dockerd this script started (by its pid file); a dockerd started by someone else
#           is left alone.
#   status  exit 0 when dockerd answers and the image exists.
#
# Needs (Debian 12): docker.io debootstrap. No registry is reachable from CI, so nothing is pulled.
# The image has no network restrictions: this dockerd refuses network="none", use the default bridge.
set -euo pipefail

IMAGE=${CPT_DOCKER_IMAGE:-cpt-launch-test:latest}
STATE=${CPT_DOCKER_DIR:-/tmp/cpt-docker}
CACHE=${CPT_DOCKER_CACHE:-/tmp/cpt-docker-cache}
SUITE=bookworm
# python3 is what the stages need; yaml/jinja2/numpy let the launcher's own light modules import inside.
PACKAGES=python3,python3-yaml,python3-jinja2,python3-numpy,ca-certificates
PIDFILE=$STATE/dockerd.pid

log() { printf '[docker/setup.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

die() {
  log "ERROR: $*"
  if [[ -f $STATE/dockerd.log ]]; then
    printf '\n===== %s (last 40 lines) =====\n' "$STATE/dockerd.log" >&2
    tail -n 40 "$STATE/dockerd.log" >&2 || true
  fi
  exit 1
}

docker_ok() { docker info >/dev/null 2>&1; }

start_dockerd() {
  if docker_ok; then
    log "dockerd already answers"
    return 0
  fi
  command -v dockerd >/dev/null || die "dockerd not found: apt-get install -y --no-install-recommends docker.io"
  mkdir -p "$STATE"
  local t0=$SECONDS
  # setsid: dockerd must outlive this script and not receive the caller's terminal signals.
  # 9>&-: dockerd must not inherit (and hold forever) the lock taken below.
  setsid dockerd --pidfile "$PIDFILE" </dev/null >>"$STATE/dockerd.log" 2>&1 9>&- &
  local deadline=$((SECONDS + 60))
  until docker_ok; do
    ((SECONDS < deadline)) || die "dockerd did not answer within 60 s"
    sleep 0.3
  done
  log "dockerd ready in $((SECONDS - t0))s"
}

cache_key() {
  # The tarball is reused only for the same suite, package list and architecture.
  printf '%s %s %s' "$SUITE" "$PACKAGES" "$(dpkg --print-architecture)" | sha256sum | cut -c1-16
}

build_rootfs_tarball() {
  local tarball=$1 rootfs
  command -v debootstrap >/dev/null || die "debootstrap not found: apt-get install -y debootstrap"
  mkdir -p "$CACHE"
  rootfs=$(mktemp -d "$CACHE/rootfs.XXXXXX")
  log "debootstrap $SUITE (minbase + $PACKAGES) into $rootfs"
  local t0=$SECONDS
  # The mirror is debootstrap's default for Debian, the same archive apt uses here.
  if ! debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" >"$CACHE/debootstrap.log" 2>&1; then
    tail -n 40 "$CACHE/debootstrap.log" >&2
    rm -rf "$rootfs"
    die "debootstrap failed (log: $CACHE/debootstrap.log)"
  fi
  # Smaller image: apt lists and caches are not needed inside.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" --numeric-owner -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
  rm -rf "$rootfs"
  log "rootfs tarball $(du -h "$tarball" | cut -f1) in $((SECONDS - t0))s: $tarball"
}

ensure_image() {
  local key tarball
  key=$(cache_key)
  if [[ $(docker image inspect -f '{{index .Config.Labels "cpt.rootfs"}}' "$IMAGE" 2>/dev/null) == "$key" ]]; then
    log "image $IMAGE present (rootfs $key)"
    return 0
  fi
  tarball=$CACHE/rootfs-$SUITE-$key.tar
  [[ -s $tarball ]] || build_rootfs_tarball "$tarball"
  log "docker import $tarball -> $IMAGE"
  docker import \
    --change "LABEL cpt.rootfs=$key" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    "$tarball" "$IMAGE" >/dev/null || die "docker import failed"
  docker run --rm "$IMAGE" python3 -c 'import sys; assert sys.version_info >= (3, 11), sys.version' ||
    die "$IMAGE does not run python3 >= 3.11"
  log "image $IMAGE ready"
}

cmd_down() {
  local pid i
  [[ -s $PIDFILE ]] || return 0
  pid=$(<"$PIDFILE")
  # Only our dockerd: a stale pid may belong to another program by now.
  if [[ $pid =~ ^[0-9]+$ ]] && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == dockerd ]]; then
    kill -TERM "$pid"
    for ((i = 0; i < 100; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    log "stopped dockerd (pid $pid)"
  fi
  rm -f "$PIDFILE"
}

cmd_status() {
  docker_ok || {
    echo "dockerd: not answering"
    return 1
  }
  echo "dockerd: answering"
  docker image inspect "$IMAGE" >/dev/null 2>&1 || {
    echo "image $IMAGE: missing"
    return 1
  }
  echo "image $IMAGE: present"
}

lock() {
  # Concurrent callers (several pytest sessions) build the image once, one after the other.
  mkdir -p "$STATE"
  exec 9>"$STATE/setup.lock"
  flock -w 900 9 || die "could not lock $STATE/setup.lock within 900 s"
}

case ${1:-up} in
up)
  lock
  t0=$SECONDS
  start_dockerd
  ensure_image
  log "docker ready in $((SECONDS - t0))s (image $IMAGE)"
  ;;
down) cmd_down ;;
status) cmd_status ;;
*)
  echo "usage: $0 [up|down|status]" >&2
  exit 2
  ;;
esac
