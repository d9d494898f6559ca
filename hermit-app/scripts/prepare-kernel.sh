#!/usr/bin/env bash
# Make SRC_DIR a copy of the pristine kernel source with PATCHES applied in order.
#   prepare-kernel.sh PRISTINE_DIR SRC_DIR [PATCH...]
# The copy is built fresh in a scratch directory, then only files whose content differs are
# written into SRC_DIR, so cargo rebuilds only what a patch change really touched (a file a
# removed patch restores also gets a new mtime, so cargo sees it too).
set -euo pipefail

pristine="$1" src="$2"
shift 2

fresh="$src.fresh"
rm -rf "$fresh"
mkdir -p "$(dirname "$fresh")"
cp -r "$pristine" "$fresh"
for p in "$@"; do
    echo "    applying $(basename "$p")"
    patch -s -p1 -d "$fresh" --no-backup-if-mismatch <"$p" \
        || { echo "error: $(basename "$p") does not apply on top of the patches before it" >&2; exit 1; }
done
# The copy lives inside the project's tree: give it a workspace of its own.
grep -q '^\[workspace\]' "$fresh/Cargo.toml" || printf '\n[workspace]\n' >>"$fresh/Cargo.toml"

mkdir -p "$src"
changed=0
(cd "$fresh" && find . -type f) | while read -r f; do
    if ! cmp -s "$fresh/$f" "$src/$f"; then
        mkdir -p "$(dirname "$src/$f")"
        cp "$fresh/$f" "$src/$f"
    fi
done
# Files that no longer exist in the fresh copy (e.g. added by a removed patch).
(cd "$src" && find . -type f) | while read -r f; do
    [ -e "$fresh/$f" ] || rm -f "$src/$f"
done
rm -rf "$fresh"
mkdir -p "$(dirname "$fresh")"
