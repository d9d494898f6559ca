#!/usr/bin/env bash
# Boot the wakeup application (cross-core wake-up ping-pong) on the ipiq kernel and the
# stock-probe kernel with each vCPU count, check every boot, and print a side-by-side table
# (a <<<report block) with the ratio and whether the issue's target (ipiq at least 1.2x the round
# trips per second of stock, with fewer IPIs) is met.
#   wakeup.sh LOADER LOG_DIR TIMEOUT_S "SMP..." ROUNDS patched=IMAGE stock-probe=IMAGE
# ROUNDS: round trips per primitive ("" for the app's default). Logs: LOG_DIR/wakeup-KERNEL-SMP.log
# (repeats: ...-SMP-rN.log); with SUMMARY=path the table is also written there.
# REPEATS=n (default 1): boot each (vCPUs, kernel) n times, the kernels alternating, and report
# the median of each figure (emulated time under TCG follows the host's load: repeat on a busy host).
# Also reads, from the kernel's interrupt counts printed at shutdown, how many wake-up IPIs
# (vector 121) the cores received over the whole boot: stock's wake-up path, and on the ipiq
# kernel the fallback left when an ipiq FIFO is full or a core not yet up.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/common.sh"

loader="$1" logs="$2" limit="$3" smps="$4" rounds="$5"
shift 5
declare -A image
for spec in "$@"; do image["${spec%%=*}"]="${spec#*=}"; done
[ -n "${image[patched]:-}" ] && [ -n "${image[stock-probe]:-}" ] \
    || { echo "error: need patched=IMAGE and stock-probe=IMAGE" >&2; exit 2; }
model="qemu64,+x2apic,+fsgsbase"
mkdir -p "$logs"
passed=0 failed=0
declare -A val
repeats="${REPEATS:-1}"
for rep in $(seq 1 "$repeats"); do
for smp in $smps; do
    for kernel in patched stock-probe; do
        log="$logs/wakeup-$kernel-$smp$([ "$rep" = 1 ] || echo "-r$rep").log"
        start=$(now)
        qemu_ok=0
        "$here/qemu.sh" "$loader" "${image[$kernel]}" "$smp" "$model" 512M "$limit" \
            ${rounds:+-- -append "-- $rounds"} >"$log" 2>&1 || qemu_ok=$?
        took=$(elapsed "$start")
        reasons=$(
            check_boot "$log" x2APIC "$qemu_ok"
            marker=$([ "$kernel" = patched ] && echo 'ipiq patch applied' || echo 'stock-probe patch applied')
            grep -q "$marker" <<<"$out" || fail "no '$marker' in the boot log"
            grep -q '^wakeup: ok' <<<"$out" || fail "$(grep -m1 '^wakeup: FAIL' <<<"$out" || echo 'no wakeup: ok line')"
            [ "$(grep -c "^wakeup: kernel=.* smp=$smp " <<<"$out")" = 2 ] || fail "not 2 result lines for $smp cores"
            [ "$failures" = 0 ]
        ) || true
        if [ -z "$reasons" ]; then
            echo "PASS wakeup $kernel smp=$smp ${took}s$([ "$repeats" = 1 ] || echo " (run $rep of $repeats)")"
            passed=$((passed + 1))
        else
            echo "FAIL wakeup $kernel smp=$smp ${took}s (log: $log)"
            echo "$reasons"
            failed=$((failed + 1))
            continue
        fi
        # Whole-boot vector 121 receptions: lines "[core][Wakeup]: n" after "Number of interrupts".
        w121=$(tr -d '\r' <"$log" | awk -F': ' '/\]\[Wakeup\]: [0-9]+$/ { s += $2 } END { print s + 0 }')
        while read -r line; do
            declare -A kv=()
            for f in $line; do [[ "$f" == *=* ]] && kv["${f%%=*}"]="${f#*=}"; done
            p="${kv[primitive]}"
            key="$smp|$p|$kernel"
            # Space-separated lists, one entry per run; the table takes their medians.
            val["$key|rate"]+=" ${kv[rt_per_s]}" val["$key|p50"]+=" ${kv[p50_us]}" val["$key|p99"]+=" ${kv[p99_us]}"
            val["$key|ipis"]+=" ${kv[ipis]}" val["$key|w121"]+=" $w121"
            val["$key|rounds"]=${kv[rounds]}
        done < <(tr -d '\r' <"$log" | grep '^wakeup: kernel=' | sed 's/^wakeup: //; s/primitive=Mutex+Condvar/primitive=condvar/; s|primitive=park/unpark|primitive=park|')
    done
