#!/usr/bin/env bash
# The lock-order fault injection (preempt-inject.sh) as a regression test: boot ipiq-tests'
# sched_locks stress with a timer interrupt armed for any moment vCPU 1 holds SCHEDULER_INPUTS
# with interrupts enabled. Passes if that moment never comes (the hook never fires) and the
# stress passes. On a kernel without the lock-order patch the hook fired within seconds and
# the guest hung for good (hermit-app/kernel/LOCK-ORDER.md).
#   lock-inject-test.sh LOADER IPIQ_TESTS_IMAGE OUT_DIR [SECONDS]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

loader="$1" image="$2" out="$3" secs="${4:-5}"
rm -rf "$out"
mkdir -p "$out"
"$here/preempt-inject.sh" "$image" 1 >"$out/hook.gdb"
start=$SECONDS
status=0
QEMU_DEBUG_GDB_HOOK="$out/hook.gdb" QEMU_DEBUG_OUT="$out" "$here/qemu-debug.sh" "$loader" "$image" 4 \
    qemu64,+x2apic,+fsgsbase 512M 120 -- -append "-- sched_locks $secs" >"$out/run.log" 2>&1 || status=$?

failures=0
fail() { echo "    - $*"; failures=$((failures + 1)); }
sites=$(sed -n 's/^# preempt-inject.sh: \([0-9]*\) sites.*/\1/p' "$out/hook.gdb")
grep -q 'hook: breakpoints set, guest running' "$out/gdb-hook.log" 2>/dev/null || fail "the hook did not arm its breakpoints (see $out/gdb-hook.log)"
grep -q '^injected:' "$out/gdb-hook.log" 2>/dev/null && fail "$(grep '^injected:' "$out/gdb-hook.log" | head -n 1)"
[ "$status" = 0 ] || fail "the guest did not exit successfully (qemu-debug.sh status $status; $out/run.log)"
grep -q '^PASS sched_locks: ' "$out/serial.log" || fail "sched_locks did not pass"
if [ "$failures" = 0 ]; then
    echo "PASS lock-inject-test: $sites sites never ran with SCHEDULER_INPUTS held and interrupts on; $(grep -o 'PASS sched_locks: .*' "$out/serial.log" | cut -c19-) ($((SECONDS - start)) s)"
else
    echo "FAIL lock-inject-test (output: $out)"
    exit 1
fi
