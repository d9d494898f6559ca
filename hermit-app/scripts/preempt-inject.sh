#!/usr/bin/env bash
# Fault injection for the kernel's lock order (hermit-app/kernel/LOCK-ORDER.md, rule 1): writes a
# gdb hook for qemu-debug.sh (QEMU_DEBUG_GDB_HOOK) that delivers a timer interrupt to a core at
# the moment it holds the scheduler's SCHEDULER_INPUTS lock with interrupts enabled (only on VCPU,
# if given: ipiq-tests' sched_locks runs its poster, waker and spawner on vCPU 1).
#   preempt-inject.sh IMAGE [VCPU] >HOOK
#   QEMU_DEBUG_GDB_HOOK=HOOK qemu-debug.sh LOADER IMAGE SMP CPU MEM TIMEOUT -- -append "-- sched_locks 20"
# Breakpoints go on every instruction that touches the lock's data (the vector's pointer or
# length, touched only while the lock is held), each with the condition "interrupt flag set". The first one
# that fires builds the frame the CPU pushes for an interrupt (SS, RSP, RFLAGS, CS, RIP; RSP
# aligned to 16 first), clears IF and jumps to the scheduler's timer handler, which reschedules;
# then the hook removes its breakpoints and detaches. A kernel where the lock is only ever held
# with interrupts disabled never meets the condition, and the guest runs on (the hook's log then
# shows no injection).
set -euo pipefail

[ $# -ge 1 ] && [ $# -le 2 ] || { echo "usage: $0 IMAGE [VCPU] >HOOK" >&2; exit 2; }
image="$1" vcpu="${2:-}"
[ -z "$vcpu" ] || [[ "$vcpu" =~ ^[0-9]+$ ]] || { echo "error: VCPU must be a vCPU index" >&2; exit 2; }
# gdb's thread N is vCPU N-1.
only=""
[ -z "$vcpu" ] || only=" && \$_thread == $((vcpu + 1))"
[ -f "$image" ] || { echo "error: $image does not exist" >&2; exit 1; }
for tool in objdump nm; do
    command -v "$tool" >/dev/null || { echo "error: $tool (binutils) not found" >&2; exit 1; }
done

handler=$(nm -C "$image" | awk '/ [tT] .*kernel::scheduler::timer_handler$/ && !found { print $1; found = 1 }')
[ -n "$handler" ] || { echo "error: no timer_handler symbol in $image" >&2; exit 1; }
mapfile -t sites < <(objdump -d --no-show-raw-insn -C "$image" |
    awk '/\(%rip\).* # [0-9a-f]+ <hermit::scheduler::SCHEDULER_INPUTS\+0x(10|18)>/ {
        sub(/:$/, "", $1); print $1 }')
[ ${#sites[@]} -gt 0 ] || { echo "error: nothing touches SCHEDULER_INPUTS' data in $image" >&2; exit 1; }

echo "# preempt-inject.sh: ${#sites[@]} sites touching SCHEDULER_INPUTS' data; timer_handler at image offset 0x$handler"
for a in "${sites[@]}"; do
    echo "break *(\$base + 0x$a) if (\$eflags & 0x200) != 0$only"
done
cat <<EOF
commands 1-${#sites[@]}
silent
printf "injected: vCPU %d holds SCHEDULER_INPUTS with interrupts on at %#lx; delivering a timer interrupt there\\n", \$_thread - 1, \$pc
set \$old_rsp = (unsigned long) \$rsp
set \$frame = (\$old_rsp & ~0xf) - 40
set *(unsigned long *) (\$frame) = (unsigned long) \$pc
set *(unsigned long *) (\$frame + 8) = (unsigned long) \$cs
set *(unsigned long *) (\$frame + 16) = \$eflags & 0xffffffff
set *(unsigned long *) (\$frame + 24) = \$old_rsp
set *(unsigned long *) (\$frame + 32) = (unsigned long) \$ss
set \$rsp = \$frame
set \$eflags = (\$eflags & 0xffffffff) & ~0x200
set \$pc = \$base + 0x$handler
delete
detach
end
echo hook: breakpoints set, guest running\\n
continue
EOF
