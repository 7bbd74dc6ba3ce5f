#!/usr/bin/env bash
# The system programs the test suite drives (network namespaces, NAT, WAN emulation, the browser,
# systemd-analyze, loop-mounted disks, containers). `make test` runs this before pytest:
#   - as root with apt-get: installs whatever is missing (Debian package names below);
#   - otherwise: fails, naming the missing packages and the command that installs them.
# A quiet skip would let a green run hide the partition, WAN and browser suites.
set -euo pipefail

# program -> the Debian package that ships it
REQUIRED=(
  "ip:iproute2" "tc:iproute2" "iptables:iptables" "curl:curl" "pkill:procps"
  "chromium:chromium" "chromedriver:chromium-driver" "systemd-analyze:systemd"
  "mkfs.ext4:e2fsprogs" "e2fsck:e2fsprogs" "losetup:mount"
  # containers (tests/containers/): podman with runc and netavark, --init's catatonit, and
  # mmdebstrap to make the local base image (no registry can be reached)
  "podman:podman" "runc:runc" "conmon:conmon" "catatonit:catatonit" "/usr/lib/podman/netavark:netavark"
  "/usr/lib/podman/aardvark-dns:aardvark-dns" "mmdebstrap:mmdebstrap"
)

missing() {
  local entry pkgs=()
  for entry in "${REQUIRED[@]}"; do
    command -v "${entry%%:*}" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "${entry%%:*}" >/dev/null 2>&1 \
      || pkgs+=("${entry#*:}")
  done
  [ ${#pkgs[@]} -eq 0 ] || printf '%s\n' "${pkgs[@]}" | sort -u | tr '\n' ' '
}

need=$(missing)
if [ -z "$need" ]; then
  echo "system packages: all present"
  exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "system packages: installing $need"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086  # one word per package
  apt-get install -y -qq --no-install-recommends $need >/dev/null
  still=$(missing)
  [ -z "$still" ] || { echo "system packages: still missing after apt-get: $still" >&2; exit 1; }
  echo "system packages: installed"
  exit 0
fi
echo "make test needs these system packages, which are missing: $need" >&2
echo "install them with: sudo apt-get install $need   (or run make test as root)" >&2
exit 1
