#!/usr/bin/env bash
# Boot rayon-work on each kernel and vCPU count, keep each log, check it, print one summary.
#   guest-rayon.sh LOADER CPU MEM TIMEOUT_S LOG_DIR PREFIX "SMP..." "GUEST_ARGS" KERNEL=IMAGE... [-- QEMU_ARGS...]
# Each boot: qemu.sh LOADER IMAGE SMP CPU MEM TIMEOUT_S, with GUEST_ARGS (e.g. "smoke") passed
# to the app through the kernel command line; its output goes to the terminal and to
# LOG_DIR/PREFIX-KERNEL-SMP.log. A boot passes if the app exited 0 (every result correct), printed
# its report block, and saw SMP vCPUs and SMP rayon threads. Then the summary table of every log
# (rayon-summary.sh) is printed and written to LOG_DIR/PREFIX-summary.md.
# Exit status 1 if any boot failed or was skipped (RAYON_DEADLINE, below). Needs only bash,
# coreutils and QEMU: device-scaling.sh runs it on bare machines; make guest-rayon runs the same
# boots and checks through the xtask (cargo xtask rayon).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

[ $# -ge 9 ] || { echo "usage: $0 LOADER CPU MEM TIMEOUT_S LOG_DIR PREFIX \"SMP...\" \"GUEST_ARGS\" KERNEL=IMAGE... [-- QEMU_ARGS...]" >&2; exit 2; }
loader="$1" cpu="$2" mem="$3" limit="$4" log_dir="$5" prefix="$6" smps="$7" guest_args="$8"
shift 8
images=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    [[ "$1" == ?*=?* ]] || { echo "error: '$1' is not KERNEL=IMAGE" >&2; exit 2; }
    [ -f "${1#*=}" ] || { echo "error: image ${1#*=} does not exist" >&2; exit 2; }
    images+=("$1")
    shift
done
[ "${1:-}" = "--" ] && shift
qemu_args=("$@")
[ ${#images[@]} -ge 1 ] || { echo "error: no KERNEL=IMAGE given" >&2; exit 2; }
for n in $smps; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "error: vCPU count '$n' is not a positive integer" >&2; exit 2; }
done

# Is there a line in FILE equal to (or, with prefix=1, starting with) TEXT? Bash only.
has_line() {
    local file="$1" text="$2" prefix="${3:-0}" line
    while IFS= read -r line || [ -n "$line" ]; do
        line="${line%$'\r'}"
        if [ "$line" = "$text" ] || { [ "$prefix" = 1 ] && [[ "$line" == "$text"* ]]; }; then
            return 0
        fi
    done <"$file"
    return 1
}

# RAYON_DEADLINE (seconds since the epoch, optional): start no boot after it, and cut each boot's
# time limit to what is left, so a caller with a fixed time budget still gets whole logs.
# RAYON_QEMU_DEBUG=1: boot through qemu-debug.sh instead of qemu.sh, so a boot that hangs ends
# with every vCPU's symbolized RIP (and, where gdb exists, its backtrace) in its log, the files
# in LOG_DIR/PREFIX-KERNEL-SMP.debug/ (QEMU_DEBUG_SYMBOLS, if set, is passed on).
deadline="${RAYON_DEADLINE:-}"
[ -z "$deadline" ] || [[ "$deadline" =~ ^[0-9]+$ ]] || { echo "error: RAYON_DEADLINE must be seconds since the epoch" >&2; exit 2; }

mkdir -p "$log_dir"
logs=() failed=() skipped=()
# vCPU count first, then kernel: the two kernels' boots for one vCPU count come one after the other.
for n in $smps; do
    for entry in "${images[@]}"; do
        kernel="${entry%%=*}" image="${entry#*=}"
        log="$log_dir/$prefix-$kernel-$n.log"
        boot_limit="$limit"
        if [ -n "$deadline" ]; then
            left=$((deadline - $(date +%s)))
            if [ "$left" -lt 10 ]; then
                echo "==> rayon-work: $kernel kernel, $n vCPUs: skipped (RAYON_DEADLINE reached)"
                skipped+=("$kernel/$n")
                continue
            fi
            [ "$left" -lt "$boot_limit" ] && boot_limit="$left"
        fi
        echo "==> rayon-work: $kernel kernel, $n vCPUs${guest_args:+, args: $guest_args} -> $log"
        extra=("${qemu_args[@]}")
        [ -n "$guest_args" ] && extra+=(-append "-- $guest_args")
        start=$(date +%s%N)
        status=0
        if [ "${RAYON_QEMU_DEBUG:-0}" = 1 ]; then
            QEMU_DEBUG_OUT="$log_dir/$prefix-$kernel-$n.debug" "$here/qemu-debug.sh" "$loader" "$image" "$n" "$cpu" "$mem" \
                "$boot_limit" -- "${extra[@]}" >"$log" 2>&1 || status=$?
        else
            "$here/qemu.sh" "$loader" "$image" "$n" "$cpu" "$mem" "$boot_limit" -- "${extra[@]}" >"$log" 2>&1 || status=$?
        fi
        took=$((($(date +%s%N) - start) / 1000000))
        while IFS= read -r line; do
            line="${line%$'\r'}"
            case "$line" in "| "* | "<<<report"* | ">>>report" | rayon-work:* | error:*) echo "    $line" ;; esac
        done <"$log"
        problems=()
        [ "$status" = 0 ] || problems+=("the boot failed (see the log)")
        has_line "$log" "<<<report" 1 || problems+=("no report block")
        has_line "$log" ">>>report" || problems+=("report block not closed")
        has_line "$log" "rayon-work: kernel $kernel, vCPUs $n, rayon threads $n," 1 ||
            problems+=("the app did not see $n vCPUs and $n rayon threads on the $kernel kernel")
        logs+=("$log")
        if [ ${#problems[@]} -gt 0 ]; then
            for p in "${problems[@]}"; do echo "    FAIL: $p"; done
            failed+=("$kernel/$n")
        else
            echo "    ok ($((took / 1000)).$((took % 1000 / 100)) s host wall time)"
        fi
    done
done

summary="$log_dir/$prefix-summary.md"
"$here/rayon-summary.sh" "${logs[@]}" >"$summary"
echo
while IFS= read -r line; do echo "$line"; done <"$summary"
echo "==> logs: $log_dir/$prefix-*.log, summary: $summary"
if [ ${#skipped[@]} -gt 0 ]; then
    echo "error: not run for lack of time: ${skipped[*]}" >&2
fi
if [ ${#failed[@]} -gt 0 ]; then
    echo "error: rayon-work failed on: ${failed[*]}" >&2
fi
[ ${#failed[@]} -eq 0 ] && [ ${#skipped[@]} -eq 0 ]
