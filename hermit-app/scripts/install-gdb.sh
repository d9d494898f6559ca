#!/usr/bin/env bash
# Install gdb from Debian if it is missing (qemu-debug.sh attaches it to QEMU's gdb stub).
set -euo pipefail

command -v gdb >/dev/null 2>&1 && exit 0

echo "==> installing gdb from Debian (~15 s)"
start=$SECONDS
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends gdb
command -v gdb >/dev/null 2>&1 || { echo "error: gdb still missing" >&2; exit 1; }
echo "    gdb: $((SECONDS - start)) s, $(gdb --version | head -n 1)"
