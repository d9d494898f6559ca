#!/usr/bin/env bash
# Checks guest-report.sh on made-up logs: blocks gathered in order under the log's heading, and
# a clear failure (status 1, no report written) for a log with no block, an unclosed block, a
# block opened inside another, a stray end line, or a missing log.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
failures=0
fail() { echo "    FAIL: $*"; failures=$((failures + 1)); }

printf 'boot\r\n<<<report First\r\n| a |\r\n|---|\r\n| 1 |\r\n>>>report\r\nnoise\r\n<<<report Second\r\nfree text\r\n>>>report\r\n' \
    >"$dir/demo-patched-4.log"
printf '<<<report Third\n| b |\n>>>report\n' >"$dir/other.log"
if "$here/guest-report.sh" "$dir/ok.md" "$dir/demo-patched-4.log" "$dir/other.log" >/dev/null; then
    report="$(cat "$dir/ok.md")"
    expected=$'## demo, patched kernel, 4 vCPUs (demo-patched-4.log)\n\n### First\n\n| a |\n|---|\n| 1 |\n\n### Second\n\nfree text\n\n## other.log\n\n### Third\n\n| b |'
    [[ "$report" == *"$expected"* ]] || fail "report does not hold the blocks in order under their headings: $report"
    [[ "$report" == *"noise"* || "$report" == *"boot"$'\n'* ]] && fail "text outside blocks was copied"
    [[ "$report" == *$'\r'* ]] && fail "carriage returns were copied"
    for field in "- date: " "- host CPU: " "- QEMU: " "TCG"; do
        [[ "$report" == *"$field"* ]] || fail "header lacks '$field'"
    done
else
    fail "good logs were refused"
fi

printf 'nothing here\n' >"$dir/none.log"
printf '<<<report Open\n| x |\n' >"$dir/open.log"
printf '<<<report A\n<<<report B\n>>>report\n' >"$dir/nested.log"
printf 'x\n>>>report\n' >"$dir/stray.log"
for bad in none open nested stray missing; do
    status=0
    err="$("$here/guest-report.sh" "$dir/bad.md" "$dir/demo-patched-4.log" "$dir/$bad.log" 2>&1 >/dev/null)" || status=$?
    [ "$status" = 1 ] || fail "$bad.log: status $status, expected 1"
    [ -e "$dir/bad.md" ] && fail "$bad.log: a report was written anyway" && rm -f "$dir/bad.md"
    [[ "$err" == *"$bad.log"* ]] || fail "$bad.log: the error does not name the log: $err"
done

if [ "$failures" -gt 0 ]; then
    echo "test-guest-report: $failures failure(s)" >&2
    exit 1
fi
echo "test-guest-report: ok (1 good report, 5 bad inputs refused)"
