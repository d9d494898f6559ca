//! Polling driver for the 16550 UART at COM1 (I/O port 0x3f8), the console the kernel uses too.

use core::arch::asm;
use core::fmt;

/// I/O port base of COM1.
pub const COM1: u16 = 0x3f8;

/// Write one byte to an I/O port.
///
/// # Safety
/// The caller must know that writing `value` to `port` has no effect beyond the device's.
#[inline]
pub unsafe fn outb(port: u16, value: u8) {
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    };
}

/// Write one 32-bit value to an I/O port.
///
/// # Safety
/// As for [`outb`].
#[inline]
pub unsafe fn outl(port: u16, value: u32) {
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    };
}

#[inline]
fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: reading a UART register has no side effect on memory.
    unsafe {
        asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    value
}

/// The COM1 console.
pub struct Serial;

impl Serial {
    /// Program 115200 baud, 8N1, FIFOs on, interrupts off.
    pub fn init() {
        // SAFETY: these are the UART's own registers.
        unsafe {
            outb(COM1 + 1, 0x00); // no interrupts
            outb(COM1 + 3, 0x80); // divisor latch access
            outb(COM1, 0x01); // divisor 1: 115200 baud
            outb(COM1 + 1, 0x00);
            outb(COM1 + 3, 0x03); // 8 bits, no parity, one stop bit
            outb(COM1 + 2, 0xc7); // FIFOs on and cleared
            outb(COM1 + 4, 0x0b); // DTR, RTS, OUT2
        }
    }

    fn write_byte(byte: u8) {
        // Wait until the transmit holding register is empty.
        while inb(COM1 + 5) & 0x20 == 0 {
            core::hint::spin_loop();
        }
        // SAFETY: the UART's data register.
        unsafe { outb(COM1, byte) };
    }
}

impl fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for byte in s.bytes() {
            if byte == b'\n' {
                Self::write_byte(b'\r');
            }
            Self::write_byte(byte);
        }
        Ok(())
    }
}

/// Print to the serial console.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::serial::Serial, $($arg)*);
    }};
}
