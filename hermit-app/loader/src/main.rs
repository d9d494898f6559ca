//! ipiq-loader: a minimal multiboot loader that boots one Hermit application image.
//!
//! QEMU loads this file (`-kernel`) and the application ELF as the first multiboot module
//! (`-initrd`). `boot.s` switches to long mode on identity page tables; `loader_main` then
//! loads the application (kernel and app are one ELF) above everything the loader owns,
//! describes RAM in a flattened device tree, fills in hermit-entry's boot information and jumps
//! to the kernel on a 32 KiB stack that the kernel keeps as core 0's stack.
//! The contract with kernel 0.11.0 is written down in the project's BOOT-PROTOCOL notes.

#![no_std]
#![no_main]

extern crate alloc;

mod allocator;
mod serial;

use alloc::format;
use alloc::vec::Vec;
use core::mem::MaybeUninit;
use core::num::NonZeroU64;
use core::panic::PanicInfo;
use core::ptr::addr_of_mut;

use hermit_entry::boot_info::{
    BootInfo, DeviceTreeAddress, HardwareInfo, PlatformInfo, RawBootInfo, SerialPortBase,
};
use hermit_entry::elf::KernelObject;
use multiboot::information::{MemoryManagement, MemoryType, Multiboot, PAddr};

core::arch::global_asm!(include_str!("boot.s"), options(att_syntax));

/// What a multiboot loader leaves in EAX.
const MULTIBOOT_BOOTLOADER_MAGIC: u32 = 0x2bad_b002;
/// The application is never placed below this address (leaves room for modules and 24 MiB RAM works).
const MIN_KERNEL_BASE: u64 = 0x40_0000;
/// The kernel base must be 2 MiB-aligned.
const KERNEL_ALIGN: u64 = 0x20_0000;
/// The loader's page tables identity-map the first 4 GiB.
const MAPPED_END: u64 = 1 << 32;
/// The same as the kernel's KERNEL_STACK_SIZE.
const KERNEL_STACK_SIZE: usize = 0x8000;

/// Core 0's stack, handed to the kernel for good (it becomes the idle and TSS stack).
#[repr(C, align(4096))]
struct KernelStack([u8; KERNEL_STACK_SIZE]);
static mut KERNEL_STACK: KernelStack = KernelStack([0; KERNEL_STACK_SIZE]);

/// The boot information the kernel reads; it must outlive the loader, so it is a static.
static mut RAW_BOOT_INFO: MaybeUninit<RawBootInfo> = MaybeUninit::uninit();

unsafe extern "C" {
    /// End of the loader's zeroed memory (linker script); QEMU puts the modules after it.
    static bss_end: u8;
}

/// Physical memory is identity-mapped, so a physical address is a pointer.
struct IdentityMapped;

impl MemoryManagement for IdentityMapped {
    unsafe fn paddr_to_slice(&self, addr: PAddr, length: usize) -> Option<&'static [u8]> {
        // SAFETY: the caller (the multiboot crate) asks only for ranges the MBI describes,
        // which lie in identity-mapped memory below 4 GiB.
        Some(unsafe { core::slice::from_raw_parts(addr as *const u8, length) })
    }

    unsafe fn allocate(&mut self, _length: usize) -> Option<(PAddr, &mut [u8])> {
        None
    }

    unsafe fn deallocate(&mut self, _addr: PAddr) {}
}

fn align_up(value: u64, align: u64) -> u64 {
    value.div_ceil(align) * align
}

