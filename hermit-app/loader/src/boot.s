/*
 * Multiboot entry: 32-bit protected mode, paging off, EAX = 0x2BADB002, EBX = MBI address.
 * Builds identity page tables, switches to long mode and calls loader_main(mbi, magic).
 *
 * Page tables (BOOT-PROTOCOL.md section 2.2):
 *   PML4[0] -> PDPT, PDPT[0..4] -> four page directories covering 0..4 GiB;
 *   PD entry 0 -> a 4 KiB page table mapping only 0x1000-0x9efff and 0x100000-0x1fffff
 *   (frame 0, the EBDA page and 0xa0000-0xfffff stay unmapped: the kernel maps them itself);
 *   every other PD entry is a 2 MiB identity page. No 1 GiB pages, PML4 slots 1-511 empty.
 */

    .set MB_MAGIC, 0x1BADB002
    /* page-align modules | memory info | the address fields below are valid (raw load) */
    .set MB_FLAGS, 0x00010003

    .section .mboot, "a"
    .p2align 2
multiboot_header:
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)
    .long multiboot_header      /* header_addr */
    .long loader_start          /* load_addr */
    .long load_end              /* load_end_addr: end of the file's loaded part */
    .long bss_end               /* bss_end_addr: QEMU zeroes up to here */
    .long multiboot_entry       /* entry_addr */

    .section .text.boot32, "ax"
    .code32
    .global multiboot_entry
multiboot_entry:
    cli
    cld
    movl $loader_stack_top, %esp
    movl %ebx, mbi_address
    movl %eax, mbi_magic

    /* PML4[0] -> PDPT */
    movl $pdpt, %eax
    orl $3, %eax
    movl %eax, pml4

    /* PDPT[0..4] -> PD pages */
    movl $page_directories, %eax
    orl $3, %eax
    xorl %ecx, %ecx
1:  movl %eax, pdpt(,%ecx,8)
    addl $4096, %eax
    incl %ecx
    cmpl $4, %ecx
    jb 1b

    /* PD entries 1..2047: 2 MiB pages, present | writable | huge */
    movl $1, %ecx
2:  movl %ecx, %eax
    shll $21, %eax
    orl $0x83, %eax
    movl %eax, page_directories(,%ecx,8)
    incl %ecx
    cmpl $2048, %ecx
    jb 2b

    /* PD entry 0 -> the low page table */
    movl $low_page_table, %eax
    orl $3, %eax
    movl %eax, page_directories

    /* low page table: 0x1000-0x9efff */
    movl $0x1, %ecx
3:  movl %ecx, %eax
    shll $12, %eax
    orl $3, %eax
    movl %eax, low_page_table(,%ecx,8)
    incl %ecx
    cmpl $0x9f, %ecx
    jb 3b

    /* low page table: 0x100000-0x1fffff (this loader, its tables and stacks, the modules' start) */
    movl $0x100, %ecx
4:  movl %ecx, %eax
    shll $12, %eax
    orl $3, %eax
    movl %eax, low_page_table(,%ecx,8)
    incl %ecx
    cmpl $0x200, %ecx
    jb 4b

    /* CR3, then CR4.PAE, then EFER.LME, then CR0.PG (EM, WP, NW, CD clear; MP set) */
    movl $pml4, %eax
    movl %eax, %cr3
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl $0xC0000080, %ecx
    rdmsr
    orl $0x100, %eax
    wrmsr
    movl %cr0, %eax
    andl $0x9FFEFFFB, %eax
    orl $0x80000002, %eax
    movl %eax, %cr0

    lgdt gdt_descriptor
    ljmp $0x08, $long_mode_entry

    .code64
long_mode_entry:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorl %eax, %eax
    movw %ax, %fs
    movw %ax, %gs
    movq $loader_stack_top, %rsp
    /* 32-bit loads zero-extend: the upper halves are undefined after the switch */
    movl mbi_address(%rip), %edi
    movl mbi_magic(%rip), %esi
    call loader_main
5:  hlt
    jmp 5b

    .section .data.boot, "aw"
    .p2align 4
    /* The kernel keeps running on this GDT until it loads its own: it must stay in place. */
gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF    /* 0x08: 64-bit code */
    .quad 0x00CF92000000FFFF    /* 0x10: data */
gdt_end:
gdt_descriptor:
    .word gdt_end - gdt - 1
    .quad gdt
mbi_address:
    .long 0
mbi_magic:
    .long 0

    .section .bss.pagetables, "aw", @nobits
    .p2align 12
pml4:
    .skip 4096
pdpt:
    .skip 4096
page_directories:
    .skip 4 * 4096
low_page_table:
    .skip 4096
loader_stack:
    .skip 64 * 1024
loader_stack_top:
