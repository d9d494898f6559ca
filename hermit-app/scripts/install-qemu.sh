#!/usr/bin/env bash
# Install qemu-system-x86 from Debian if qemu-system-x86_64 is missing.
# On bookworm the machine may already carry qemu-utils from bookworm-backports, which conflicts
# with bookworm's own QEMU, so QEMU comes from bookworm-backports, added for this one install
# with the mirror the machine already uses.
set -euo pipefail

command -v qemu-system-x86_64 >/dev/null 2>&1 && exit 0

echo "==> installing qemu-system-x86 from Debian (~10 s)"
start=$SECONDS
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
export DEBIAN_FRONTEND=noninteractive
if [ "$codename" = bookworm ]; then
    # The mirror URI of the machine's main Debian source (deb822 or one-line format).
    uri=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{ print $2 }' \
        | grep -v -- '-security' | head -n 1)
    if [ -z "$uri" ]; then
        uri=$(grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
            | awk '$3 == "bookworm" { print $2 }' | head -n 1)
    fi
    [ -n "$uri" ] || { echo "error: cannot find the machine's Debian mirror in its apt sources" >&2; exit 1; }
    parts=$(mktemp -d)
    trap 'rm -rf "$parts"' EXIT
    # Keep the machine's own sources and add the backports suite next to them.
    for f in /etc/apt/sources.list.d/*; do [ -e "$f" ] && cp "$f" "$parts/"; done
    printf 'deb %s bookworm-backports main\n' "$uri" >"$parts/ipiq-bookworm-backports.list"
    $sudo apt-get -o Dir::Etc::SourceParts="$parts" update -qq
    $sudo apt-get -o Dir::Etc::SourceParts="$parts" install -y -qq -t bookworm-backports \
        --no-install-recommends qemu-system-x86
else
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends qemu-system-x86
fi
command -v qemu-system-x86_64 >/dev/null 2>&1 || { echo "error: qemu-system-x86_64 still missing" >&2; exit 1; }
echo "    qemu: $((SECONDS - start)) s, $(qemu-system-x86_64 --version | head -n 1)"