/// Entry from `boot.s`, in long mode on the loader's own stack.
#[unsafe(no_mangle)]
extern "C" fn loader_main(mbi_address: u32, magic: u32) -> ! {
    serial::Serial::init();
    println!("ipiq-loader: multiboot info at {mbi_address:#x}");
    assert_eq!(
        magic, MULTIBOOT_BOOTLOADER_MAGIC,
        "not started by a multiboot loader"
    );

    let mut memory_management = IdentityMapped;
    // SAFETY: EBX held the MBI address on entry, and all of it is identity-mapped.
    let mbi = unsafe { Multiboot::from_ptr(u64::from(mbi_address), &mut memory_management) }
        .expect("cannot read the multiboot information");

    // The application is the first module.
    let module = mbi
        .modules()
        .and_then(|mut modules| modules.next())
        .expect("no application: pass one with -initrd");
    let (app_start, app_end) = (module.start, module.end);
    // SAFETY: QEMU copied the module there; it is identity-mapped and nothing else uses it.
    let app = unsafe {
        core::slice::from_raw_parts(app_start as *const u8, (app_end - app_start) as usize)
    };
    let object = KernelObject::parse(app).expect("the module is not a Hermit application ELF");
    let mem_size = object.mem_size() as u64;

    // Place the application above everything that must survive: this loader (page tables,
    // stacks, heap), the MBI, the modules and the command line.
    let loader_end = core::ptr::addr_of!(bss_end) as u64;
    let highest = mbi.find_highest_address().max(app_end).max(loader_end);
    let base = align_up(highest, KERNEL_ALIGN).max(MIN_KERNEL_BASE);
    assert!(
        base + mem_size <= MAPPED_END,
        "the application does not fit below 4 GiB"
    );

    // Available RAM in ascending order: the kernel takes page-table frames from these in order
    // and must meet identity-mapped memory first.
    let mut ram: Vec<(u64, u64)> = mbi
        .memory_regions()
        .expect("no memory map in the multiboot information")
        .filter(|region| region.memory_type() == MemoryType::Available)
        .map(|region| (region.base_address(), region.length()))
        .collect();
    ram.sort_unstable();
    assert!(
        ram.iter()
            .any(|&(start, len)| start <= base && base + mem_size <= start + len),
        "not enough RAM for the application ({mem_size:#x} bytes at {base:#x})"
    );

    println!(
        "ipiq-loader: Hermit {} application at {app_start:#x}-{app_end:#x}, loading at {base:#x} ({mem_size:#x} bytes)",
        object
            .hermit_version()
            .map(|version| format!("{version}"))
            .unwrap_or_else(|| "(unknown version)".into()),
    );

    // SAFETY: base..base+mem_size is identity-mapped RAM above everything the loader uses.
    let memory =
        unsafe { core::slice::from_raw_parts_mut(base as *mut MaybeUninit<u8>, mem_size as usize) };
    let loaded = object.load_kernel(memory, base);

    // The command line lives in QEMU's MBI area, which nothing overwrites before the kernel reads it.
    let command_line: Option<&'static str> = mbi
        .command_line()
        .map(|line| unsafe { &*(line as *const str) });
    let fdt = device_tree(&ram, command_line.unwrap_or(""));

    let boot_info = BootInfo {
        hardware_info: HardwareInfo {
            phys_addr_range: 0..0,
            serial_port_base: SerialPortBase::new(serial::COM1),
            device_tree: DeviceTreeAddress::new(fdt.as_ptr() as u64),
        },
        load_info: loaded.load_info,
        platform_info: PlatformInfo::Multiboot {
            command_line,
            multiboot_info_addr: NonZeroU64::new(u64::from(mbi_address))
                .expect("the MBI address is not zero"),
        },
    };

    // SAFETY: single-threaded; both statics are written once here and then owned by the kernel.
    let (raw_boot_info, stack_bottom) = unsafe {
        let raw = (*addr_of_mut!(RAW_BOOT_INFO)).write(RawBootInfo::from(boot_info));
        (raw as *const RawBootInfo, addr_of_mut!(KERNEL_STACK) as u64)
    };
    println!("ipiq-loader: jumping to {:#x}", loaded.entry_point);

    // SAFETY: the entry point of the image just loaded; RDI = boot info, ESI = core 0,
    // RSP = the lowest address of its stack (the kernel adds the stack size itself).
    unsafe {
        core::arch::asm!(
            "mov rsp, {stack}",
            "jmp {entry}",
            stack = in(reg) stack_bottom,
            entry = in(reg) loaded.entry_point,
            in("rdi") raw_boot_info,
            in("esi") 0u32,
            options(noreturn),
        )
    }
}

/// The flattened device tree the kernel discovers RAM from: one `/memory@...` node per
/// available region (ascending), and the command line in `/chosen/bootargs`.
/// The buffer is leaked: the kernel reads it after the loader is gone.
fn device_tree(ram: &[(u64, u64)], command_line: &str) -> &'static [u8] {
    let build = || -> vm_fdt::FdtWriterResult<Vec<u8>> {
        let mut fdt = vm_fdt::FdtWriter::new()?;
        let root = fdt.begin_node("")?;
        fdt.property_string("compatible", "hermit,multiboot")?;
        fdt.property_u32("#address-cells", 2)?;
        fdt.property_u32("#size-cells", 2)?;
        for &(start, len) in ram {
            let node = fdt.begin_node(&format!("memory@{start:x}"))?;
            fdt.property_string("device_type", "memory")?;
            fdt.property_array_u64("reg", &[start, len])?;
            fdt.end_node(node)?;
        }
        let chosen = fdt.begin_node("chosen")?;
        fdt.property_string("bootargs", command_line)?;
        fdt.end_node(chosen)?;
        fdt.end_node(root)?;
        fdt.finish()
    };
    build().expect("cannot build the device tree").leak()
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    println!("ipiq-loader: panic: {info}");
    // isa-debug-exit: QEMU exits with status (0 << 1) | 1 = 1, a failure, instead of hanging.
    // SAFETY: writing to the debug-exit port only stops the machine.
    unsafe { serial::outl(0xf4, 0) };
    loop {
        // SAFETY: halting with interrupts off just stops this CPU.
        unsafe { core::arch::asm!("cli; hlt", options(nomem, nostack)) };
    }
}
