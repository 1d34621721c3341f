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

/// FNV-1a, 32 bits (short suffixes of object names).
pub fn fnv1a_32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        assert_eq!(super::fnv1a_64_hex(b""), "cbf29ce484222325");
        assert_eq!(super::fnv1a_64_hex(b"a"), "af63dc4c8601ec8c");
        assert_eq!(super::fnv1a_32(b""), 0x811c_9dc5);
        assert_eq!(super::fnv1a_32(b"a"), 0xe40c_292c);
    }
}
