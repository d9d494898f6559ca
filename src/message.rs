//! [`Message`]: "run this function with these two words on that core".

use core::fmt;

use crate::{Ipiq, Platform};

/// A message function. It runs on the target core in interrupt context (interrupts disabled,
/// inside [`Ipiq::process`]): it must be short, must not block and must not take sleeping locks.
/// It may send messages itself (nested sends are part of the protocol).
pub type IpiFn<P> = fn(ipiq: &Ipiq<P>, arg0: usize, arg1: usize);

/// One queued request: a function and two words of argument (the seed's `ip_info[]` entry).
pub struct Message<P: Platform> {
    /// What to run.
    pub func: IpiFn<P>,
    /// First argument word.
    pub arg0: usize,
    /// Second argument word.
    pub arg1: usize,
}

impl<P: Platform> Message<P> {
    /// A message running `func(ipiq, arg0, arg1)`.
    #[inline]
    pub const fn new(func: IpiFn<P>, arg0: usize, arg1: usize) -> Self {
        Self { func, arg0, arg1 }
    }

    /// Runs the message on core `me` (the calling core), counting it as a message context so
    /// that sends from inside it never block (see `spill.rs`).
    #[inline]
    pub(crate) fn run(self, ipiq: &Ipiq<P>, me: crate::CpuId) {
        match ipiq.per_cpu(me) {
            Some(cpu) => ipiq.run_message_on(cpu, self),
            // A core `new` does not serve keeps no depth (it can run only its own local
            // messages).
            None => (self.func)(ipiq, self.arg0, self.arg1),
        }
    }
}

// Manual impls: a derive would wrongly require `P: Clone`.
impl<P: Platform> Clone for Message<P> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<P: Platform> Copy for Message<P> {}

impl<P: Platform> fmt::Debug for Message<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("func", &(self.func as *const ()))
            .field("arg0", &self.arg0)
            .field("arg1", &self.arg1)
            .finish()
    }
}
