#!/usr/bin/env bash
# Boot the `cores` image with 1, 2, 4 and 8 vCPUs under an x2APIC and an xAPIC CPU model and
# check each boot from its serial output (check-cores.sh), not only from QEMU's exit status.
#   image-test.sh LOADER IMAGE KERNEL LOG_DIR [TIMEOUT_S] [IPIQ_TESTS_IMAGE]
# With IPIQ_TESTS_IMAGE (patched kernel), also boots the ipiq-tests application on the same
# shapes and checks it with check-ipiq-tests.sh.
# Prints one PASS/FAIL line per boot and ends with "N passed, M failed".
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/common.sh"

loader="$1" image="$2" kernel="$3" logs="$4" limit="${5:-120}" tests_image="${6:-}"
mkdir -p "$logs"
echo "==> booting $(basename "$image") [kernel $kernel] under QEMU $(qemu-system-x86_64 --version | head -n 1 | awk '{ print $4 }') (TCG); logs in $logs"

passed=0
failed=0
for cpu in "qemu64,+x2apic,+fsgsbase:x2APIC" "qemu64,+fsgsbase:xAPIC"; do
    model="${cpu%:*}" mode="${cpu##*:}"
    for smp in 1 2 4 8; do
        log="$logs/smp$smp-$mode.log"
        start=$(now)
        qemu_ok=0
        "$here/qemu.sh" "$loader" "$image" "$smp" "$model" 512M "$limit" >"$log" 2>&1 || qemu_ok=$?
        took=$(elapsed "$start")
        if reasons=$("$here/check-cores.sh" "$log" "$smp" "$mode" "$kernel" "$qemu_ok"); then
            echo "PASS smp=$smp cpu=$model ${took}s"
            passed=$((passed + 1))
        else
            echo "FAIL smp=$smp cpu=$model ${took}s (log: $log)"
            echo "$reasons"
            failed=$((failed + 1))
        fi
        [ -n "$tests_image" ] || continue
        # IPIQ_TESTS_SMP: the vCPU counts ipiq-tests runs on. 8 is left out by default: its
        # stress test hangs there (open issue, see the kernel-integration report).
        case " ${IPIQ_TESTS_SMP:-1 2 4} " in *" $smp "*) ;; *) continue ;; esac
        log="$logs/ipiq-tests-smp$smp-$mode.log"
        start=$(now)
        qemu_ok=0
        "$here/qemu.sh" "$loader" "$tests_image" "$smp" "$model" 512M "$limit" >"$log" 2>&1 || qemu_ok=$?
        took=$(elapsed "$start")
        if reasons=$("$here/check-ipiq-tests.sh" "$log" "$smp" "$mode" "$qemu_ok"); then
            echo "PASS ipiq-tests smp=$smp cpu=$model ${took}s"
            grep -a -E '^PASS (passive_tick|idle_tick|stress|stale_tlb|stale_tlb_idle|sched_locks):' "$log" | sed 's/^/    /' | cut -c1-200
            passed=$((passed + 1))
        else
            echo "FAIL ipiq-tests smp=$smp cpu=$model ${took}s (log: $log)"
            echo "$reasons"
            failed=$((failed + 1))
        fi
    done
done
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
