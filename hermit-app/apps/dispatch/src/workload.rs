//! The dispatch demo's workload, shared by the host example (`examples/dispatch.rs`) and the
//! Hermit application (`hermit-app/apps/dispatch`): a generated corpus and a per-chunk job.

/// A corpus of `bytes` pseudo-random lowercase words separated by spaces.
pub fn corpus(bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes);
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    while out.len() < bytes {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = 1 + (x % 9) as usize;
        for i in 0..len {
            out.push(b'a' + ((x >> (i * 5)) % 26) as u8);
        }
        out.push(b' ');
    }
    out.truncate(bytes);
    out
}

/// The work on one chunk: its FNV-1a hash and its word count.
pub fn crunch(chunk: &[u8]) -> (u64, u64) {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    let mut words = 0;
    let mut in_word = false;
    for &b in chunk {
        hash = (hash ^ b as u64).wrapping_mul(0x100_0000_01b3);
        let letter = b != b' ';
        words += u64::from(letter && !in_word);
        in_word = letter;
    }
    (hash, words)
}
