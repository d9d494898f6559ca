#!/usr/bin/env bash
# Rename every global symbol of a static archive except the ones it exports, so that the
# kernel's (or the builtins') private copies of core, alloc and compiler-builtins cannot clash
# with the application's own.
#   export-archive.sh LLVM_BIN_DIR IN.a OUT.a kernel|builtins
# kernel:   keeps _start, __bss_start, mcount, runtime_entry, and the sys_* symbols defined in
#           the kernel crate's own members (members named hermit-*); prefix "hermit".
# builtins: keeps the unmangled C functions defined in the builtins crate's own members
#           (members named hermit_builtins-*), but not Rust runtime hooks; prefix "hermit_builtins".
# Mangled names (_ZN...) get the prefix as an outer path component, so they stay demanglable;
# all other names get "PREFIX_".
set -euo pipefail

bin="$1" in="$2" out="$3" mode="$4"
case "$mode" in
    kernel) prefix=hermit ;;
    builtins) prefix=hermit_builtins ;;
    *) echo "unknown mode $mode" >&2; exit 2 ;;
esac

renames="$out.renames"
"$bin/llvm-nm" --defined-only --extern-only --print-file-name "$in" 2>/dev/null | awk -v mode="$mode" -v prefix="$prefix" '
    {
        name = $NF
        member = $1
        sub(/^.*\.a:/, "", member)
        sub(/:$/, "", member)
        defined[name] = 1
        if (mode == "kernel") {
            if (name == "_start" || name == "__bss_start" || name == "mcount" || name == "runtime_entry")
                keep[name] = 1
            else if (name ~ /^sys_/ && member ~ /^hermit-/)
                keep[name] = 1
        } else if (member ~ /^hermit_builtins-/ && name !~ /^(_ZN|_R|rust_|__rust)/) {
            keep[name] = 1
        }
    }
    END {
        for (name in defined) {
            if (name in keep) continue
            if (name ~ /^_ZN/)
                print name, "_ZN" length(prefix) prefix substr(name, 4)
            else
                print name, prefix "_" name
        }
    }' | sort >"$renames"

"$bin/llvm-objcopy" --redefine-syms="$renames" "$in" "$out"
echo "    $(basename "$in"): kept $(("$("$bin/llvm-nm" --defined-only --extern-only "$in" 2>/dev/null | awk 'NF >= 3 { print $NF }' | sort -u | wc -l)" - "$(wc -l <"$renames")")) global symbols, renamed $(wc -l <"$renames")"
