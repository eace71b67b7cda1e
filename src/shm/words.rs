//! Byte copies into and out of rings of atomic 64-bit words.
//!
//! Shared memory is only ever touched through `AtomicU64` with relaxed
//! ordering (plain moves on x86_64), so a reader racing a writer in another
//! process sees stale or torn *values*, never undefined behaviour. Ordering
//! between entries and their publication is done by the callers with
//! acquire/release on the head and cursor words.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Rounds a payload length up to whole words.
pub fn words_for(len: usize) -> usize {
    len.div_ceil(8)
}

/// Word at ring position `word` (wrapping).
#[inline]
pub fn load(ring: &[AtomicU64], word: u64) -> u64 {
    ring[(word % ring.len() as u64) as usize].load(Relaxed)
}

/// Stores `v` at ring position `word` (wrapping).
#[inline]
pub fn store(ring: &[AtomicU64], word: u64, v: u64) {
    ring[(word % ring.len() as u64) as usize].store(v, Relaxed)
}

/// Writes `bytes` from ring word position `word` on, zero-padding the last word.
pub fn write_bytes(ring: &[AtomicU64], mut word: u64, bytes: &[u8]) {
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        store(ring, word, u64::from_le_bytes(c.try_into().unwrap()));
        word += 1;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut last = [0u8; 8];
        last[..rest.len()].copy_from_slice(rest);
        store(ring, word, u64::from_le_bytes(last));
    }
}

/// Appends `len` bytes read from ring word position `word` on to `out`.
pub fn read_bytes(ring: &[AtomicU64], mut word: u64, len: usize, out: &mut Vec<u8>) {
    out.reserve(len);
    let mut left = len;
    while left > 0 {
        let b = load(ring, word).to_le_bytes();
        let n = left.min(8);
        out.extend_from_slice(&b[..n]);
        left -= n;
        word += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_across_wrap() {
        let ring: Vec<AtomicU64> = (0..5).map(|_| AtomicU64::new(0)).collect();
        let data: Vec<u8> = (0..29).collect();
        write_bytes(&ring, 3, &data);
        let mut out = Vec::new();
        read_bytes(&ring, 3, data.len(), &mut out);
        assert_eq!(out, data);
        assert_eq!(words_for(29), 4);
    }
}
