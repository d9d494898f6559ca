#!/usr/bin/env bash
# Boot a Hermit image under QEMU (TCG) and turn the guest's exit into this script's status.
#   qemu.sh LOADER IMAGE SMP CPU MEM TIMEOUT_S [-- extra QEMU arguments]
# With isa-debug-exit, the kernel's shutdown writes 1 (success) or 0 (failure) to port 0xf4 and
# QEMU exits with (value << 1) | 1: 3 means the application exited 0; 1 means it failed or
# panicked (the loader's panic handler writes 0 too). Exit status: 0 on success, 1 otherwise.
# QEMU_ICOUNT_SHIFT=N (set by `make ... REPEATABLE=1`): repeatable mode, see repeatable_args;
# QEMU_ICOUNT_PHASE=n (ICOUNT_PHASE=n) shifts its starting phase.
set -euo pipefail
. "$(dirname "$0")/common.sh"

loader="$1" image="$2" smp="$3" cpu="$4" mem="$5" limit="$6"
shift 6
[ "${1:-}" = "--" ] && shift
check_boot_args "$smp" "$cpu" "$mem" "$limit"

for f in "$loader" "$image"; do
    [ -f "$f" ] || { echo "error: $f does not exist (run make image loader)" >&2; exit 1; }
done
command -v qemu-system-x86_64 >/dev/null || { echo "error: qemu-system-x86_64 not found" >&2; exit 1; }

# Repeatable mode: QEMU counts instructions (-icount, single-threaded round-robin TCG; each guest
# instruction advances virtual time by 2^N ns, sleep=off: idle time is skipped, not slept), so
# emulated time no longer follows the host's load. -accel tcg,one-insn-per-tb=on is needed with
# x2APIC: QEMU 10.0 translates RDMSR without marking it an I/O instruction, so the kernel's read of
# the APIC timer's current count (MSR 0x839, Hermit's calibrate_timer) in the middle of a
# translation block stops QEMU with "Bad icount read"; with one instruction per block every
# instruction is the last of its block, where virtual-clock reads are allowed.
# -rtc ...,clock=vm: the CMOS clock on virtual time from a fixed date; on the host's clock, Hermit's
# boot polls the RTC's update-in-progress flag for a host-dependent number of instructions, and
# every later figure shifts with it. With all three, two boots write identical serial logs.
# The guest also reads the multiboot command line, which starts with the -kernel path: QEMU runs
# from a scratch folder holding links named like the loader and the image, so the same boot reads
# the same bytes from any checkout (a longer path is a few hundred instructions more, and shifts
# the figures as the RTC did).
# Scratch files (QEMU's stderr, the repeatable mode's folder of links) go when the script ends.
errors=$(mktemp)
scratch=""
trap 'rm -rf "$errors" ${scratch:+"$scratch"}' EXIT
repeatable_args=()
if [ -n "${QEMU_ICOUNT_SHIFT:-}" ]; then
    repeatable_args=(-icount "shift=$QEMU_ICOUNT_SHIFT,sleep=off" -accel tcg,one-insn-per-tb=on
        -rtc base=2026-01-01T00:00:00,clock=vm)
    echo "qemu.sh: repeatable mode: ${repeatable_args[*]}"
    scratch="$(mktemp -d)"
    # QEMU_ICOUNT_PHASE=n (make ICOUNT_PHASE=n): the loader's link name gets 8n more characters,
    # so the guest starts a few hundred instructions later: another deterministic sample of a
    # figure that depends on where the vCPUs' hand-offs fall (bench.mk's SPREAD_PHASES).
    name="$(basename "$loader")$(printf '%*s' $((8 * ${QEMU_ICOUNT_PHASE:-0})) '' | tr ' ' _)"
    ln -s "$(realpath "$loader")" "$scratch/$name"
    [ "$(basename "$image")" = "$name" ] || ln -s "$(realpath "$image")" "$scratch/$(basename "$image")"
    loader="$name" image="$(basename "$image")"
    cd "$scratch"
fi

status=0
# QEMU's own messages (stderr) go through a file as well, so that its refusal to start is told
# apart from the guest's failure (both exit 1).
timeout --foreground -k 5 "$limit" qemu-system-x86_64 \
    -cpu "$cpu" -smp "$smp" -m "$mem" \
    -display none -serial stdio -nic none -no-reboot \
    -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
    -kernel "$loader" -initrd "$image" "${repeatable_args[@]}" "$@" </dev/null 2> >(tee "$errors" >&2) || status=$?
# The tee above may still be writing: wait for it before reading the file.
wait
if [ "$status" != 3 ] && qemu_refused "$errors"; then
    exit 1
fi

case "$status" in
    3) exit 0 ;;
    1) echo "error: the guest reported failure (QEMU exit 1: the application exited non-zero, or the kernel or loader panicked)" >&2 ;;
    124 | 137) echo "error: QEMU did not finish within $limit s (guest hang?); killed" >&2 ;;
    0) echo "error: QEMU exited 0: the guest stopped without isa-debug-exit (reset or triple fault?)" >&2 ;;
    *) echo "error: QEMU exited with status $status" >&2 ;;
esac
exit 1
