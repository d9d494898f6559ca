#!/usr/bin/env bash
# Build the project's multiboot loader with the stable toolchain.
#   build-loader.sh LOADER_DIR TARGET_DIR
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/common.sh"
clean_cargo_env

loader_dir="$1" target_dir="$2"
"$here/toolchain.sh" loader
mkdir -p "$target_dir"
target_dir="$(cd "$target_dir" && pwd)"
start=$(now)
echo "==> building loader (stable, x86_64-unknown-none; ~10 s clean)"
(cd "$loader_dir" && cargo +stable build --release --locked --target x86_64-unknown-none \
    --target-dir "$target_dir")
echo "    loader: $(elapsed "$start") s: $target_dir/x86_64-unknown-none/release/ipiq-loader"
