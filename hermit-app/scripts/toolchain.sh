#!/usr/bin/env bash
# Make sure the toolchains the image pipeline needs are installed.
#   toolchain.sh nightly TOOLCHAIN   pinned nightly with rust-src and llvm-tools (kernel, builtins, apps)
#   toolchain.sh loader              stable with the x86_64-unknown-none target (the loader)
set -euo pipefail

case "${1:-}" in
nightly)
    tc="$2"
    if rustup run "$tc" rustc --version >/dev/null 2>&1 \
        && [ -d "$(rustup run "$tc" rustc --print sysroot)/lib/rustlib/src/rust/library" ] \
        && [ -x "$(rustup run "$tc" rustc --print sysroot)/lib/rustlib/x86_64-unknown-linux-gnu/bin/llvm-objcopy" ]; then
        exit 0
    fi
    echo "==> installing toolchain $tc (rust-src, llvm-tools-preview; ~15 s)"
    start=$SECONDS
    rustup toolchain install "$tc" --profile minimal --component rust-src,llvm-tools-preview
    echo "    toolchain: $((SECONDS - start)) s"
    ;;
loader)
    if ! rustup run stable rustc --version >/dev/null 2>&1; then
        echo "==> installing stable toolchain"
        rustup toolchain install stable --profile minimal
    fi
    if ! rustup target list --installed --toolchain stable | grep -qx x86_64-unknown-none; then
        echo "==> adding target x86_64-unknown-none to the stable toolchain"
        rustup target add --toolchain stable x86_64-unknown-none
    fi
    ;;
*)
    echo "usage: $0 nightly TOOLCHAIN | loader" >&2
    exit 2
    ;;
esac
