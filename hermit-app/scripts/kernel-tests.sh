#!/usr/bin/env bash
# Build the kernel package's own integration tests (tests/ of hermit-kernel) on one or more
# prepared kernel sources and boot each test binary directly with LOADER under QEMU (TCG).
#   kernel-tests.sh TOOLCHAIN LOADER FEATURES LOG_DIR TIMEOUT_S SMP_LIST NAME=SRC_DIR[:TARGET_DIR]...
# A test binary is a complete kernel image (static PIE with the HERMIT note): no export step.
# All five tests of tests/ (measure_startup_time boots in ~0.3 s too). QEMU exit 3 = pass.
# Prints one PASS/FAIL line per boot and ends with "N passed, M failed".
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/common.sh"
clean_cargo_env

toolchain="$1" loader="$2" features="$3" logs="$4" limit="$5" smp_list="$6"
shift 6
[ "$#" -gt 0 ] || { echo "usage: kernel-tests.sh TOOLCHAIN LOADER FEATURES LOG_DIR TIMEOUT_S SMP_LIST NAME=SRC[:TARGET]..." >&2; exit 2; }
[ -f "$loader" ] || { echo "error: loader $loader does not exist (run make loader)" >&2; exit 1; }
command -v qemu-system-x86_64 >/dev/null || { echo "error: qemu-system-x86_64 not found" >&2; exit 1; }
mkdir -p "$logs"
logs="$(cd "$logs" && pwd)"
tests=(basic_math basic_mem basic_print measure_startup_time thread)
total_start=$(now)

# build NAME SRC TARGET: builds the tests, writes "test-name path" lines to $logs/NAME.bins.
build() {
    local name="$1" src="$2" target="$3" start args
    start=$(now)
    echo "==> building kernel tests [$name, features $features] in $src (~60 s clean)"
    # `--test NAME` for each wanted test instead of `--tests`: that would also build the crate's
    # unit-test binary (which panics at boot upstream too).
    args=(--no-run --release --locked --target x86_64-unknown-none
        -Zbuild-std=core,alloc -Zbuild-std-features=compiler-builtins-mem
        --no-default-features --features "$features" --target-dir "$target")
    for t in "${tests[@]}"; do args+=(--test "$t"); done
    # Same rustflags as build-kernel.sh, so the kernel's own code is compiled the same way.
    (cd "$src" && CARGO_ENCODED_RUSTFLAGS=-Zmutable-noalias=no cargo "+$toolchain" test "${args[@]}" \
        --message-format=json-render-diagnostics) >"$logs/$name.build.json" 2>"$logs/$name.build.log" || {
        echo "error: building the $name kernel tests failed (log: $logs/$name.build.log)" >&2
        tail -n 20 "$logs/$name.build.log" >&2
        return 1
    }
    # One JSON object per line; test executables have "profile":{..."test":true...} and "executable".
    grep '"reason":"compiler-artifact"' "$logs/$name.build.json" | grep '"test":true' |
        sed -n 's/.*"name":"\([A-Za-z0-9_]*\)","src_path".*"executable":"\([^"]*\)".*/\1 \2/p' \
            >"$logs/$name.bins"
    echo "    $(wc -l <"$logs/$name.bins") test binaries in $(elapsed "$start") s"
}

passed=0
failed=0
for variant in "$@"; do
    name="${variant%%=*}" rest="${variant#*=}"
    src="${rest%%:*}"
    target="${rest#*:}"
    [ "$target" != "$rest" ] || target="$src/../test-target"
    [ -d "$src" ] || { echo "error: kernel source $src does not exist (run make image)" >&2; exit 1; }
    if ! build "$name" "$src" "$target"; then
        failed=$((failed + 1))
        continue
    fi
    for t in "${tests[@]}"; do
        bin=$(awk -v t="$t" '$1 == t { print $2; exit }' "$logs/$name.bins")
        for smp in $smp_list; do
            if [ -z "$bin" ] || [ ! -f "$bin" ]; then
                echo "FAIL $name $t smp=$smp (no test binary found)"
                failed=$((failed + 1))
                continue
            fi
            log="$logs/$name-$t-smp$smp.log"
            start=$(now)
            ok=0
            "$here/qemu.sh" "$loader" "$bin" "$smp" "qemu64,+x2apic,+fsgsbase" 512M "$limit" >"$log" 2>&1 || ok=$?
            took=$(elapsed "$start")
            if [ "$ok" = 0 ]; then
                echo "PASS $name $t smp=$smp ${took}s"
                passed=$((passed + 1))
            else
                echo "FAIL $name $t smp=$smp ${took}s (log: $log)"
                grep -a -E 'error:|panicked' "$log" | head -n 3 | sed 's/^/    /' | cut -c1-200
                failed=$((failed + 1))
            fi
        done
    done
done
echo "kernel tests: $(elapsed "$total_start") s"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
