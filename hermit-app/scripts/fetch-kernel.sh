#!/usr/bin/env bash
# Fetch the hermit-kernel crate from the crates registry with cargo alone and leave a pristine
# copy of its source in DEST.
#   fetch-kernel.sh TOOLCHAIN VERSION DEST
set -euo pipefail
. "$(dirname "$0")/common.sh"
clean_cargo_env

toolchain="$1" version="$2" dest="$3"
work="$dest.fetch"
rm -rf "$work" "$dest"
mkdir -p "$work/src"

# A throw-away package whose only dependency is the kernel: resolving it makes cargo download
# the kernel's source (and its dependencies' sources, which the kernel build needs anyway).
cat >"$work/Cargo.toml" <<TOML
[package]
name = "fetch-hermit-kernel"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
hermit-kernel = "=$version"

[workspace]
TOML
: >"$work/src/lib.rs"

echo "==> fetching hermit-kernel $version from the crates registry"
export CARGO_RESOLVER_INCOMPATIBLE_RUST_VERSIONS=fallback
manifest=$(cargo "+$toolchain" metadata --format-version 1 --manifest-path "$work/Cargo.toml" \
    | grep -o "\"manifest_path\":\"[^\"]*/hermit-kernel-$version/Cargo.toml\"" | head -n 1 \
    | sed -e 's/^"manifest_path":"//' -e 's/"$//')
if [ -z "$manifest" ] || [ ! -f "$manifest" ]; then
    echo "error: cargo did not report the source of hermit-kernel $version" >&2
    exit 1
fi

# Copy it out of the shared cache: the build edits the copy, never the cache.
cp -r "$(dirname "$manifest")" "$dest"
rm -f "$dest/.cargo-checksum.json" "$dest/.cargo_vcs_info.json"
chmod -R u+w "$dest"
rm -rf "$work"
echo "    kernel source: $dest"
