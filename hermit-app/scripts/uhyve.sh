#!/usr/bin/env bash
# Run a Hermit image under uhyve (KVM), the runner for real KVM hosts.
#   uhyve.sh IMAGE SMP TIMEOUT_S UHYVE_VERSION
# Hermit needs hardware virtualization (VMX or SVM) behind /dev/kvm; some hosts offer a
# /dev/kvm without it (a software nested scheme), on which Hermit guests die early, so this
# checks first and fails at once instead of hanging.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/common.sh"

image="$1" smp="$2" limit="$3" version="$4"
if [ ! -e /dev/kvm ]; then
    echo "error: uhyve needs KVM, and /dev/kvm does not exist on this machine; use 'make qemu' instead" >&2
    exit 1
fi
if ! grep -qwE 'vmx|svm' /proc/cpuinfo; then
    echo "error: /dev/kvm exists but the CPU has no vmx/svm flag (software-nested KVM): Hermit cannot run under" >&2
    echo "       uhyve here (its guests die on XGETBV/SSE emulation failures); use 'make qemu' instead" >&2
    exit 1
fi
[ -f "$image" ] || { echo "error: $image does not exist (run make image)" >&2; exit 1; }

if ! command -v uhyve >/dev/null 2>&1 || ! uhyve --version 2>/dev/null | grep -qF "$version"; then
    echo "==> installing uhyve $version (~2 min)"
    (clean_cargo_env && cargo +stable install uhyve --version "$version" --locked)
fi
status=0
timeout --foreground -k 5 "$limit" uhyve -c "$smp" "$image" || status=$?
case "$status" in
    0) ;;
    124 | 137) echo "error: uhyve did not finish within $limit s; killed" >&2 ;;
    *) echo "error: uhyve exited with status $status" >&2 ;;
esac
exit "$status"
