#!/usr/bin/env bash
# Boot apps/fpu-stress (application message functions computing with f64, x87 and AVX against
# threads that check their own floating-point state bit for bit) with each vCPU count on each
# CPU model, and on each AVX model with AVX required; check every boot.
#   fpu-test.sh LOADER IMAGE LOG_DIR TIMEOUT_S "SMP..." "MODE..." "AVX_MODEL..." "APP_ARGS"
# MODE is x2APIC (qemu64,+x2apic,+fsgsbase) or xAPIC (qemu64,+fsgsbase); an AVX model is a QEMU
# CPU model with AVX and XSAVE (Skylake-Client), booted with 2 vCPUs and `require-avx`.
# A boot fails if QEMU or the app failed, the kernel's APIC mode or patch marker is wrong, or no
# PASS line came out. Logs: LOG_DIR/fpu-stress-smpN-MODEL.log.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/common.sh"

loader="$1" image="$2" logs="$3" limit="$4" smps="$5" modes="$6" avx_models="$7" args="$8"
mkdir -p "$logs"
passed=0 failed=0

# boot SMP QEMU_MODEL APIC_MODE EXTRA_ARGS
boot() {
    local smp="$1" model="$2" mode="$3" extra="$4" log start took qemu_ok reasons
    log="$logs/fpu-stress-smp$smp-${model//[,+]/_}.log"
    start=$(now)
    qemu_ok=0
    "$here/qemu.sh" "$loader" "$image" "$smp" "$model" 512M "$limit" -- -append "-- $extra" >"$log" 2>&1 || qemu_ok=$?
    took=$(elapsed "$start")
    reasons=$(
        check_boot "$log" "$mode" "$qemu_ok"
        grep -q 'ipiq patch applied' <<<"$out" || fail "no 'ipiq patch applied' in the boot log"
        grep -q "^fpu-stress: $smp cores" <<<"$out" || fail "no start line for $smp cores"
        grep -q '^fpu-stress: PASS$' <<<"$out" || fail "$(grep -m1 '^fpu-stress: FAIL' <<<"$out" || echo 'no verdict line')"
        [ "$failures" = 0 ]
    ) || true
    if [ -z "$reasons" ]; then
        echo "PASS fpu-stress smp=$smp cpu=$model ($mode) ${took}s: $(tr -d '\r' <"$log" | grep -m1 '^fpu-stress: sent' | cut -d' ' -f3-)"
        passed=$((passed + 1))
    else
        echo "FAIL fpu-stress smp=$smp cpu=$model ($mode) ${took}s (log: $log)"
        echo "$reasons"
        tr -d '\r' <"$log" | grep -E '^fpu-stress: (core|messages|mismatch)' | head -n 8 | sed 's/^/    /' || true
        failed=$((failed + 1))
    fi
}

for mode in $modes; do
    case "$mode" in
        x2APIC) model="qemu64,+x2apic,+fsgsbase" ;;
        xAPIC) model="qemu64,+fsgsbase" ;;
        *) echo "error: unknown APIC mode '$mode' (x2APIC or xAPIC)" >&2; exit 2 ;;
    esac
    for smp in $smps; do
        boot "$smp" "$model" "$mode" "$args"
    done
done
for model in $avx_models; do
    boot 2 "$model" x2APIC "require-avx $args"
done
echo "fpu-test: $passed passed, $failed failed"
[ "$failed" = 0 ]
