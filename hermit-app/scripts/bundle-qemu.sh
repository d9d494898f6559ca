#!/usr/bin/env bash
# Make a self-contained copy of this machine's qemu-system-x86_64 for a machine without QEMU or
# network (for device-scaling.sh): the binary, every shared library it loads (the dynamic loader
# and libc included, so the target's own glibc version does not matter) and the x86 firmware it
# reads, plus a wrapper that starts it with those.
#   bundle-qemu.sh OUT_DIR
# Then run OUT_DIR/qemu-system-x86_64 (a bash script) where QEMU is wanted; it needs only bash.
# Runs here (needs ldd); about 60 MB.
set -euo pipefail

[ $# -eq 1 ] || { echo "usage: $0 OUT_DIR" >&2; exit 2; }
out="$1"
qemu="$(command -v qemu-system-x86_64)" || { echo "error: qemu-system-x86_64 not found (make qemu-install)" >&2; exit 1; }
qemu="$(readlink -f "$qemu")"

rm -rf "$out"
mkdir -p "$out/lib" "$out/share"
cp "$qemu" "$out/lib/qemu-system-x86_64.bin"

# Libraries: "name => /path (addr)" lines, and the loader's own "/lib64/ld-linux... (addr)" line.
loader=""
while read -r first second third _; do
    if [ "$second" = "=>" ] && [ -f "$third" ]; then
        cp -L "$third" "$out/lib/$first"
    elif [[ "$first" == /*ld-linux* ]]; then
        loader="$(basename "$first")"
        cp -L "$first" "$out/lib/$loader"
    fi
done < <(ldd "$qemu")
[ -n "$loader" ] || { echo "error: no dynamic loader in ldd's output" >&2; exit 1; }

# Firmware an x86 guest with -kernel/-initrd (multiboot) and the default devices reads: the
# SeaBIOS image, the option ROMs for multiboot and linuxboot, kvmvapic, the default VGA BIOS.
# QEMU's own search path (-L help), first hit wins, as in QEMU.
mapfile -t datadirs < <("$qemu" -L help 2>/dev/null || true)
[ ${#datadirs[@]} -gt 0 ] || datadirs=(/usr/share/qemu /usr/share/seabios)
for f in bios-256k.bin bios.bin multiboot_dma.bin multiboot.bin linuxboot_dma.bin linuxboot.bin \
    kvmvapic.bin pvh.bin vgabios-stdvga.bin vgabios.bin; do
    for d in "${datadirs[@]}"; do
        if [ -e "$d/$f" ]; then
            cp -L "$d/$f" "$out/share/$f"
            break
        fi
    done
done
[ -f "$out/share/bios-256k.bin" ] || { echo "error: no bios-256k.bin in $datadir" >&2; exit 1; }

cat >"$out/qemu-system-x86_64" <<EOF
#!/usr/bin/env bash
# Bundled $("$qemu" --version | head -n 1): this machine's QEMU with its own libraries and firmware.
d="\$(dirname "\$(readlink -f "\${BASH_SOURCE[0]}")")"
exec "\$d/lib/$loader" --library-path "\$d/lib" "\$d/lib/qemu-system-x86_64.bin" -L "\$d/share" "\$@"
EOF
chmod +x "$out/qemu-system-x86_64"
echo "==> $out: $(du -sh "$out" | cut -f1), run $out/qemu-system-x86_64"
