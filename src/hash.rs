//! A stable hash for names and change detection (std's hasher may change
//! between Rust releases; these values end up in object names and annotations).

/// FNV-1a, 64 bits, as 16 lowercase hex digits.
pub fn fnv1a_64_hex(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        assert_eq!(super::fnv1a_64_hex(b""), "cbf29ce484222325");
        assert_eq!(super::fnv1a_64_hex(b"a"), "af63dc4c8601ec8c");
    }
}
