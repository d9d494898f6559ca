#!/usr/bin/env bash
# One table comparing the patched and the stock kernel per vCPU count, from rayon-work logs.
#   rayon-summary.sh LOG...
# Reads the `rayon-result key=value ...` lines the app prints (one per workload) and prints a
# report block (<<<report ... >>>report) on stdout. A log without result lines shows as
# "no result". Needs only bash (no awk, sed or bc: device-scaling.sh runs it on bare machines);
# elsewhere the same table is `cargo xtask report rayon LOG...` (xtask/src/report/rayon.rs).
set -euo pipefail

[ $# -ge 1 ] || { echo "usage: $0 LOG..." >&2; exit 2; }

# Milliseconds with one decimal ("1241.0") as integer tenths; empty if not a number.
tenths() {
    if [[ "$1" =~ ^([0-9]+)\.([0-9])$ ]]; then
        echo $((10#${BASH_REMATCH[1]} * 10 + 10#${BASH_REMATCH[2]}))
    elif [[ "$1" =~ ^[0-9]+$ ]]; then
        echo $((10#$1 * 10))
    fi
}

# a / b with two decimals (a, b in the same unit, b > 0), rounded; "-" when either is missing.
ratio() {
    local a b q
    a="$(tenths "$1")" b="$(tenths "$2")"
    if [ -z "$a" ] || [ -z "$b" ] || [ "$b" -le 0 ]; then
        echo "-"
        return
    fi
    q=$(((a * 1000 / b + 5) / 10))
    printf '%d.%02d\n' $((q / 100)) $((q % 100))
}

declare -A result       # kernel,vcpus,workload -> "seq par messages ipis avoided check"
declare -A seen_vcpus   # vcpus -> 1
declare -A failed_runs  # kernel,vcpus -> 1 (a log without any result line)
declare -A irqs         # kernel,vcpus,interrupt name -> count summed over cores
declare -A irq_seen     # kernel,vcpus -> 1 (the log has the kernel's interrupt counters)
kernels=()

for log in "$@"; do
    found=0 in_irqs=0 cur_k="" cur_v=""
    name="${log##*/}"
    name="${name%.log}"
    if [[ "$name" =~ -(patched|stock)-([0-9]+)$ ]]; then
        cur_k="${BASH_REMATCH[1]}" cur_v="${BASH_REMATCH[2]}"
    fi
    while IFS= read -r line || [ -n "$line" ]; do
        line="${line%$'\r'}"
        # The kernel's interrupt counters, printed at shutdown: "[core][name]: count".
        if [ "$line" = "Number of interrupts" ]; then
            in_irqs=1
            continue
        fi
        if [ "$in_irqs" = 1 ] && [[ "$line" =~ ^\[[0-9]+\]\[([^]]+)\]:\ ([0-9]+)$ ]]; then
            key="$cur_k,$cur_v,${BASH_REMATCH[1]}"
            irqs["$key"]=$((${irqs["$key"]:-0} + BASH_REMATCH[2]))
            irq_seen["$cur_k,$cur_v"]=1
            continue
        fi
        [[ "$line" == rayon-result\ * ]] || continue
        declare -A kv=()
        read -r -a words <<<"$line"
        for word in "${words[@]}"; do
            [[ "$word" == *=* ]] && kv["${word%%=*}"]="${word#*=}"
        done
        k="${kv[kernel]:-?}" v="${kv[vcpus]:-?}" w="${kv[workload]:-?}"
        cur_k="$k" cur_v="$v"
        result["$k,$v,$w"]="${kv[seq_ms]:--} ${kv[par_ms]:--} ${kv[messages]:--} ${kv[ipis]:--} ${kv[avoided]:--} ${kv[check]:--}"
        seen_vcpus["$v"]=1
        [[ " ${kernels[*]} " == *" $k "* ]] || kernels+=("$k")
        found=1
        unset kv
    done <"$log"
    if [ "$found" = 0 ] && [[ "$name" =~ -(patched|stock)-([0-9]+)$ ]]; then
        failed_runs["${BASH_REMATCH[1]},${BASH_REMATCH[2]}"]=1
        seen_vcpus["${BASH_REMATCH[2]}"]=1
    fi
done

# vCPU counts in numeric order (bash only: insertion into a sorted list).
vcpus_sorted=()
for v in "${!seen_vcpus[@]}"; do
    placed=0 next=()
    for u in "${vcpus_sorted[@]}"; do
        if [ "$placed" = 0 ] && [[ "$v" =~ ^[0-9]+$ ]] && [ "$v" -lt "$u" ]; then next+=("$v"); placed=1; fi
        next+=("$u")
    done
    [ "$placed" = 1 ] || next+=("$v")
    vcpus_sorted=("${next[@]}")
done

cell() { # kernel vcpus workload field-index
    local r="${result["$1,$2,$3"]:-}"
    if [ -z "$r" ]; then
        [ -n "${failed_runs["$1,$2"]:-}" ] && echo "no result" || echo "-"
        return
    fi
    local f
    read -r -a f <<<"$r"
    echo "${f[$4]}"
}

echo "<<<report rayon-work: patched (ipiq) against stock kernel, per vCPU count"
echo "ms are emulated time (QEMU TCG); speedup = sequential / parallel in the same boot;"
echo "par. stock/patched > 1 means the patched kernel ran the parallel part faster;"
echo "IPIs, messages and avoided are ipiq's counters during the parallel part (stock has none: n/a)."
echo
echo "| vCPUs | workload | patched seq ms | patched par ms | patched speedup | stock seq ms | stock par ms | stock speedup | par. stock/patched | patched messages | patched IPIs | patched avoided | stock IPIs | check |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for v in "${vcpus_sorted[@]}"; do
    for w in sort stencil; do
        ps="$(cell patched "$v" "$w" 0)" pp="$(cell patched "$v" "$w" 1)"
        ss="$(cell stock "$v" "$w" 0)" sp="$(cell stock "$v" "$w" 1)"
        checks="patched $(cell patched "$v" "$w" 5), stock $(cell stock "$v" "$w" 5)"
        echo "| $v | $w | $ps | $pp | $(ratio "$ps" "$pp") | $ss | $sp | $(ratio "$ss" "$sp") | $(ratio "$sp" "$pp") | $(cell patched "$v" "$w" 2) | $(cell patched "$v" "$w" 3) | $(cell patched "$v" "$w" 4) | $(cell stock "$v" "$w" 3) | $checks |"
    done
done
echo
echo "IPIs taken during the whole boot (boot, sequential and parallel parts), from the kernel's own"
echo "interrupt counters printed at shutdown, summed over cores (IPIs that arrive while one is pending"
echo "merge into one): ipiq = ipiq's vector 122 (the patched kernel sends its scheduler wake-ups there),"
echo "wakeup = Hermit's vector 121, TLB = Hermit's TLB-flush vector 112."
echo
echo "| vCPUs | patched ipiq | patched wakeup | patched TLB | patched total | stock wakeup | stock TLB | stock total |"
echo "|---|---|---|---|---|---|---|---|"
irq() { # kernel vcpus name
    if [ -z "${irq_seen["$1,$2"]:-}" ]; then echo "-"; else echo "${irqs["$1,$2,$3"]:-0}"; fi
}
irq_total() { # kernel vcpus
    if [ -z "${irq_seen["$1,$2"]:-}" ]; then echo "-"; return; fi
    echo $((${irqs["$1,$2,ipiq"]:-0} + ${irqs["$1,$2,Wakeup"]:-0} + ${irqs["$1,$2,TLB flush"]:-0}))
}
for v in "${vcpus_sorted[@]}"; do
    echo "| $v | $(irq patched "$v" ipiq) | $(irq patched "$v" Wakeup) | $(irq patched "$v" "TLB flush") | $(irq_total patched "$v") | $(irq stock "$v" Wakeup) | $(irq stock "$v" "TLB flush") | $(irq_total stock "$v") |"
done
echo ">>>report"
