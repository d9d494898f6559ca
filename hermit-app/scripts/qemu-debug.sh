#!/usr/bin/env bash
# Boot a Hermit image under QEMU (TCG) with QEMU's gdb stub and monitor on loopback; if the guest
# has not exited within the timeout, print every vCPU's state before killing it:
#   1. from QEMU's monitor (`info registers -a`): each vCPU's RIP, symbolized from the image's
#      symbol table, and whether its interrupts are on (needs only bash and binutils' nm);
#   2. from gdb attached to the stub: `info threads` and `thread apply all bt`, with the image as
#      symbol file at the address the loader placed it.
#   qemu-debug.sh LOADER IMAGE SMP CPU MEM TIMEOUT_S [-- extra QEMU arguments]
# The image is a static PIE: the loader prints "loading at 0x..." on the serial console, and that
# base is gdb's symbol offset (`symbol-file -o BASE IMAGE`).
# Environment: QEMU_DEBUG_OUT (folder for serial.log, registers.txt and backtrace.txt;
# default: a new folder under /tmp), QEMU_DEBUG_BT_DEPTH (frames per vCPU, 40),
# QEMU_DEBUG_SYMBOLS (the image's symbols as `nm -n -C --defined-only IMAGE` prints them, for a
# machine without nm; default IMAGE.nm where that file exists), QEMU_DEBUG_GDB_HOOK (a gdb
# command file run against the guest once the loader has placed the image, for fault injection:
# symbols, `$base` and the connection are set up before it; it should end by detaching; see
# `cargo xtask preempt-inject`). Without gdb (a machine that cannot install it) step 2 is skipped, with a
# warning; the monitor's view needs only bash.
# Exit status: 0 the guest exited successfully, 1 it failed or QEMU could not run, 2 it hung (the
# state above was printed).
set -euo pipefail
. "$(dirname "$0")/common.sh"

loader="$1" image="$2" smp="$3" cpu="$4" mem="$5" limit="$6"
shift 6
[ "${1:-}" = "--" ] && shift

for f in "$loader" "$image"; do
    [ -f "$f" ] || { echo "error: $f does not exist (run make image loader)" >&2; exit 1; }
done
check_boot_args "$smp" "$cpu" "$mem" "$limit"
command -v qemu-system-x86_64 >/dev/null || { echo "error: qemu-system-x86_64 not found (make qemu-install)" >&2; exit 1; }
[ -n "${QEMU_DEBUG_SYMBOLS:-}" ] || [ ! -f "$image.nm" ] || QEMU_DEBUG_SYMBOLS="$image.nm"
have_gdb=1
command -v gdb >/dev/null || { have_gdb=0; echo "warning: gdb not found (make gdb-install): a hang gets the monitor's RIPs only" >&2; }
[ -z "${QEMU_DEBUG_SYMBOLS:-}" ] || [ -f "$QEMU_DEBUG_SYMBOLS" ] || { echo "error: QEMU_DEBUG_SYMBOLS=$QEMU_DEBUG_SYMBOLS does not exist" >&2; exit 1; }
depth="${QEMU_DEBUG_BT_DEPTH:-40}"
out="${QEMU_DEBUG_OUT:-$(mktemp -d /tmp/qemu-debug.XXXXXX)}"
mkdir -p "$out"
log="$out/serial.log"
: >"$log"

# Two free loopback ports (gdb stub, monitor): a port that accepts a connection is taken.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_port() {
    local p
    for _ in $(seq 1 200); do
        p=$((20000 + RANDOM % 20000))
        if [ "$p" != "${2:-}" ] && port_free "$p"; then
            echo "$p"
            return 0
        fi
    done
    echo "error: no free loopback port found" >&2
    return 1
}
gdb_port=$(pick_port gdb)
mon_port=$(pick_port monitor "$gdb_port")

