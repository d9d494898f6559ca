//! [`CpuSet`]: a set of cores of any size (no 32- or 64-core limit, unlike the seed's
//! `cpumask_t`).

use alloc::vec::Vec;
use core::fmt;

use crate::platform::CpuId;

const BITS: usize = u64::BITS as usize;

/// A set of core indices, stored as a growable bit map.
///
/// ```
/// use ipiq::CpuSet;
/// let mut set = CpuSet::new();
/// set.insert(1);
/// set.insert(130);
/// assert!(set.contains(130) && !set.contains(2));
/// assert_eq!(set.iter().collect::<Vec<_>>(), [1, 130]);
/// assert_eq!(CpuSet::all(3).len(), 3);
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct CpuSet {
    /// Bit `i % 64` of word `i / 64` is set when core `i` is in the set. Trailing zero words are
    /// allowed (equality ignores them through `normalize`).
    words: Vec<u64>,
}

impl CpuSet {
    /// The empty set.
    pub const fn new() -> Self {
        Self { words: Vec::new() }
    }

    /// Every core in `0..count`.
    pub fn all(count: usize) -> Self {
        let mut set = Self::new();
        for cpu in 0..count {
            set.insert(cpu);
        }
        set
    }

    /// The set holding only `cpu`.
    pub fn single(cpu: CpuId) -> Self {
        let mut set = Self::new();
        set.insert(cpu);
        set
    }

    /// Adds `cpu`; returns whether it was absent.
    pub fn insert(&mut self, cpu: CpuId) -> bool {
        let (word, bit) = (cpu / BITS, cpu % BITS);
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        let absent = self.words[word] & (1 << bit) == 0;
        self.words[word] |= 1 << bit;
        absent
    }

    /// Removes `cpu`; returns whether it was present.
    pub fn remove(&mut self, cpu: CpuId) -> bool {
        let present = self.contains(cpu);
        if present {
            self.words[cpu / BITS] &= !(1 << (cpu % BITS));
            self.normalize();
        }
        present
    }

    /// Whether `cpu` is in the set.
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

    fn normalize(&mut self) {
        while self.words.last() == Some(&0) {
            self.words.pop();
        }
    }
}

impl FromIterator<CpuId> for CpuSet {
    fn from_iter<I: IntoIterator<Item = CpuId>>(iter: I) -> Self {
        let mut set = Self::new();
        for cpu in iter {
            set.insert(cpu);
        }
        set
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

    #[test]
    fn insert_remove_across_words() {
        let mut set = CpuSet::new();
        assert!(set.is_empty());
        assert!(set.insert(0));
        assert!(set.insert(64));
        assert!(set.insert(200));
        assert!(!set.insert(64));
        assert_eq!(set.len(), 3);
        assert_eq!(set.max(), Some(200));
        assert_eq!(set.iter().collect::<Vec<_>>(), [0, 64, 200]);
        assert!(set.remove(200));
        assert!(!set.remove(200));
        assert_eq!(set.max(), Some(64));
        assert_eq!(set, [0, 64].into_iter().collect());
    }

    #[test]
    fn empty_and_all() {
        assert_eq!(CpuSet::new().max(), None);
        assert_eq!(CpuSet::all(0), CpuSet::new());
        assert_eq!(CpuSet::all(65).iter().count(), 65);
        assert!(!CpuSet::new().contains(usize::MAX));
    }
}
