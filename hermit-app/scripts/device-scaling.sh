#!/usr/bin/env bash
# rayon-work scaling on a machine with enough host cores for one host thread per vCPU:
# QEMU's multi-threaded TCG (-accel tcg,thread=multi), patched and stock kernel, SMP=1,2,4,8,16.
#   device-scaling.sh PATCHED_IMAGE STOCK_IMAGE LOADER QEMU_BINARY OUT_DIR
# The images and the loader are prebuilt here:
#   make image APP=rayon-work KERNEL=patched && make image APP=rayon-work KERNEL=stock && make loader
#   hermit-app/build/kernel-{patched,stock}/apps/x86_64-unknown-hermit/release/rayon-work
#   hermit-app/build/loader/x86_64-unknown-none/release/ipiq-loader
# Needs nothing else but bash, coreutils and the QEMU binary (with the shared libraries it links;
# QEMU_DATADIR names its firmware directory, passed as -L, if it is not where the binary expects).
# Writes OUT_DIR/rayon-<kernel>-<smp>.log, OUT_DIR/rayon-summary.md (one table, both kernels per
# vCPU count) and OUT_DIR/machine.txt. Exit status 1 if a boot failed or a result was wrong.
# Environment: SMP_LIST ("1 2 4 8 16"), MEM (1G), CPU (qemu64,+x2apic,+fsgsbase), TIMEOUT (120 s
# per boot), BUDGET (total seconds, 0 = none: no boot starts after it and each boot's limit is cut
# to what is left; boots go by vCPU count, both kernels each), GUEST_ARGS ("": the full workload;
# "smoke" for a quick try). Without a QEMU there, make one here: cargo xtask bundle-qemu --out DIR.
# RAYON_QEMU_DEBUG=1: a boot that hangs ends with every vCPU's symbolized RIP in its log
# (scripts/qemu-debug.sh; gdb backtraces too where gdb exists). For a machine without nm, put
# each image's symbols beside it first: nm -n -C --defined-only IMAGE >IMAGE.nm
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

[ $# -eq 5 ] || { echo "usage: $0 PATCHED_IMAGE STOCK_IMAGE LOADER QEMU_BINARY OUT_DIR" >&2; exit 2; }
patched="$1" stock="$2" loader="$3" qemu="$4" out="$5"
for f in "$patched" "$stock" "$loader"; do
    [ -f "$f" ] || { echo "error: $f does not exist" >&2; exit 2; }
done
[ -x "$qemu" ] || { echo "error: $qemu is not an executable QEMU binary" >&2; exit 2; }
smps="${SMP_LIST:-1 2 4 8 16}" mem="${MEM:-1G}" cpu="${CPU:-qemu64,+x2apic,+fsgsbase}"
limit="${TIMEOUT:-120}" guest_args="${GUEST_ARGS:-}" budget="${BUDGET:-0}"
[[ "$budget" =~ ^[0-9]+$ ]] || { echo "error: BUDGET must be a number of seconds" >&2; exit 2; }
[ "$budget" = 0 ] || export RAYON_DEADLINE=$(($(date +%s) + budget))

# qemu.sh runs qemu-system-x86_64 from PATH: put the given binary first.
bin="$(mktemp -d)"
trap 'rm -rf "$bin"' EXIT
ln -s "$(cd "$(dirname "$qemu")" && pwd)/$(basename "$qemu")" "$bin/qemu-system-x86_64"
export PATH="$bin:$PATH"
version="$(qemu-system-x86_64 --version)" || { echo "error: $qemu does not run (missing libraries?)" >&2; exit 2; }

qemu_args=(-accel tcg,thread=multi)
[ -n "${QEMU_DATADIR:-}" ] && qemu_args+=(-L "$QEMU_DATADIR")

mkdir -p "$out"
model=unknown
while IFS= read -r line; do
    if [[ "$line" == "model name"* ]]; then model="${line#*: }"; break; fi
done </proc/cpuinfo
{
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "host CPU: $model, $(nproc) cores"
    echo "QEMU: ${version%%$'\n'*}, ${qemu_args[*]}"
    echo "guest: CPU $cpu, $mem, vCPUs $smps${guest_args:+, args: $guest_args}; per boot ${limit} s${RAYON_DEADLINE:+, budget $budget s}"
} | tee "$out/machine.txt"

"$here/guest-rayon.sh" "$loader" "$cpu" "$mem" "$limit" "$out" rayon "$smps" "$guest_args" \
    patched="$patched" stock="$stock" -- "${qemu_args[@]}"
