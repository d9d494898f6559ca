#!/usr/bin/env bash
# Developer helper: write a kernel patch from two kernel trees (only our lines, no build output).
#   make-kernel-patch.sh OLD_DIR NEW_DIR PATCH_FILE "description line"
# OLD_DIR: the pristine source with the earlier patches applied; NEW_DIR: the same with edits.
set -euo pipefail
old="$1" new="$2" out="$3" what="$4"
tab=$'\t'
{
    echo "$what"
    echo
    (cd "$(dirname "$old")" && diff -ruN --exclude=target "$(basename "$old")" "$(basename "$new")" \
        | sed -e "s|^--- $(basename "$old")/|--- a/|" -e "s|^+++ $(basename "$new")/|+++ b/|" \
              | perl -pe 's/^((?:---|\+\+\+) [ab]\/\S+)\t.*/$1/' | grep -v '^diff -ruN') || true
} >"$out"
echo "wrote $out ($(grep -c '^[+-][^+-]' "$out") changed lines)"
