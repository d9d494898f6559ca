#!/usr/bin/env bash
# Put `make bench`'s figures in one file: the host report (results/bench-report.md, written by
# the bench binary, with its SVG plots beside it) followed by every guest report block gathered
# from the guest logs (guest-report.sh), into RESULTS/report.md; prints where it is.
#   bench-report.sh RESULTS_DIR GUEST_LOG...
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
results="$1"
shift
host="$results/bench-report.md"
[ -f "$host" ] || { echo "error: $host is missing (run the host benchmark first)" >&2; exit 1; }
guest="$results/guest-report.md"
"$here/guest-report.sh" "$guest" "$@"
out="$results/report.md"
{
    echo "# ipiq benchmark report"
    echo
    echo "Host benchmarks first (threads as cores, against peers in the same run), then every table"
    echo "the guest benchmarks printed under QEMU (counts exact; times emulated by TCG, compare"
    echo "within a table). Plots: the SVG files beside this report."
    echo
    sed -e 's/^#/##/' "$host"
    echo
    sed -e 's/^#/##/' "$guest"
} >"$out"
echo "==> report: $out ($(wc -l <"$out") lines; plots beside it)"
