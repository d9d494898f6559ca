# Shared helpers for the image scripts (sourced, not run).

# A cargo started from make inside another cargo (or from a shell with RUSTFLAGS set) would
# inherit the outer build's settings; the nested builds here must see only their own.
clean_cargo_env() {
    local v
    for v in $(compgen -e); do
        case "$v" in
            CARGO_HOME | RUSTUP_HOME) ;;
            CARGO* | RUSTC* | RUSTFLAGS | RUSTDOC* | RUSTUP_TOOLCHAIN | __CARGO*) unset "$v" ;;
        esac
    done
}

# The llvm-tools binaries (llvm-nm, llvm-objcopy, llvm-ar) of a toolchain.
llvm_bin_dir() {
    echo "$(rustup run "$1" rustc --print sysroot)/lib/rustlib/x86_64-unknown-linux-gnu/bin"
}

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# The checks every boot log gets: sets `out` (the log without CRs), defines `fail` (prints a
# reason and counts it in `failures`), and checks QEMU's verdict, the kernel's 'exit status 0'
# and the APIC mode it reports.   check_boot LOG APIC_MODE QEMU_OK
check_boot() {
    out="$(tr -d '\r' <"$1")"
    failures=0
    fail() { echo "    - $*"; failures=$((failures + 1)); }
    [ "$3" = 0 ] || fail "QEMU did not report a successful exit (see qemu.sh's message in the log)"
    grep -q '^exit status 0$' <<<"$out" || fail "no 'exit status 0' from the kernel"
    local used
    used=$(sed -n 's/.*APIC in use: *\([x2]*APIC\).*/\1/p' <<<"$out" | head -n 1)
    [ "$used" = "$2" ] || fail "kernel uses '${used:-nothing}', expected $2"
}
