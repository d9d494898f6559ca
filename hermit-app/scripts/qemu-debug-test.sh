#!/usr/bin/env bash
# Self-test of qemu-debug.sh on the spin app, which loops forever in `spin_on_purpose` on cores
# 0 and 1: qemu-debug.sh must report a hang (exit status 2), and for both vCPUs the monitor's
# symbolized RIP must be in spin_on_purpose (or in an interrupt handler that preempted it) and
# gdb's backtrace must name spin_on_purpose.
#   qemu-debug-test.sh LOADER SPIN_IMAGE OUT_DIR
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

loader="$1" image="$2" out="$3"
rm -rf "$out"
mkdir -p "$out"
start=$SECONDS
status=0
QEMU_DEBUG_OUT="$out" "$here/qemu-debug.sh" "$loader" "$image" 2 qemu64,+x2apic,+fsgsbase 512M 6 \
    >"$out/run.log" 2>&1 || status=$?

failures=0
fail() { echo "    - $*"; failures=$((failures + 1)); }
[ "$status" = 2 ] || fail "qemu-debug.sh exited $status, not 2 (hang reported)"
grep -q '^spin: spinning on purpose' "$out/serial.log" 2>/dev/null || fail "the spin app did not start"
# vCPU N's gdb backtrace (gdb's thread N+1), from its "Thread 1.N+1" header to the next, has a
# frame matching PATTERN.   in_backtrace CPU PATTERN
in_backtrace() {
    awk -v t="Thread 1.$(($1 + 1)) " -v p="$2" '/^Thread [0-9]+ \(Thread 1\./ { inside = index($0, t) > 0 }
        inside && $0 ~ p { found = 1 } END { exit !found }' "$out/backtrace.txt" 2>/dev/null
}
for cpu in 0 1; do
    # The monitor samples RIP once: a spinning core still takes its timer tick, so the sample may
    # land in an interrupt handler that preempted the loop; then gdb's backtrace must show that
    # handler on top of spin_on_purpose.
    grep -qE "^vCPU $cpu: RIP [0-9a-f]+ .*spin_on_purpose" "$out/run.log" ||
        { grep -qE "^vCPU $cpu: RIP " "$out/run.log" && in_backtrace "$cpu" '_handler'; } ||
        fail "monitor: vCPU $cpu's RIP is neither in spin_on_purpose nor in an interrupt handler above it"
    in_backtrace "$cpu" spin_on_purpose || fail "gdb: vCPU $cpu's backtrace does not name spin_on_purpose"
done
if [ "$failures" = 0 ]; then
    echo "PASS qemu-debug-test: hang reported after 6 s, both vCPUs' RIP and backtrace name spin_on_purpose ($((SECONDS - start)) s)"
else
    echo "FAIL qemu-debug-test (output: $out/run.log)"
    exit 1
fi
