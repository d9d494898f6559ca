#!/usr/bin/env bash
# Boot the tlb-stale application on each kernel given, with each vCPU count and APIC model, check
# every boot, and print one table of what the readers saw (a <<<report block).
#   tlb-stale.sh LOADER LOG_DIR TIMEOUT_S "SMP..." "MODE..." KERNEL=IMAGE...
# MODE is x2APIC (qemu64,+x2apic,+fsgsbase) or xAPIC (qemu64,+fsgsbase); KERNEL is patched
# (the ipiq kernel: the app itself fails on any stale read) or stock-probe (stale reads are
# reported, not failures). A boot fails if QEMU or the app failed, the kernel's APIC mode or
# boot-log marker is wrong, or no result line came out. Logs: LOG_DIR/tlb-stale-KERNEL-smpN-MODE.log.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/common.sh"

loader="$1" logs="$2" limit="$3" smps="$4" modes="$5"
shift 5
mkdir -p "$logs"
rows=()
passed=0 failed=0
for spec in "$@"; do
    kernel="${spec%%=*}" image="${spec#*=}"
    for mode in $modes; do
        case "$mode" in
            x2APIC) model="qemu64,+x2apic,+fsgsbase" ;;
            xAPIC) model="qemu64,+fsgsbase" ;;
            *) echo "error: unknown APIC mode '$mode' (x2APIC or xAPIC)" >&2; exit 2 ;;
        esac
        for smp in $smps; do
            log="$logs/tlb-stale-$kernel-smp$smp-$mode.log"
            start=$(now)
            qemu_ok=0
            "$here/qemu.sh" "$loader" "$image" "$smp" "$model" 512M "$limit" >"$log" 2>&1 || qemu_ok=$?
            took=$(elapsed "$start")
            reasons=$(
                check_boot "$log" "$mode" "$qemu_ok"
                case "$kernel" in
                    patched) grep -q 'ipiq patch applied' <<<"$out" || fail "no 'ipiq patch applied' in the boot log" ;;
                    stock-probe)
                        grep -q 'stock-probe patch applied' <<<"$out" || fail "no 'stock-probe patch applied' in the boot log"
                        grep -q 'ipiq patch applied' <<<"$out" && fail "'ipiq patch applied' in a stock-probe boot log" ;;
                esac
                grep -q "^tlb-stale: kernel=.* smp=$smp " <<<"$out" || fail "no result line for $smp cores"
                grep -qE '^tlb-stale: (PASS|REPORT):' <<<"$out" || fail "$(grep -m1 '^tlb-stale: FAIL' <<<"$out" || echo 'no verdict line')"
                [ "$failures" = 0 ]
            ) || true
            line=$(tr -d '\r' <"$log" | grep -m1 '^tlb-stale: kernel=' || true)
            if [ -z "$reasons" ]; then
                echo "PASS tlb-stale $kernel smp=$smp $mode ${took}s: $(tr -d '\r' <"$log" | grep -m1 -E '^tlb-stale: (PASS|REPORT):' | cut -d' ' -f3-)"
                passed=$((passed + 1))
            else
                echo "FAIL tlb-stale $kernel smp=$smp $mode ${took}s (log: $log)"
                echo "$reasons"
                failed=$((failed + 1))
            fi
            [ -n "$line" ] || continue
            # kernel=K smp=N swaps=S readers=R checked=C stale=X stale_swaps=Y max_stale_per_swap=M
            # swap_flushes=F munmap_flushes=U late_reads=L late_old=O late_other=T
            rows+=("$(awk -v mode="$mode" '{ for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
                printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |", v["kernel"], v["smp"], mode, v["swaps"],
                    v["checked"], v["stale"], v["stale_swaps"], v["max_stale_per_swap"], v["swap_flushes"], v["munmap_flushes"],
                    v["late_reads"] }' <<<"$line")")
        done
    done
done
{
    echo "<<<report Stale TLB reads after a remap: ipiq kernel against stock"
    echo "Readers on the other cores spin reading page a while core 0 swaps the frames behind a and b"
    echo "(sys_ipiq_swap_pages: two maps over present entries). A read counts if it happened after a swap"
    echo "call returned (epoch published) and before the next began; stale = it returned the old frame."
    echo "Flushes: ipiq shootdowns (ipiq kernel) or TLB-flush IPIs sent, vector 112 (stock)."
    echo "After munmap (stock only): reads of a page other cores were reading, completed after munmap"
    echo "returned (readers ran until each made 1000 or 100 ms passed): the page is unmapped, so each went through a stale"
    echo "TLB entry (on the ipiq kernel munmap shoots it down and such a read would fault: not attempted)."
    echo "| kernel | vCPUs | APIC | swaps | checked reads | stale reads | swaps followed by a stale read | most after one swap | flushes in swaps | flushes in munmap | reads after munmap |"
    echo "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for r in "${rows[@]}"; do echo "$r"; done
    echo ">>>report"
} | tee "${SUMMARY:-/dev/null}"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
