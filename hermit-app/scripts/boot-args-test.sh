#!/usr/bin/env bash
# The boot front door's checks (make boot-args-test, part of make test): bad SMP, CPU, MEM and
# timeout values are refused with an error naming the setting before QEMU runs, and QEMU's own
# refusal (an unknown CPU model) is reported as such, not as a guest failure.
#   boot-args-test.sh LOADER IMAGE
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
loader="$1" image="$2"
passed=0 failed=0
# expect STATUS PATTERN SMP CPU MEM TIMEOUT
expect() {
    local want="$1" pattern="$2" out status
    shift 2
    out=$("$here/qemu.sh" "$loader" "$image" "$@" 2>&1)
    status=$?
    if [ "$status" = "$want" ] && grep -q -- "$pattern" <<<"$out"; then
        passed=$((passed + 1))
        echo "PASS qemu.sh $* -> $status: $(grep -m1 -- "$pattern" <<<"$out")"
    else
        failed=$((failed + 1))
        echo "FAIL qemu.sh $* -> $status (wanted $want and '$pattern'):"
        sed 's/^/    /' <<<"$out" | tail -5
    fi
}
cpu="qemu64,+x2apic,+fsgsbase"
expect 2 "SMP must be a whole number" abc "$cpu" 512M 30
expect 2 "SMP must be a whole number" 0 "$cpu" 512M 30
expect 2 "SMP must be a whole number" 300 "$cpu" 512M 30
expect 2 "MEM must be a size" 2 "$cpu" lots 30
expect 2 "MEM=1K is too small" 2 "$cpu" 1K 30
expect 2 "CPU must be a QEMU CPU model" 2 "" 512M 30
expect 2 "timeout must be a whole number" 2 "$cpu" 512M soon
expect 1 "QEMU refused to start the guest: unable to find CPU model" 2 no-such-model 512M 30
expect 0 "exit status 0" 2 "$cpu" 512M 60
echo "boot-args-test: $passed passed, $failed failed"
[ "$failed" = 0 ]
