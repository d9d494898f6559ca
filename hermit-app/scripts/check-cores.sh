#!/usr/bin/env bash
# Check the serial output of one boot of the `cores` application.
#   check-cores.sh LOG SMP APIC_MODE KERNEL QEMU_OK
#     APIC_MODE  x2APIC or xAPIC: what the kernel must report using, and each core too
#     KERNEL     patched (the project's boot-log marker must appear) or stock (it must not)
#     QEMU_OK    0 if qemu.sh reported success, anything else if not
# Prints one reason per failed check; exit status 0 only if every check passed.
set -euo pipefail

log="$1" smp="$2" mode="$3" kernel="$4" qemu_ok="$5"
. "$(dirname "$0")/common.sh"
check_boot "$log" "$mode" "$qemu_ok"

count=$(sed -n 's/^cores: \([0-9]*\) (processor count).*/\1/p' <<<"$out")
[ "$count" = "$smp" ] || fail "application saw ${count:-no} cores, expected $smp"

# Each core 0..smp-1 exactly once, in the expected APIC mode, with distinct APIC ids.
reports=$(grep -E '^core [0-9]+: apic id [0-9]+ \((x2APIC|xAPIC)\)$' <<<"$out" || true)
for ((core = 0; core < smp; core++)); do
    n=$(grep -c "^core $core: " <<<"$reports" || true)
    [ "$n" = 1 ] || fail "core $core reported $n times"
done
extra=$(awk -v n="$smp" '{ sub(":", "", $2); if ($2 + 0 >= n) print $2 }' <<<"$reports")
[ -z "$extra" ] || fail "reports from cores outside 0..$((smp - 1)): $extra"
wrong_mode=$(grep -vc "($mode)\$" <<<"$reports" || true)
[ -z "$reports" ] || [ "$wrong_mode" = 0 ] || fail "$wrong_mode cores read their APIC id in another mode than $mode"
ids=$(awk '{ print $5 }' <<<"$reports" | sort -n)
[ "$(uniq -d <<<"$ids")" = "" ] || fail "APIC ids not distinct: $(tr '\n' ' ' <<<"$ids")"

grep -qx "all $smp cores reported" <<<"$out" || fail "no 'all $smp cores reported' line"
grep -q '^error' <<<"$out" && fail "the application printed an error: $(grep '^error' <<<"$out" | head -n 1)"

case "$kernel" in
    patched) grep -q 'ipiq patch applied' <<<"$out" || fail "patched kernel, but no 'ipiq patch applied' in the boot log" ;;
    stock) grep -q 'ipiq patch applied' <<<"$out" && fail "stock kernel, but the boot log shows 'ipiq patch applied'" ;;
esac

[ "$failures" = 0 ]
