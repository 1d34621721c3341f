//! Event notes within what the API server accepts, and Events whose note
//! changes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, Recorder, Reporter};

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

/// How often an unchanged note is published again on one object.
const REPEAT: Duration = Duration::from_secs(600);

/// Most entries kept: stale ones (older than `REPEAT`) go first.
const MAX_REMEMBERED: usize = 10_000;

/// Events that say why, on objects whose why changes (a source's skipped
/// targets, its annotation errors). kube's `Recorder` folds repeats of one
/// reason on one object into a series that keeps the *first* note for
/// minutes, so after a user fixes one bad annotation and breaks another the
/// Event would still name the first. Here each distinct note is a new
/// Event, and an unchanged note is published at most once per `REPEAT`
/// (reconciles repeat).
pub struct NotedEvents {
    client: kube::Client,
    reporter: Reporter,
    /// (object uid, reason) → last note and when it was published.
    last: Mutex<HashMap<(String, String), (String, Instant)>>,
}

impl NotedEvents {
    pub fn new(client: kube::Client, reporter: Reporter) -> Self {
        NotedEvents {
            client,
            reporter,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// Publishes `ev` on `regarding` unless the same note was published on
    /// it less than `REPEAT` ago.
    pub async fn publish(&self, ev: &Event, regarding: &ObjectReference) -> kube::Result<()> {
        let key = (regarding.uid.clone().unwrap_or_default(), ev.reason.clone());
        let note = ev.note.clone().unwrap_or_default();
        if !self.remember(key.clone(), &note, Instant::now()) {
            return Ok(());
        }
        // A recorder of its own: no series to fold this note into.
        let result = Recorder::new(self.client.clone(), self.reporter.clone())
            .publish(ev, regarding)
            .await;
        if result.is_err() {
            self.last.lock().expect("events lock").remove(&key);
        }
        result
    }

    /// Records `note` for `key` at `now`; false if it is a repeat to skip.
    fn remember(&self, key: (String, String), note: &str, now: Instant) -> bool {
        let mut last = self.last.lock().expect("events lock");
        if let Some((n, at)) = last.get(&key)
            && n == note
            && now.duration_since(*at) < REPEAT
        {
            return false;
        }
        if last.len() >= MAX_REMEMBERED {
            last.retain(|_, (_, at)| now.duration_since(*at) < REPEAT);
            if last.len() >= MAX_REMEMBERED {
                // All recent: forget them (at worst, one repeat each).
                last.clear();
            }
        }
        last.insert(key, (note.to_owned(), now));
        true
    }
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

    #[tokio::test]
    async fn a_changed_note_is_published_and_an_unchanged_one_once_per_repeat() {
        // Never connects: `remember` is all this test calls.
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let events = NotedEvents::new(
            kube::Client::try_from(config).unwrap(),
            Reporter {
                controller: "test".into(),
                instance: None,
            },
        );
        let t0 = Instant::now();
        let key = |uid: &str| (uid.to_owned(), "NoTargets".to_owned());
        assert!(events.remember(key("a"), "not accepted", t0));
        assert!(!events.remember(key("a"), "not accepted", t0 + Duration::from_secs(1)));
        assert!(events.remember(key("a"), "no host", t0 + Duration::from_secs(2)));
        assert!(events.remember(key("b"), "no host", t0 + Duration::from_secs(2)));
        assert!(events.remember(key("a"), "no host", t0 + REPEAT + Duration::from_secs(3)));
        // Bounded: stale entries go once the map is full.
        for i in 0..MAX_REMEMBERED + 10 {
            events.remember(key(&i.to_string()), "x", t0 + REPEAT * 3);
        }
        assert!(events.last.lock().unwrap().len() <= MAX_REMEMBERED);
    }
}
