//! [`CpuSet`]: a fixed-capacity set of cores, [`CpuSet::CAPACITY`] of them (the seed's
//! `cpumask_t` held 32 or 64).
//!
//! The set is an inline bit map: no allocation, `Copy`, and a core id at or past the capacity is
//! an error ([`Error::NoSuchCpu`]) rather than a request to grow. Why 1024 cores (16 words,
//! 128 bytes): Hermit 0.11 keeps local APIC ids as bytes, so the kernel brings up at most 256
//! cores; 1024 leaves it room to grow fourfold while a set stays small enough to build on an
//! interrupt-disabled path (multicast and cpusync build sets with interrupts off, where the
//! kernel must not allocate) and to scan in a few dozen instructions. The kernel's syscalls take
//! bit maps of up to 64 words (4096 cores); a bit past the capacity is refused like a core past
//! the machine.

use core::fmt;

use crate::{CpuId, Error};

const BITS: usize = u64::BITS as usize;
/// Words of the bit map.
const WORDS: usize = 16;

/// A set of core indices below [`CpuSet::CAPACITY`], stored inline as a bit map.
///
/// ```
/// use ipiq_abi::{CpuSet, Error};
/// let mut set = CpuSet::new();
/// assert_eq!(set.insert(1), Ok(true));
/// assert_eq!(set.insert(130), Ok(true));
/// assert!(set.contains(130) && !set.contains(2));
/// assert_eq!(set.iter().collect::<Vec<_>>(), [1, 130]);
/// assert_eq!(CpuSet::all(3).map(|s| s.len()), Ok(3));
/// // A core id the set cannot hold is an error, never a panic or an allocation.
/// assert_eq!(CpuSet::single(usize::MAX), Err(Error::NoSuchCpu(usize::MAX)));
/// assert_eq!(CpuSet::from_cpus([0, 5000]), Err(Error::NoSuchCpu(5000)));
/// ```
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct CpuSet {
    /// Bit `i % 64` of word `i / 64` is set when core `i` is in the set.
    words: [u64; WORDS],
}

impl CpuSet {
    /// How many cores a set can name: ids `0..CAPACITY`. The kernel's queues (`ipiq::Ipiq::new`) serve
    /// at most this many cores.
    pub const CAPACITY: usize = WORDS * BITS;

    /// The empty set.
    pub const fn new() -> Self {
        Self { words: [0; WORDS] }
    }

    /// Every core in `0..count`. [`Error::NoSuchCpu`] naming `CAPACITY` (the first core that
    /// does not fit) if `count` is larger than [`CpuSet::CAPACITY`].
    pub fn all(count: usize) -> Result<Self, Error> {
        if count > Self::CAPACITY {
            return Err(Error::NoSuchCpu(Self::CAPACITY));
        }
        let mut set = Self::new();
        let (full, rest) = (count / BITS, count % BITS);
        for word in &mut set.words[..full] {
            *word = u64::MAX;
        }
        if rest > 0 {
            set.words[full] = (1 << rest) - 1;
        }
        Ok(set)
    }

    /// The set holding only `cpu`; [`Error::NoSuchCpu`] if `cpu` is not below
    /// [`CpuSet::CAPACITY`].
    pub fn single(cpu: CpuId) -> Result<Self, Error> {
        let mut set = Self::new();
        set.insert(cpu)?;
        Ok(set)
    }

    /// The set of the cores `cpus` yields; [`Error::NoSuchCpu`] for the first one not below
    /// [`CpuSet::CAPACITY`] (the iterator is not read further).
    pub fn from_cpus(cpus: impl IntoIterator<Item = CpuId>) -> Result<Self, Error> {
        let mut set = Self::new();
        for cpu in cpus {
            set.insert(cpu)?;
        }
        Ok(set)
    }

    /// Adds `cpu`; returns whether it was absent. [`Error::NoSuchCpu`] (and the set unchanged)
    /// if `cpu` is not below [`CpuSet::CAPACITY`].
    pub fn insert(&mut self, cpu: CpuId) -> Result<bool, Error> {
        let word = self
            .words
            .get_mut(cpu / BITS)
            .ok_or(Error::NoSuchCpu(cpu))?;
        let bit = 1 << (cpu % BITS);
        let absent = *word & bit == 0;
        *word |= bit;
        Ok(absent)
    }

    /// Removes `cpu`; returns whether it was present (a core past the capacity never is).
    pub fn remove(&mut self, cpu: CpuId) -> bool {
        match self.words.get_mut(cpu / BITS) {
            Some(word) => {
                let bit = 1 << (cpu % BITS);
                let present = *word & bit != 0;
                *word &= !bit;
                present
            }
            None => false,
        }
    }

    /// Whether `cpu` is in the set (any id may be asked).
    pub fn contains(&self, cpu: CpuId) -> bool {
        self.words
            .get(cpu / BITS)
            .is_some_and(|word| word & (1 << (cpu % BITS)) != 0)
    }

    /// How many cores the set holds.
    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Whether the set holds no core.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// The set as bit-map words (bit `i % 64` of word `i / 64` is core `i`), up to the last word
    /// that names a core: the form the `sys_ipiq_*` syscalls take. Empty for the empty set.
    ///
    /// ```
    /// use ipiq_abi::CpuSet;
    /// assert_eq!(CpuSet::from_cpus([1, 65]).unwrap().words(), [2, 2]);
    /// assert!(CpuSet::new().words().is_empty());
    /// ```
    pub fn words(&self) -> &[u64] {
        let used = self
            .words
            .iter()
            .rposition(|&w| w != 0)
            .map_or(0, |i| i + 1);
        &self.words[..used]
    }

