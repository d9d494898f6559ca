#!/usr/bin/env bash
# Build one application under hermit-app/apps/ and link it with a kernel archive.
#   build-app.sh TOOLCHAIN APP_DIR KERNEL_DIR TARGET_DIR [FEATURES]
# KERNEL_DIR holds libhermit.a; the image is TARGET_DIR/x86_64-unknown-hermit/release/<app>.
# FEATURES: the application's cargo features (space- or comma-separated), none if empty.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/common.sh"
clean_cargo_env

toolchain="$1" app_dir="$2" kernel_dir="$3" target_dir="$4" features="${5:-}"
[ -f "$app_dir/Cargo.toml" ] || { echo "error: no application at $app_dir" >&2; exit 1; }
kernel_dir="$(cd "$kernel_dir" && pwd)"
mkdir -p "$target_dir"
target_dir="$(cd "$target_dir" && pwd)"

start=$(now)
features="$(echo "$features" | tr ', ' '\n\n' | grep -v '^$' | paste -sd, - || true)"
echo "==> building application $(basename "$app_dir")${features:+ (features: $features)} (~25 s clean: std from source; <1 s relink)"
export CARGO_RESOLVER_INCOMPATIBLE_RUST_VERSIONS=fallback
(cd "$app_dir" && HERMIT_KERNEL_DIR="$kernel_dir" cargo "+$toolchain" build --release --locked \
    --target x86_64-unknown-hermit -Zbuild-std=std,panic_abort --target-dir "$target_dir" \
    ${features:+--features "$features"})
echo "    application: $(elapsed "$start") s"
