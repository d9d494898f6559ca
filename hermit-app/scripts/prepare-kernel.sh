#!/usr/bin/env bash
# Make SRC_DIR a copy of the pristine kernel source with the patch series of each PATCH_DIR
# applied, directory after directory, each in the order of its `series` file.
#   prepare-kernel.sh PRISTINE_DIR SRC_DIR [PATCH_DIR...]
# A patch file missing from a `series`, or a name in it without its file, stops the build
# (kernel-series.sh list).
# The copy is built fresh in a scratch directory, then only files whose content differs are
# written into SRC_DIR, so cargo rebuilds only what a patch change really touched (a file a
# removed patch restores also gets a new mtime, so cargo sees it too).
set -euo pipefail

pristine="$1" src="$2"
shift 2
patches="$("$(dirname "$0")/kernel-series.sh" list "$@")"

fresh="$src.fresh"
rm -rf "$fresh"
mkdir -p "$(dirname "$fresh")"
cp -r "$pristine" "$fresh"
for p in $patches; do
    echo "    applying $(basename "$(dirname "$p")")/$(basename "$p")"
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
