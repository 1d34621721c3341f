//! Event notes within what the API server accepts.

/// Longest note events.k8s.io/v1 accepts ("must be no more than 1kB"): a
/// longer one is rejected and the Event is lost.
pub const MAX_NOTE_BYTES: usize = 1024;

/// `text` cut to [`MAX_NOTE_BYTES`] on a character boundary, ending in `…`
/// when cut.
pub fn note(text: &str) -> String {
    if text.len() <= MAX_NOTE_BYTES {
        return text.to_owned();
    }
    let mut end = MAX_NOTE_BYTES - '…'.len_utf8();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_notes_are_cut_to_the_api_servers_limit_on_a_character_boundary() {
        assert_eq!(note("short"), "short");
        let exact = "x".repeat(MAX_NOTE_BYTES);
        assert_eq!(note(&exact), exact);
        let long = "é".repeat(2000);
        let cut = note(&long);
        assert!(cut.len() <= MAX_NOTE_BYTES, "{}", cut.len());
        assert!(cut.ends_with('…'));
    }
}
