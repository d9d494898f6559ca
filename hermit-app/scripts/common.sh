# Shared helpers for the bash runners (sourced, not run): qemu.sh and qemu-debug.sh, which
# device-scaling.sh (through guest-rayon.sh) uses on machines with only bash and QEMU. The build,
# boot checks, experiments and reports are in xtask/ (cargo xtask help).

# Checks a boot's settings before QEMU sees them, with an error that names the setting (QEMU's own
# refusal would otherwise look like a guest failure, and a tiny MEM like a hang).
#   check_boot_args SMP CPU MEM TIMEOUT_S   (exits 2 with a message on bad input)
check_boot_args() {
    local smp="$1" cpu="$2" mem="$3" limit="$4" n unit mib
    if ! [[ "$smp" =~ ^[0-9]+$ ]] || [ "$((10#$smp))" -lt 1 ] || [ "$((10#$smp))" -gt 255 ]; then
        echo "error: SMP must be a whole number of vCPUs from 1 to 255 (Hermit keeps APIC ids in a byte), not '$smp'" >&2
        exit 2
    fi
    if [ -z "$cpu" ] || [[ "$cpu" =~ [[:space:]] ]]; then
        echo "error: CPU must be a QEMU CPU model such as qemu64,+x2apic,+fsgsbase (no spaces), not '$cpu'" >&2
        exit 2
    fi
    if ! [[ "$mem" =~ ^([0-9]+)([KkMmGgTt]?)$ ]]; then
        echo "error: MEM must be a size such as 512M or 1G, not '$mem'" >&2
        exit 2
    fi
    n="${BASH_REMATCH[1]}" unit="${BASH_REMATCH[2]:-M}"
    case "$unit" in
        K | k) mib=$((10#$n / 1024)) ;;
        M | m) mib=$((10#$n)) ;;
        G | g) mib=$((10#$n * 1024)) ;;
        T | t) mib=$((10#$n * 1024 * 1024)) ;;
    esac
    if [ "$mib" -lt 32 ]; then
        echo "error: MEM=$mem is too small: the kernel and an application need at least 32M" >&2
        exit 2
    fi
    if ! [[ "$limit" =~ ^[0-9]+$ ]] || [ "$((10#$limit))" -lt 1 ]; then
        echo "error: the timeout must be a whole number of seconds, not '$limit'" >&2
        exit 2
    fi
}

# Tells QEMU's own refusal (bad arguments, an unknown CPU model) apart from the guest's failure:
# prints the error and returns 0 if QEMU's stderr, saved in FILE, says it did not start a guest.
#   qemu_refused FILE
qemu_refused() {
    local msg
    msg=$(grep -m1 '^qemu-system-x86_64: ' "$1" 2>/dev/null) || return 1
    echo "error: QEMU refused to start the guest: ${msg#qemu-system-x86_64: }" >&2
}
