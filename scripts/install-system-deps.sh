#!/usr/bin/env bash
# Debian packages the project needs: libusb for open3d-cpu, iproute2 for the optional netem/tbf backend.
set -euo pipefail
needed=()
for pkg in libusb-1.0-0 iproute2; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || needed+=("$pkg")
done
[ ${#needed[@]} -eq 0 ] && exit 0
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then SUDO="sudo"; else
        echo "missing Debian packages: ${needed[*]} (run as root or install them yourself)" >&2; exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -q "${needed[@]}" >/dev/null 2>&1 || {
    $SUDO apt-get update -q >/dev/null
    $SUDO apt-get install -y -q "${needed[@]}" >/dev/null
}
echo "installed Debian packages: ${needed[*]}"