    /// The highest core in the set.
    pub fn max(&self) -> Option<CpuId> {
        self.words
            .iter()
            .enumerate()
            .rev()
            .find(|(_, &w)| w != 0)
            .map(|(i, w)| i * BITS + (BITS - 1 - w.leading_zeros() as usize))
    }

    /// The cores in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = CpuId> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &word)| {
            let mut rest = word;
            core::iter::from_fn(move || {
                if rest == 0 {
                    return None;
                }
                let bit = rest.trailing_zeros() as usize;
                rest &= rest - 1;
                Some(i * BITS + bit)
            })
        })
    }
}

impl fmt::Debug for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::vec::Vec;

    #[test]
    fn insert_remove_across_words() {
        let mut set = CpuSet::new();
        assert!(set.is_empty());
        assert_eq!(set.insert(0), Ok(true));
        assert_eq!(set.insert(64), Ok(true));
        assert_eq!(set.insert(200), Ok(true));
        assert_eq!(set.insert(64), Ok(false));
        assert_eq!(set.len(), 3);
        assert_eq!(set.max(), Some(200));
        assert_eq!(set.iter().collect::<Vec<_>>(), [0, 64, 200]);
        assert!(set.remove(200));
        assert!(!set.remove(200));
        assert_eq!(set.max(), Some(64));
        assert_eq!(Ok(set), CpuSet::from_cpus([0, 64]));
    }

    #[test]
    fn empty_and_all() {
        assert_eq!(CpuSet::new().max(), None);
        assert_eq!(CpuSet::all(0), Ok(CpuSet::new()));
        assert_eq!(CpuSet::all(65).map(|s| s.iter().count()), Ok(65));
        assert_eq!(CpuSet::all(64).map(|s| s.max()), Ok(Some(63)));
        let full = CpuSet::all(CpuSet::CAPACITY).unwrap();
        assert_eq!(full.len(), CpuSet::CAPACITY);
        assert_eq!(full.max(), Some(CpuSet::CAPACITY - 1));
        assert!(!CpuSet::new().contains(usize::MAX));
    }

    #[test]
    fn ids_past_the_capacity_are_errors_and_change_nothing() {
        let cap = CpuSet::CAPACITY;
        for id in [cap, cap + 1, cap * 2, 1 << 40, usize::MAX / 64, usize::MAX] {
            assert_eq!(CpuSet::single(id), Err(Error::NoSuchCpu(id)));
            let mut set = CpuSet::single(3).unwrap();
            assert_eq!(set.insert(id), Err(Error::NoSuchCpu(id)));
            assert_eq!(set, CpuSet::single(3).unwrap(), "unchanged");
            assert!(!set.contains(id));
            assert!(!set.remove(id));
            assert_eq!(CpuSet::from_cpus([1, id, 2]), Err(Error::NoSuchCpu(id)));
        }
        assert_eq!(CpuSet::all(cap + 1), Err(Error::NoSuchCpu(cap)));
        assert_eq!(CpuSet::all(usize::MAX), Err(Error::NoSuchCpu(cap)));
        assert_eq!(CpuSet::single(cap - 1).map(|s| s.max()), Ok(Some(cap - 1)));
    }

    /// A small deterministic generator (xorshift), so failures reproduce.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        /// An id biased to word edges and the capacity edge, sometimes past it.
        fn id(&mut self) -> usize {
            let cap = CpuSet::CAPACITY as u64;
            (match self.next() % 8 {
                0 => self.next() % 4,
                1 => cap - 1 - self.next() % 4,
                2 => cap + self.next() % 4,
                3 => (self.next() % 16) * 64 + 63 * (self.next() % 2),
                4 => self.next(),
                _ => self.next() % cap,
            }) as usize
        }
    }

    /// Random insert/remove sequences against a `BTreeSet` model: every query agrees.
    #[test]
    fn behaves_like_a_btreeset_of_ids_below_the_capacity() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for _round in 0..200 {
            let mut set = CpuSet::new();
            let mut model = BTreeSet::new();
            for _step in 0..300 {
                let id = rng.id();
                let fits = id < CpuSet::CAPACITY;
                match rng.next() % 3 {
                    0 | 1 => {
                        let got = set.insert(id);
                        if fits {
                            assert_eq!(got, Ok(model.insert(id)));
                        } else {
                            assert_eq!(got, Err(Error::NoSuchCpu(id)));
                        }
                    }
                    _ => assert_eq!(set.remove(id), model.remove(&id)),
                }
                assert_eq!(set.contains(id), model.contains(&id));
            }
            assert_eq!(set.len(), model.len());
            assert_eq!(set.is_empty(), model.is_empty());
            assert_eq!(set.max(), model.iter().next_back().copied());
            assert_eq!(
                set.iter().collect::<Vec<_>>(),
                model.iter().copied().collect::<Vec<_>>()
            );
            assert_eq!(CpuSet::from_cpus(model.iter().copied()), Ok(set));
            let copy = set;
            assert_eq!(copy, set);
        }
    }
}
