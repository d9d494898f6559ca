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
