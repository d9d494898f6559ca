#!/usr/bin/env bash
# The hypervisor bill, side by side: reads the `bill:` lines of boot logs (hermit_apps::bill:
# `bill: app=A kernel=ipiq|stock smp=N case=C unit=U n=UNITS icr=.. eoi=.. timer=.. halt=..
# other=.. exits=..`) and prints one Markdown table (a <<<report block): per experiment, vCPU
# count and case, the events per unit on each kernel (exits, then ICR / EOI / timer / halt
# writes), the ipiq/stock ratio of exits, and issue 12's targets where one applies (rayon at 4
# and 8 vCPUs: at most 0.7x stock's; a wake-up hand-off: at most stock's). A figure seen in
# several logs (repeated boots) is their median.
#   bill-report.sh LOG...
# Exits 1 if a log has no bill line or a row lacks one kernel.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/common.sh"

[ $# -gt 0 ] || { echo "usage: bill-report.sh LOG..." >&2; exit 2; }
declare -A val
rows=()
missing=0
for log in "$@"; do
    lines=$(tr -d '\r' <"$log" | grep -a '^bill: ' || true)
    if [ -z "$lines" ]; then
        echo "error: no bill line in $log" >&2
        missing=1
        continue
    fi
    while read -r line; do
        declare -A kv=()
        for f in $line; do [[ "$f" == *=* ]] && kv["${f%%=*}"]="${f#*=}"; done
        row="${kv[app]}|${kv[smp]}|${kv[case]}|${kv[unit]}"
        [ -n "${val[$row|seen]:-}" ] || { rows+=("$row"); val["$row|seen"]=1; }
        k="${kv[kernel]}"
        for e in exits icr eoi timer halt; do
            val["$row|$k|$e"]+=" $(awk -v c="${kv[$e]}" -v n="${kv[n]}" 'BEGIN { printf "%.4f", c / n }')"
        done
    done <<<"$lines"
done
fmt() { awk -v v="$1" 'BEGIN { printf (v >= 100 ? "%.0f" : (v >= 1 ? "%.2f" : "%.3f")), v }'; }
echo "<<<report Hypervisor bill: events that cost a VM exit under KVM without APIC virtualization, ipiq kernel against stock"
echo "Counted in both kernels by the same probe (kernel/event-probe-patches) and, on the ipiq kernel, ipiq's own ICR"
echo "writes: ICR writes (IPIs), EOI writes (one per interrupt taken), timer programming, halts. Per unit: a wake-up"
echo "hand-off, a page swap under a reader (shootdown), one parallel rayon run. Split: ICR / EOI / timer / halt."
echo "| experiment | vCPUs | case | unit | ipiq exits | ipiq split | stock exits | stock split | ipiq / stock | target |"
echo "|---|---:|---|---|---:|---|---:|---|---:|---|"
status=$missing
for row in "${rows[@]}"; do
    IFS='|' read -r app smp case unit <<<"$row"
    cells=()
    for k in ipiq stock; do
        if [ -z "${val[$row|$k|exits]:-}" ]; then
            cells+=("n/a" "n/a")
            continue
        fi
        split=""
        for e in icr eoi timer halt; do split+="${split:+ / }$(fmt "$(median "${val[$row|$k|$e]}")")"; done
        cells+=("$(fmt "$(median "${val[$row|$k|exits]}")")" "$split")
    done
    if [ -z "${val[$row|ipiq|exits]:-}" ] || [ -z "${val[$row|stock|exits]:-}" ]; then
        echo "error: $app $smp vCPUs $case: a kernel has no bill line" >&2
        status=1
        ratio="n/a" target=""
    else
        a=$(median "${val[$row|ipiq|exits]}") b=$(median "${val[$row|stock|exits]}")
        ratio=$(awk -v a="$a" -v b="$b" 'BEGIN { if (b > 0) printf "%.3gx", a / b; else print (a > 0 ? "inf" : "1x") }')
        limit=""
        if [ "$app" = rayon ] && { [ "$smp" = 4 ] || [ "$smp" = 8 ]; }; then limit=0.7; fi
        [ "$app" = wakeup ] && limit=1
        target=""
        if [ -n "$limit" ]; then
            target=$(awk -v a="$a" -v b="$b" -v l="$limit" 'BEGIN { print (a <= l * b) ? "met (<= " l "x)" : "not met (<= " l "x)" }')
        fi
    fi
    echo "| $app | $smp | $case | $unit | ${cells[0]} | ${cells[1]} | ${cells[2]} | ${cells[3]} | $ratio | $target |"
done
echo ">>>report"
exit "$status"