# Repeatable mode (QEMU_ICOUNT_SHIFT, make REPEATABLE=1): the same QEMU options as qemu.sh and cargo xtask qemu.
repeatable_args=()
[ -z "${QEMU_ICOUNT_SHIFT:-}" ] || repeatable_args=(-icount "shift=$QEMU_ICOUNT_SHIFT,sleep=off" -accel tcg,one-insn-per-tb=on
        -rtc base=2026-01-01T00:00:00,clock=vm)

qemu-system-x86_64 \
    -cpu "$cpu" -smp "$smp" -m "$mem" \
    -display none -serial stdio -nic none -no-reboot \
    -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
    -gdb "tcp:127.0.0.1:$gdb_port" -monitor "tcp:127.0.0.1:$mon_port,server,nowait" \
    -kernel "$loader" -initrd "$image" "${repeatable_args[@]}" "$@" </dev/null >"$log" 2>&1 &
qemu=$!
tail -n +1 -f --pid="$qemu" "$log" &
tailer=$!
cleanup() {
    kill "$qemu" 2>/dev/null || true
    wait "$qemu" 2>/dev/null || true
    kill "$tailer" 2>/dev/null || true
    wait "$tailer" 2>/dev/null || true
}
trap cleanup EXIT
echo "==> qemu-debug: $smp vCPUs, timeout $limit s; gdb stub 127.0.0.1:$gdb_port, monitor 127.0.0.1:$mon_port; files in $out"

# The load base the loader prints on the serial console ("loading at 0x...").
load_base() { tr -d '\r' <"$log" | sed -n 's/.*loading at \(0x[0-9a-fA-F]*\).*/\1/p' | head -n 1; }
gdb_prelude() {
    cat <<EOF
set pagination off
set confirm off
set width 0
set architecture i386:x86-64
symbol-file -o $1 $image
set \$base = $1
target remote 127.0.0.1:$gdb_port
EOF
}

deadline=$((SECONDS + limit))
hook=""
while kill -0 "$qemu" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
    if [ -n "${QEMU_DEBUG_GDB_HOOK:-}" ] && [ -z "$hook" ] && [ -n "$(load_base)" ]; then
        { gdb_prelude "$(load_base)"; cat "$QEMU_DEBUG_GDB_HOOK"; } >"$out/gdb-hook-commands"
        gdb -batch -nx -x "$out/gdb-hook-commands" >"$out/gdb-hook.log" 2>&1 &
        hook=$!
        echo "==> qemu-debug: gdb hook $QEMU_DEBUG_GDB_HOOK attached (log: $out/gdb-hook.log)"
    fi
    sleep 0.2
done
if [ -n "$hook" ]; then
    # A hook still attached (its breakpoint never hit) would hold the stub: end it.
    kill "$hook" 2>/dev/null || true
    wait "$hook" 2>/dev/null || true
    grep -v -e '^warning: No executable' -e '^determining executable' "$out/gdb-hook.log" | sed 's/^/    hook: /' || true
fi
if ! kill -0 "$qemu" 2>/dev/null; then
    status=0
    wait "$qemu" || status=$?
    sleep 0.3 # let tail print the last lines
    case "$status" in
        3) echo "==> qemu-debug: the guest exited successfully within $limit s"; exit 0 ;;
        1) echo "error: the guest reported failure (QEMU exit 1)" >&2 ;;
        0) echo "error: QEMU exited 0: the guest stopped without isa-debug-exit (reset or triple fault?)" >&2 ;;
        *) echo "error: QEMU exited with status $status (see $log)" >&2 ;;
    esac
    exit 1
fi
sleep 0.3
echo
echo "==> qemu-debug: the guest has not exited after $limit s; every vCPU's state follows"

# The load base the loader printed; without it (a hang before the loader placed the image) the
# symbols stay unrelocated and only the loader's own addresses would match.
base=$(load_base)
if [ -z "$base" ]; then
    echo "warning: no 'loading at' line from the loader in the serial log: symbols not relocated" >&2
    base=0x0
