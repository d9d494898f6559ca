#!/usr/bin/env bash
# Gather the report blocks of guest logs into one Markdown file.
#   guest-report.sh OUT.md LOG...
# Every block a guest benchmark prints,
#     <<<report Title
#     ...lines copied verbatim...
#     >>>report
# is copied, in order, under a heading naming its log (app, kernel and vCPUs when the file is
# named <app>-<kernel>-<vcpus>.log, as results/guest-logs/ files are), each block under a
# "### Title" line. The header gives the date, the host's CPU model, core count and QEMU version.
# Fails (status 1, naming the log and line) when a log is missing, has no block, opens a block
# inside another or leaves one unclosed; OUT.md is then not written.
set -euo pipefail

usage() { echo "usage: $0 OUT.md LOG..." >&2; exit 2; }
[ $# -ge 2 ] || usage
out="$1"
shift

tmp="$(mktemp)"
trap 'rm -f "$tmp"' EXIT

cpu_model="$(sed -n 's/^model name[[:space:]]*: *//p' /proc/cpuinfo 2>/dev/null | head -n 1)"
qemu_version="$(qemu-system-x86_64 --version 2>/dev/null | head -n 1 || true)"
{
    echo "# Guest benchmark report"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- host CPU: ${cpu_model:-unknown}, $(nproc) cores"
    echo "- QEMU: ${qemu_version:-not found}"
    echo "- times are emulated time under QEMU TCG (no KVM here): compare them only within one"
    echo "  run and one machine; counts (messages, IPIs) are exact"
} >"$tmp"

failed=0
for log in "$@"; do
    if [ ! -r "$log" ]; then
        echo "error: $log: no such readable log" >&2
        failed=1
        continue
    fi
    name="$(basename "$log" .log)"
    if [[ "$name" =~ ^(.+)-(patched|stock)-([0-9]+)$ ]]; then
        heading="${BASH_REMATCH[1]}, ${BASH_REMATCH[2]} kernel, ${BASH_REMATCH[3]} vCPUs ($(basename "$log"))"
    else
        heading="$(basename "$log")"
    fi
    # Serial output ends lines with CR LF; blocks start and end at the beginning of a line.
    if ! section="$(tr -d '\r' <"$log" | awk -v file="$log" '
        /^<<<report/ {
            if (open) { printf("error: %s:%d: block opened inside the block of line %d\n", file, NR, start) > "/dev/stderr"; bad = 1; exit 1 }
            open = 1; start = NR; blocks++
            title = $0; sub(/^<<<report[ \t]*/, "", title)
            printf "\n### %s\n\n", (title == "" ? "(untitled)" : title)
            next
        }
        /^>>>report/ {
            if (!open) { printf("error: %s:%d: >>>report without <<<report\n", file, NR) > "/dev/stderr"; bad = 1; exit 1 }
            open = 0; next
        }
        open { print }
        END {
            if (bad) exit 1
            if (open) { printf("error: %s:%d: block not closed (no >>>report)\n", file, start) > "/dev/stderr"; exit 1 }
            if (blocks == 0) { printf("error: %s: no <<<report block\n", file) > "/dev/stderr"; exit 1 }
        }')"; then
        failed=1
        continue
    fi
    printf '\n## %s\n%s\n' "$heading" "$section" >>"$tmp"
done

if [ "$failed" != 0 ]; then
    echo "error: report not written ($out)" >&2
    exit 1
fi
mkdir -p "$(dirname "$out")"
cp "$tmp" "$out"
echo "==> report: $out ($# logs)"
