#!/usr/bin/env bash
# The hypervisor bill, ipiq kernel against stock-probe: boots the wake-up ping-pong (wakeup),
# the shootdown loop under a reader (tlb-stale rate) and rayon's sort and stencil (rayon-work)
# on both kernels, checks every boot, and tabulates their `bill:` lines (bill-report.sh).
#   bill.sh LOADER OUT_DIR KIND.KERNEL=IMAGE...
# KIND: wakeup, shootdown or rayon; KERNEL: patched or stock-probe; every KIND given needs both.
# Settings (environment, defaults in brackets): BILL_WAKEUP_SMP [2 4], BILL_WAKEUP_ROUNDS [500],
# BILL_SHOOTDOWN_SMP [2 4], BILL_SWAPS [100], BILL_RAYON_SMP [4 8], BILL_RAYON_ARGS [smoke],
# BILL_TIMEOUT [900] seconds per boot. The mode follows qemu.sh: `make REPEATABLE=1` (QEMU's
# instruction counting) makes every count repeat exactly.
# Logs: OUT_DIR/KIND-KERNEL-SMP.log; the table: OUT_DIR/bill.md (and stdout).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/common.sh"

[ $# -ge 3 ] || { echo "usage: bill.sh LOADER OUT_DIR KIND.KERNEL=IMAGE..." >&2; exit 2; }
loader="$1" dir="$2"
shift 2
declare -A image
for spec in "$@"; do
    name="${spec%%=*}"
    [[ "$name" =~ ^(wakeup|shootdown|rayon)\.(patched|stock-probe)$ ]] \
        || { echo "error: '$name': expected KIND.KERNEL, KIND wakeup|shootdown|rayon, KERNEL patched|stock-probe" >&2; exit 2; }
    image["$name"]="${spec#*=}"
done
declare -A smps=(
    [wakeup]="${BILL_WAKEUP_SMP:-2 4}" [shootdown]="${BILL_SHOOTDOWN_SMP:-2 4}" [rayon]="${BILL_RAYON_SMP:-4 8}"
)
declare -A args=(
    [wakeup]="${BILL_WAKEUP_ROUNDS:-500}" [shootdown]="rate ${BILL_SWAPS:-100}" [rayon]="${BILL_RAYON_ARGS:-smoke}"
)
declare -A done_line=([wakeup]='^wakeup: ok' [shootdown]='^tlb-stale-rate: ' [rayon]='^rayon-work: all results correct')
model="qemu64,+x2apic,+fsgsbase"
limit="${BILL_TIMEOUT:-900}"
mkdir -p "$dir"
logs=() failed=0
for kind in wakeup shootdown rayon; do
    [ -n "${image[$kind.patched]:-}" ] || [ -n "${image[$kind.stock-probe]:-}" ] || continue
    for kernel in patched stock-probe; do
        [ -n "${image[$kind.$kernel]:-}" ] || { echo "error: $kind.$kernel=IMAGE missing" >&2; exit 2; }
    done
    for smp in ${smps[$kind]}; do
        for kernel in patched stock-probe; do
            log="$dir/$kind-$kernel-$smp.log"
            start=$(now)
            qemu_ok=0
            "$here/qemu.sh" "$loader" "${image[$kind.$kernel]}" "$smp" "$model" 512M "$limit" \
                -- -append "-- ${args[$kind]}" >"$log" 2>&1 || qemu_ok=$?
            reasons=$(
                check_boot "$log" x2APIC "$qemu_ok"
                grep -q "${done_line[$kind]}" <<<"$out" || fail "no '${done_line[$kind]}' line"
                grep -q '^bill: ' <<<"$out" || fail "no bill line"
                [ "$failures" = 0 ]
            ) || true
            if [ -z "$reasons" ]; then
                echo "PASS bill $kind $kernel smp=$smp $(elapsed "$start")s"
                logs+=("$log")
            else
                echo "FAIL bill $kind $kernel smp=$smp $(elapsed "$start")s (log: $log)"
                echo "$reasons"
                failed=$((failed + 1))
            fi
        done
    done
done
[ "$failed" = 0 ] || { echo "$failed boot(s) failed"; exit 1; }
if [ -n "${QEMU_ICOUNT_SHIFT:-}" ]; then
    mode="repeatable: QEMU instruction counting, shift $QEMU_ICOUNT_SHIFT, phase ${QEMU_ICOUNT_PHASE:-0}"
else
    mode="normal: multi-threaded TCG, counts follow the host's scheduling"
fi
{
    echo "Mode: $mode. QEMU $(qemu-system-x86_64 --version | head -n 1 | awk '{ print $4 }'), cpu $model, host $(nproc) cores."
    echo "wakeup: ${args[wakeup]} round trips per primitive; shootdown: tlb-stale ${args[shootdown]}; rayon-work: ${args[rayon]}."
    "$here/bill-report.sh" "${logs[@]}"
} | tee "$dir/bill.md"
