#!/usr/bin/env bash
# What the container tests (tests/containers/) need, made before pytest starts (make test-setup):
#   1. a containers.conf for podman on this kind of machine (runc, cgroupfs, netavark, ulimits that
#      a container may set here) — for the tests only: users keep their own configuration;
#   2. a local base image, since no registry can be reached: a minimal Debian made with mmdebstrap
#      (with python3), imported as localhost/mloc-test-base:bookworm; the tar is cached;
#   3. the coordinator and agent images built FROM it (ARG BASE), as the users' files build them,
#      and a task image with a marker file for the image: tests.
# Prints the CONTAINERS_CONF path on its last line. Idempotent: podman's layer cache makes a rebuild
# of unchanged sources take seconds.
set -euo pipefail
cd "$(dirname "$0")/../.."
CACHE="${MLOC_CACHE_DIR:-$HOME/.cache/mloc}/containers"
mkdir -p "$CACHE"
export CONTAINERS_CONF="$CACHE/containers.conf"
cat > "$CONTAINERS_CONF" <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
[network]
network_backend = "netavark"
CONF
BASE=localhost/mloc-test-base:bookworm
start=$(date +%s)
step() { echo "containers: $1 ($(( $(date +%s) - start )) s)" >&2; }

if ! podman image exists "$BASE"; then
  if [ ! -f "$CACHE/base-rootfs.tar" ] || [ ! -s "$CACHE/base-rootfs.tar" ]; then
    rm -rf "$CACHE/base-rootfs.tar"
    step "1/4 making the base rootfs with mmdebstrap"
    # (mmdebstrap picks the output's format from its name: the partial file must end in .tar too)
    rm -rf "$CACHE/base-rootfs.partial.tar"
    mmdebstrap --quiet --variant=minbase --format=tar --include=python3,python3-venv,ca-certificates bookworm \
      "$CACHE/base-rootfs.partial.tar" >&2
    mv "$CACHE/base-rootfs.partial.tar" "$CACHE/base-rootfs.tar"
  fi
  podman import --quiet "$CACHE/base-rootfs.tar" "$BASE" >/dev/null
fi
step "1/4 base image $BASE"

# pip inside a build is configured like this machine's pip: each of its settings (`pip config list`)
# that the Containerfiles take as a build argument (PIP_CERT, PIP_FIND_LINKS) is passed on, and the
# host paths it names (a CA bundle, a folder of wheels) are mounted at the same paths, read-only.
# A folder holding the torch 2.13.0 wheel means: torch from there (the CPU build), not its index.
build_args=()
declare -A mounted=()
while IFS= read -r line; do
  key=${line%%=*}; value=${line#*=}; value=${value#\'}; value=${value%\'}
  name="PIP_$(printf '%s' "${key##*.}" | tr 'a-z-' 'A-Z_')"
  case "$name" in PIP_CERT|PIP_FIND_LINKS) ;; *) continue ;; esac
  for path in $value; do
    [ -e "$path" ] && [ -z "${mounted[$path]:-}" ] || continue
    mounted[$path]=1
    build_args+=(-v "$path:$path:ro")
    if [ -d "$path" ] && compgen -G "$path/torch-2.13.0*.whl" >/dev/null; then
      build_args+=(--build-arg TORCH_INDEX=)
    fi
  done
  build_args+=(--build-arg "$name=$value")
done < <(python3 -m pip config list 2>/dev/null)  # (its PIP_* environment variables included)

build() {  # tag, containerfile (podman warns about each build argument left unset: not news here)
  podman build --quiet --format docker --build-arg BASE="$BASE" "${build_args[@]}" -f "$2" -t "$1" . \
    2> >(grep -v 'build argument. Try adding' >&2) >/dev/null
}
build localhost/mloc-coordinator:test deploy/containers/coordinator.Containerfile
step "2/4 coordinator image"
build localhost/mloc-agent:test deploy/containers/agent.Containerfile
step "3/4 agent image"
podman build --quiet --build-arg BASE="$BASE" -t localhost/mloc-test-task:1 -f - . >/dev/null <<'TASK'
ARG BASE
FROM ${BASE}
RUN echo "built for the MLOC image: tests" > /etc/mloc-test-marker
TASK
step "4/4 task image"
echo "$CONTAINERS_CONF"
