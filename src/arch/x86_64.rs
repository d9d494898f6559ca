//! The x86_64 platform: x2APIC ICR writes (xAPIC fallback), `invlpg`, interrupt flag.
//! (Filled in by the kernel integration.)