fi
echo "image: $image, loaded at $base"

# 1. The monitor's view: RIP and RFLAGS of every vCPU, symbolized with nm. The VM is stopped
# first: under TCG a running vCPU's registers are written back only when it leaves its
# translated code, so a running vCPU's RIP would be stale. gdb finds it stopped.
regs="$out/registers.txt"
{
    exec 4<>"/dev/tcp/127.0.0.1/$mon_port"
    printf 'stop\ninfo registers -a\n' >&4
    timeout 3 cat <&4 || true
    exec 4>&-
} >"$regs" 2>/dev/null || true
syms="$out/symbols.txt"
if [ -n "${QEMU_DEBUG_SYMBOLS:-}" ]; then
    awk '$2 ~ /^[tTwW]$/' "$QEMU_DEBUG_SYMBOLS" >"$syms"
elif command -v nm >/dev/null; then
    nm -n -C --defined-only "$image" 2>/dev/null | awk '$2 ~ /^[tTwW]$/' >"$syms" || true
else
    echo "warning: no nm and no QEMU_DEBUG_SYMBOLS: RIPs stay unsymbolized" >&2
    : >"$syms"
fi
echo
echo "--- RIP per vCPU (QEMU monitor, symbols from nm) ---"
tr -d '\r' <"$regs" | awk -v base="$base" -v symfile="$syms" '
    function hex(s,   i, c, v) { v = 0; s = tolower(s); sub(/^0x/, "", s)
        for (i = 1; i <= length(s); i++) { c = index("0123456789abcdef", substr(s, i, 1)); if (c == 0) break; v = v * 16 + c - 1 }
        return v }
    BEGIN { n = 0; b = hex(base)
        while ((getline line < symfile) > 0) { split(line, f, " "); addr[n] = hex(f[1]); name[n] = substr(line, index(line, f[3])); n++ } }
    function symbolize(v,   lo, hi, mid, off) { off = v - b
        if (n == 0 || off < addr[0]) return "?"
        lo = 0; hi = n - 1
        while (lo < hi) { mid = int((lo + hi + 1) / 2); if (addr[mid] <= off) lo = mid; else hi = mid - 1 }
        return sprintf("%s+0x%x", name[lo], off - addr[lo]) }
    /^CPU#[0-9]+/ { cpu = $1; sub(/^CPU#/, "", cpu) }
    /RIP=/ { match($0, /RIP=[0-9a-fA-F]+/); rip = substr($0, RSTART + 4, RLENGTH - 4)
        match($0, /RFL=[0-9a-fA-F]+/); rfl = substr($0, RSTART + 4, RLENGTH - 4)
        printf "vCPU %s: RIP %s  interrupts %s  %s\n", cpu, rip, (int(hex(rfl) / 512) % 2 ? "on " : "off"), symbolize(hex(rip)); seen++ }
    END { if (!seen) print "(no answer from the monitor)" }'

# 2. gdb's view: threads (one per vCPU) and their backtraces.
if [ "$have_gdb" = 0 ]; then
    echo
    echo "==> qemu-debug: guest hung (no exit within $limit s); no gdb here, so no backtraces; files in $out"
    exit 2
fi
cmds="$out/gdb-commands"
{ gdb_prelude "$base"; cat <<EOF; } >"$cmds"
echo \n--- info threads (gdb: thread N is vCPU N-1) ---\n
info threads
echo \n--- thread apply all bt $depth ---\n
thread apply all bt $depth
detach
EOF
echo
timeout 60 gdb -batch -nx -x "$cmds" 2>&1 | grep -v -e '^warning: No executable has been specified' \
    -e '^determining executable automatically' -e '^\[Inferior 1 (process 1) detached\]' \
    | tee "$out/backtrace.txt" || echo "error: gdb did not finish (see $out/backtrace.txt)" >&2
echo
echo "==> qemu-debug: guest hung (no exit within $limit s); serial log, registers and backtraces in $out"
exit 2
