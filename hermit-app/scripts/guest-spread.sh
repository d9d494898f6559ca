#!/usr/bin/env bash
# The headline guest ratios, RUNS times each, with their spread across runs (one Markdown table):
#   - ipiq-bench round trip: ipiq p50 / raw ICR ping-pong p50, per vCPU count in SMPS;
#   - ipiq-bench statistics: off / on for streaming msg/s and for the round trip p50, per vCPU count;
#   - wakeup (scripts/wakeup.sh): ipiq kernel / stock-probe round trips per second and stock p50 /
#     ipiq p50, per primitive and vCPU count in WAKEUP_SMPS.
#   guest-spread.sh LOADER OUT_DIR RUNS "SMPS" "WAKEUP_SMPS" WAKEUP_ROUNDS bench=IMAGE patched=IMAGE stock-probe=IMAGE
# bench= is the ipiq-bench image (booted with the sections round-trip,statistics only); patched= and
# stock-probe= the wakeup images. Runs are interleaved (run 1 of every figure, then run 2, ...), so
# a change in the host's load falls on every figure alike. Spread: (max - min) / median of the runs.
# The mode follows qemu.sh: QEMU_ICOUNT_SHIFT set (make REPEATABLE=1) is the repeatable mode.
# SPREAD_PHASES="0 1 2 ..." (repeatable mode): one run per phase, run i with QEMU_ICOUNT_PHASE set
# to the i-th (RUNS is then ignored): deterministic runs that start a few hundred instructions
# apart, whose median does not hang on where one run's hand-offs happen to fall.
# Boot logs: OUT_DIR/bench-smpN-rR.log, OUT_DIR/wakeup-rR/; the table: OUT_DIR/spread.md (and stdout).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

loader="$1" out="$2" runs="$3" smps="$4" wakeup_smps="$5" wakeup_rounds="$6"
shift 6
declare -A image
for spec in "$@"; do image["${spec%%=*}"]="${spec#*=}"; done
for k in bench patched stock-probe; do
    [ -n "${image[$k]:-}" ] || { echo "error: need bench=IMAGE patched=IMAGE stock-probe=IMAGE" >&2; exit 2; }
done
model="qemu64,+x2apic,+fsgsbase"
mkdir -p "$out"
# Figure name -> space-separated values, one per run; names in first-seen order.
declare -A vals
names=()
add() {
    [ -n "${vals[$1]+set}" ] || names+=("$1")
    vals["$1"]+=" $2"
}
phases=(${SPREAD_PHASES:-})
[ "${#phases[@]}" = 0 ] || runs=${#phases[@]}
start=$SECONDS
for run in $(seq 1 "$runs"); do
    [ "${#phases[@]}" = 0 ] || export QEMU_ICOUNT_PHASE="${phases[$((run - 1))]}"
    for smp in $smps; do
        log="$out/bench-smp$smp-r$run.log"
        "$here/qemu.sh" "$loader" "${image[bench]}" "$smp" "$model" 512M 900 \
            -- -append "-- round-trip,statistics" >"$log" 2>&1 \
            || { echo "FAIL ipiq-bench smp=$smp run $run (log: $log)" >&2; exit 1; }
        rt=$(tr -d '\r' <"$log" | sed -n 's/^ipiq p50 \/ raw p50 = \([0-9.]*\).*/\1/p')
        read -r st_stream st_rt < <(tr -d '\r' <"$log" \
            | sed -n 's/^off against on: streaming \([-+0-9.]*\)%, round trip p50 \([-+0-9.]*\)%.*/\1 \2/p')
        [ -n "$rt" ] && [ -n "$st_stream" ] || { echo "error: no figures in $log" >&2; exit 1; }
        add "round trip ipiq p50 / raw ICR p50, $smp vCPUs" "$rt"
        add "statistics off / on, streaming msg/s, $smp vCPUs" "$(awk -v p="$st_stream" 'BEGIN { printf "%.3f", 1 + p / 100 }')"
        add "statistics off / on, round trip p50, $smp vCPUs" "$(awk -v p="$st_rt" 'BEGIN { printf "%.3f", 1 + p / 100 }')"
        echo "run $run: ipiq-bench smp=$smp done ($((SECONDS - start)) s)"
    done
    summary="$out/wakeup-r$run.md"
    SUMMARY="$summary" REPEATS=1 "$here/wakeup.sh" "$loader" "$out/wakeup-r$run" 900 "$wakeup_smps" "$wakeup_rounds" \
        patched="${image[patched]}" stock-probe="${image[stock-probe]}" >"$out/wakeup-r$run.out" 2>&1 \
        || { echo "FAIL wakeup run $run (see $out/wakeup-r$run.out)" >&2; exit 1; }
    # Rows: | vCPUs | primitive | rounds | ipiq rt/s | stock rt/s | ratio | ... | p50 speed-up | ...
    while IFS='|' read -r _ smp prim _ _ _ ratio _ _ speed _; do
        smp=${smp// /} prim=${prim// /} ratio=${ratio// /} speed=${speed// /}
        add "wakeup $prim: ipiq / stock round trips/s, $smp vCPUs" "${ratio%x}"
        add "wakeup $prim: stock p50 / ipiq p50, $smp vCPUs" "${speed%x}"
    done < <(grep -E '^\| [0-9]+ \| (condvar|park) \|' "$summary")
    echo "run $run: wakeup done ($((SECONDS - start)) s)"
done

if [ -n "${QEMU_ICOUNT_SHIFT:-}" ]; then
    mode="repeatable: -icount shift=$QEMU_ICOUNT_SHIFT,sleep=off -accel tcg,one-insn-per-tb=on -rtc base=2026-01-01T00:00:00,clock=vm"
else
    mode="normal: multi-threaded TCG, emulated time follows the host"
fi
header="| figure |"
rule="|---|"
for run in $(seq 1 "$runs"); do
    header+=" $([ "${#phases[@]}" = 0 ] && echo "run $run" || echo "phase ${phases[$((run - 1))]}") |"
    rule+="---:|"
done
{
    echo "<<<report Headline guest ratios over $runs runs ($mode)"
    echo "QEMU $(qemu-system-x86_64 --version | head -n 1 | awk '{ print $4 }'), cpu $model, host $(nproc) cores; wakeup: $wakeup_rounds round trips per primitive."
    echo "Spread: (max - min) / median of the runs."
    echo "$header median | spread |"
    echo "$rule---:|---:|"
    for n in "${names[@]}"; do
        tr ' ' '\n' <<<"${vals[$n]}" | grep . | awk -v name="$n" '
            { v[NR] = $1; row = row sprintf(" %s |", $1) }
            END {
                n = NR
                for (i = 1; i <= n; i++) s[i] = v[i]
                for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (s[j] < s[i]) { t = s[i]; s[i] = s[j]; s[j] = t }
                med = (n % 2) ? s[(n + 1) / 2] : (s[n / 2] + s[n / 2 + 1]) / 2
                spread = (med != 0) ? (s[n] - s[1]) / med * 100 : 0
                printf "| %s |%s %.3g | %.1f%% |\n", name, row, med, spread
            }'
    done
    echo ">>>report"
} | tee "$out/spread.md"
