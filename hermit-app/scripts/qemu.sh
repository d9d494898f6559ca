#!/usr/bin/env bash
# Boot a Hermit image under QEMU (TCG) and turn the guest's exit into this script's status.
#   qemu.sh LOADER IMAGE SMP CPU MEM TIMEOUT_S [-- extra QEMU arguments]
# With isa-debug-exit, the kernel's shutdown writes 1 (success) or 0 (failure) to port 0xf4 and
# QEMU exits with (value << 1) | 1: 3 means the application exited 0; 1 means it failed or
# panicked (the loader's panic handler writes 0 too). Exit status: 0 on success, 1 otherwise.
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

status=0
# QEMU's own messages (stderr) go through a file as well, so that its refusal to start is told
# apart from the guest's failure (both exit 1).
errors=$(mktemp)
trap 'rm -f "$errors"' EXIT
timeout --foreground -k 5 "$limit" qemu-system-x86_64 \
    -cpu "$cpu" -smp "$smp" -m "$mem" \
    -display none -serial stdio -nic none -no-reboot \
    -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
    -kernel "$loader" -initrd "$image" "$@" </dev/null 2> >(tee "$errors" >&2) || status=$?
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
