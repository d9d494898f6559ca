#!/usr/bin/env bash
# Boot tlb-stale's `rate` mode (swaps back to back under a reader on the last core; the cores in
# between idle, then spinning) on the ipiq kernel and the stock-probe kernel with each vCPU
# count, REPEATS times with the kernels alternating, check every boot, and print a side-by-side
# table (a <<<report block): median swaps per second with min-max, ipiq against stock, stale
# reads, IPIs per swap, and issue 10's targets (at 4 vCPUs with idle cores at least 0.25x stock,
# at 2 vCPUs at least 0.35x, 0 stale reads on the ipiq kernel).
#   shootdown-rate.sh LOADER LOG_DIR TIMEOUT_S "SMP..." SWAPS patched=IMAGE stock-probe=IMAGE
# Logs: LOG_DIR/shootdown-KERNEL-SMP-rN.log; with SUMMARY=path the table is also written there.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/common.sh"

loader="$1" logs="$2" limit="$3" smps="$4" swaps="$5"
shift 5
declare -A image
for spec in "$@"; do image["${spec%%=*}"]="${spec#*=}"; done
[ -n "${image[patched]:-}" ] && [ -n "${image[stock-probe]:-}" ] \
    || { echo "error: need patched=IMAGE and stock-probe=IMAGE" >&2; exit 2; }
model="${CPU_MODEL:-qemu64,+x2apic,+fsgsbase}"
repeats="${REPEATS:-3}"
mkdir -p "$logs"
passed=0 failed=0
declare -A val
for rep in $(seq 1 "$repeats"); do
    for smp in $smps; do
        for kernel in patched stock-probe; do
            log="$logs/shootdown-$kernel-$smp-r$rep.log"
            start=$(now)
            qemu_ok=0
            "$here/qemu.sh" "$loader" "${image[$kernel]}" "$smp" "$model" 512M "$limit" \
                -- -append "-- rate $swaps" >"$log" 2>&1 || qemu_ok=$?
            took=$(elapsed "$start")
            reasons=$(
                check_boot "$log" x2APIC "$qemu_ok"
                grep -q '^tlb-stale-rate: ' <<<"$out" || fail "no tlb-stale-rate line"
                [ "$failures" = 0 ]
            ) || true
            if [ -n "$reasons" ]; then
                echo "FAIL shootdown-rate $kernel smp=$smp ${took}s (log: $log)"
                echo "$reasons"
                failed=$((failed + 1))
                continue
            fi
            echo "PASS shootdown-rate $kernel smp=$smp ${took}s (run $rep of $repeats)"
            passed=$((passed + 1))
            while read -r line; do
                declare -A kv=()
                for f in $line; do [[ "$f" == *=* ]] && kv["${f%%=*}"]="${f#*=}"; done
                key="$smp|${kv[others]}|$kernel"
                val["$key|rate"]+=" ${kv[swaps_per_s]}" val["$key|ipis"]+=" ${kv[ipis_per_swap]}"
                val["$key|stale"]=$(( ${val["$key|stale"]:-0} + ${kv[stale]} ))
                val["$key|checked"]=$(( ${val["$key|checked"]:-0} + ${kv[checked]} ))
                val["$key|killed"]=$(( ${val["$key|killed"]:-0} + ${kv[readers_killed]:-0} ))
            done < <(tr -d '\r' <"$log" | grep '^tlb-stale-rate: ' | sed 's/^tlb-stale-rate: //')
        done
    done
done
{
    echo "<<<report TLB shootdown cost: ipiq kernel against stock (QEMU TCG, $model)"
    echo "tlb-stale rate: $swaps swaps (each remaps two pages: two shootdowns) back to back on core 0 under a"
    echo "reader on the last core; the cores in between idle, then spin. Swaps per second are emulated time:"
    echo "median of $repeats boots per kernel (min-max), the kernels alternating. IPIs per swap: every IPI"
    echo "the kernel sent meanwhile (stock: one per other core per remap, fire-and-forget)."
    echo "Readers killed: readers that took a page fault during the swaps (the kernel ends such a task)."
    echo "| vCPUs | other cores | ipiq swaps/s | stock swaps/s | ipiq/stock | ipiq IPIs/swap | stock IPIs/swap | ipiq stale / checked | stock stale / checked | readers killed ipiq / stock |"
    echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    verdicts=()
    for smp in $smps; do
        for others in none idle busy; do
            a="$smp|$others|patched" b="$smp|$others|stock-probe"
            [ -n "${val[$a|rate]:-}" ] && [ -n "${val[$b|rate]:-}" ] || continue
            read -r ra ra_lo ra_hi <<<"$(median_min_max "${val[$a|rate]}")"
            read -r rb rb_lo rb_hi <<<"$(median_min_max "${val[$b|rate]}")"
            read -r ia _ _ <<<"$(median_min_max "${val[$a|ipis]}")"
            read -r ib _ _ <<<"$(median_min_max "${val[$b|ipis]}")"
            ratio=$(awk -v a="$ra" -v b="$rb" 'BEGIN { printf "%.3g", a / b }')
            echo "| $smp | $others | $ra ($ra_lo-$ra_hi) | $rb ($rb_lo-$rb_hi) | ${ratio}x | $ia | $ib | ${val[$a|stale]} / ${val[$a|checked]} | ${val[$b|stale]} / ${val[$b|checked]} | ${val[$a|killed]} / ${val[$b|killed]} |"
            want=""
            { [ "$smp" = 4 ] && [ "$others" = idle ]; } && want=0.25
            { [ "$smp" = 2 ] && [ "$others" = none ]; } && want=0.35
            if [ -n "$want" ]; then
                met=$(awk -v r="$ratio" -v w="$want" -v s="$((val[$a|stale] + val[$a|killed]))" 'BEGIN { print (r >= w && s == 0) ? "met" : "not met" }')
                verdicts+=("$smp vCPUs, other cores $others: ipiq/stock ${ratio}x (target >= ${want}x, 0 stale, no reader killed): $met")
            fi
        done
    done
    echo "Targets (issue 10):"
    for v in "${verdicts[@]}"; do echo "- $v"; done
    echo ">>>report"
} | tee "${SUMMARY:-/dev/null}"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
