#!/usr/bin/env bash
# Installs the Debian packages wasmvmm's build and tests use, if missing:
#   gcc, make, binutils   build the freestanding test guest
#   acpica-tools          iasl -d checks our ACPI tables
#   qemu-system-x86       the peer VMM for side-by-side figures
#   iproute2              network namespaces for tap and cross-host tests
# Needs root (apt-get); prints what it does. Safe to run again.
set -euo pipefail
want=(gcc make binutils acpica-tools qemu-system-x86 iproute2)
missing=()
for p in "${want[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
	exit 0
fi
echo "install-deps: installing ${missing[*]}" >&2
if [ "$(id -u)" -ne 0 ]; then
	echo "install-deps: not root; run: sudo apt-get install -y ${missing[*]}" >&2
	exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
