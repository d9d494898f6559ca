#!/usr/bin/env bash
# Build the kernel archive libhermit.a the way the application links it:
#   1. the kernel (cargo, x86_64-unknown-none, core/alloc built from source),
#   2. the export step: rename every symbol the application must not see,
#   3. hermit-builtins (math and memory functions), renamed the same way and appended,
#   4. ELF OS/ABI 255 (standalone) in every member, which loaders check in the linked image.
#   build-kernel.sh TOOLCHAIN KERNEL_SRC OUT_DIR FEATURES BUILTINS_SRC BUILTINS_TARGET_DIR
# Cargo decides what to recompile; steps 2-4 run only when an input archive or the feature
# set changed. Output: OUT_DIR/libhermit.a.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/common.sh"
clean_cargo_env

toolchain="$1" src="$2" out="$3" features="$4" builtins_src="$5" builtins_target="$6"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
builtins_target="$(mkdir -p "$builtins_target" && cd "$builtins_target" && pwd)"
bin="$(llvm_bin_dir "$toolchain")"

# Unwind tables (.eh_frame) only describe frames for debuggers, the code is the same: they let
# gdb unwind the kernel's frames (make qemu-debug). Flags are separated by 0x1f in this variable.
us=$'\x1f'
start=$(now)
echo "==> building kernel $(basename "$out") [features $features] (~40 s clean, ~1 s when up to date)"
(cd "$src" && CARGO_ENCODED_RUSTFLAGS="-Zmutable-noalias=no${us}-Cforce-unwind-tables=yes" cargo "+$toolchain" build --release --locked \
    --target x86_64-unknown-none -Zbuild-std=core,alloc -Zbuild-std-features=compiler-builtins-mem \
    --no-default-features --features "$features" --target-dir "$out/target")
echo "    kernel: $(elapsed "$start") s"

start=$(now)
echo "==> building hermit-builtins (~15 s clean)"
(cd "$builtins_src" && cargo "+$toolchain" build --release --locked \
    --target x86_64-unknown-hermit -Zbuild-std=core --target-dir "$builtins_target")
echo "    builtins: $(elapsed "$start") s"

kernel_raw="$out/target/x86_64-unknown-none/release/libhermit.a"
builtins_raw="$builtins_target/x86_64-unknown-hermit/release/libhermit_builtins.a"
final="$out/libhermit.a"
inputs="features=$features kernel=$(stat -c %Y.%s "$kernel_raw") builtins=$(stat -c %Y.%s "$builtins_raw") scripts=$(cat "$here/build-kernel.sh" "$here/export-archive.sh" | cksum)"
if [ -f "$final" ] && [ "$(cat "$final.inputs" 2>/dev/null)" = "$inputs" ]; then
    echo "    $final is up to date"
    exit 0
fi

start=$(now)
echo "==> exporting kernel symbols, appending builtins, setting OS/ABI"
rm -f "$final" "$final.inputs"
"$here/export-archive.sh" "$bin" "$kernel_raw" "$final.tmp" kernel
"$here/export-archive.sh" "$bin" "$builtins_raw" "$out/libhermit_builtins.a" builtins
"$bin/llvm-ar" qL "$final.tmp" "$out/libhermit_builtins.a"
"$bin/llvm-ar" s "$final.tmp"

# OS/ABI: byte 7 of each ELF member. Walk the GNU ar format: "!<arch>\n", then per member a
# 60-byte header (size in bytes 48-57, decimal) followed by the data, padded to an even length.
size=$(stat -c %s "$final.tmp")
offset=8
members=0
while [ "$offset" -lt "$size" ]; do
    header=$(dd if="$final.tmp" iflag=skip_bytes,count_bytes skip="$offset" count=60 bs=4096 status=none)
    length=$((10#$(echo "${header:48:10}" | tr -d ' ')))
    data=$((offset + 60))
    magic=$(dd if="$final.tmp" iflag=skip_bytes,count_bytes skip="$data" count=4 bs=4096 status=none | od -An -tx1 | tr -d ' \n')
    if [ "$magic" = 7f454c46 ]; then
        printf '\377' | dd of="$final.tmp" bs=1 seek=$((data + 7)) conv=notrunc status=none
        members=$((members + 1))
    fi
    offset=$((data + length + length % 2))
done
echo "    OS/ABI 255 set in $members members ($(elapsed "$start") s)"
mv "$final.tmp" "$final"
echo "$inputs" >"$final.inputs"
echo "    kernel archive: $final"