done
done
for k in "${!val[@]}"; do
    [[ "$k" == *"|rounds" ]] || val["$k"]=$(median "${val[$k]}")
done
{
    echo "<<<report Cross-core wake-up ping-pong: ipiq kernel against stock (QEMU TCG, x2APIC)"
    echo "Two threads pinned to cores 0 and 1 hand a turn back and forth through blocking std primitives;"
    echo "every hand-off wakes a task blocked on the other core. Rates and latencies are emulated time"
    echo "(compare the two kernels, not absolute values). IPIs sent during the measured round trips:"
    echo "ipiq's own (vector 122) on the ipiq kernel, wake-up (121) + TLB-flush (112) on stock."
    echo "121 rcvd: wake-up IPIs received over the whole boot (kernel's interrupt counts at shutdown)."
    echo "Each figure is the median of $repeats boot(s) per kernel and vCPU count, the kernels alternating."
    echo "p50 speed-up: stock p50 / ipiq p50 (the median round trip is the figure host preemption disturbs least)."
    echo "| vCPUs | primitive | round trips | ipiq rt/s | stock rt/s | ipiq/stock rt/s | ipiq p50/p99 us | stock p50/p99 us | p50 speed-up | ipiq IPIs/rt | stock IPIs/rt | ipiq 121 rcvd | stock 121 rcvd | target met |"
    echo "|---:|---|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---|"
    verdicts=()
    for smp in $smps; do
        for p in condvar park; do
            a="$smp|$p|patched" b="$smp|$p|stock-probe"
            [ -n "${val[$a|rate]:-}" ] && [ -n "${val[$b|rate]:-}" ] || continue
            # Met: at least 1.2x by both round trips per second and median round trip, and fewer IPIs.
            row=$(awk -v ra="${val[$a|rate]}" -v rb="${val[$b|rate]}" -v ia="${val[$a|ipis]}" -v ib="${val[$b|ipis]}" \
                -v pa="${val[$a|p50]}" -v pb="${val[$b|p50]}" -v n="${val[$a|rounds]}" 'BEGIN {
                    ratio = ra / rb; speed = pb / pa; fewer = (ia + 0 < ib + 0)
                    met = (ratio >= 1.2 && speed >= 1.2 && fewer) ? "yes" : "no"
                    why = ""
                    if (ratio < 1.2) why = sprintf("rt/s %.3gx", ratio)
                    if (speed < 1.2) why = why (why == "" ? "" : ", ") sprintf("p50 %.3gx", speed)
                    if (!fewer) why = why (why == "" ? "" : ", ") "IPIs not fewer"
                    printf "%.3g|%.3g|%.3f|%.3f|%s%s", ratio, speed, ia / n, ib / n, met, (why == "" ? "" : " (" why ")") }')
            IFS='|' read -r ratio speed ipa ipb met <<<"$row"
            echo "| $smp | $p | ${val[$a|rounds]} | ${val[$a|rate]} | ${val[$b|rate]} | ${ratio}x | ${val[$a|p50]} / ${val[$a|p99]} | ${val[$b|p50]} / ${val[$b|p99]} | ${speed}x | $ipa | $ipb | ${val[$a|w121]} | ${val[$b|w121]} | $met |"
            verdicts+=("$smp vCPUs $p: $met")
        done
    done
    echo "Target (issue 5): ipiq kernel at least 1.2x faster than stock (round trips/s and p50), with fewer IPIs."
    for v in "${verdicts[@]}"; do echo "- $v"; done
    echo ">>>report"
} | tee "${SUMMARY:-/dev/null}"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
