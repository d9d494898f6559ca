#!/usr/bin/env bash
# Check the serial output of one boot of the `ipiq-tests` application (patched kernel only).
#   check-ipiq-tests.sh LOG SMP APIC_MODE QEMU_OK
# Prints one reason per failed check; exit status 0 only if every check passed.
set -euo pipefail

log="$1" smp="$2" mode="$3" qemu_ok="$4"
. "$(dirname "$0")/common.sh"
check_boot "$log" "$mode" "$qemu_ok"
grep -q 'ipiq patch applied' <<<"$out" || fail "no 'ipiq patch applied' in the boot log"
grep -q "^ipiq-tests: $smp cores (ipiq serves $smp)" <<<"$out" || fail "application did not see $smp cores"
for t in core_id send seq_wait send_passive errors send_many cpusync try_send passive_tick idle_tick stress stale_tlb stale_tlb_idle sched_locks; do
    grep -q "^PASS $t: " <<<"$out" || fail "test $t did not pass: $(grep "^FAIL $t: " <<<"$out" | head -n 1)"
done
grep -q '^FAIL ' <<<"$out" && fail "failed: $(grep '^FAIL ' <<<"$out" | tr '\n' ';')"
grep -qE '^ipiq-tests: 14 passed, 0 failed$' <<<"$out" || fail "no 'ipiq-tests: 14 passed, 0 failed' line"
grep -q 'ipiq: cpu .* gave up' <<<"$out" && fail "an ipiq watchdog gave up: $(grep 'gave up' <<<"$out" | head -n 1)"
[ "$failures" = 0 ]
