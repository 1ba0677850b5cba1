//! Reads the few fields the harness needs from an event without a JSON parser: `"seq"`,
//! `"board_id"`, `"task_id"` and the send time the publisher put in the title (`"lt <micros>"`).
//! Tolerates both `"k":v` and PostgreSQL's `"k" : v` spacing.
use memchr::memmem;

/// The fields of one delivered event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fields {
    pub board_id: Option<i64>,
    pub seq: Option<i64>,
    pub task_id: Option<i64>,
    /// Microseconds since the run's base instant, when the publisher intended to send it.
    pub sent_us: Option<u64>,
}

fn number_after(frame: &[u8], key: &[u8]) -> Option<i64> {
    let at = memmem::find(frame, key)? + key.len();
    let rest = &frame[at..];
    let rest = &rest[rest.iter().position(|b| !matches!(b, b' ' | b':'))?..];
    let end = rest
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(rest.len());
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// Whether the event is a `created` one (its title's send time is then the POST's).
pub fn is_created(frame: &[u8]) -> bool {
    let Some(at) = memmem::find(frame, b"\"type\"") else {
        return false;
    };
    let rest = &frame[at + 6..];
    let start = rest
        .iter()
        .position(|b| !matches!(b, b' ' | b':'))
        .unwrap_or(rest.len());
    rest[start..].starts_with(b"\"created\"")
}

/// The prefix of a load-test title; the send time follows it.
pub const TITLE_MARK: &str = "lt ";

/// Extracts what is there; missing fields are `None`.
pub fn fields(frame: &[u8]) -> Fields {
    let sent_us = memmem::find(frame, b"\"lt ").and_then(|at| {
        let rest = &frame[at + 4..];
        let end = rest.iter().position(|b| !b.is_ascii_digit())?;
        std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
    });
    Fields {
        board_id: number_after(frame, b"\"board_id\""),
        seq: number_after(frame, b"\"seq\""),
        task_id: number_after(frame, b"\"task_id\""),
        sent_us,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_compact_and_spaced_json() {
        let a = br#"{"type":"created","task_id":7,"board_id":3,"title":"lt 12345","seq":42}"#;
        let b = br#"{"type" : "created", "task_id" : 7, "board_id" : 3, "title" : "lt 12345", "seq" : 42, "task" : {"id" : 7, "board_id" : 3}}"#;
        for f in [&a[..], &b[..]] {
            assert_eq!(
                fields(f),
                Fields {
                    board_id: Some(3),
                    seq: Some(42),
                    task_id: Some(7),
                    sent_us: Some(12345)
                }
            );
        }
    }

    #[test]
    fn created_is_told_from_the_other_kinds_in_either_spacing() {
        assert!(is_created(br#"{"type":"created","seq":1}"#));
        assert!(is_created(br#"{"type" : "created", "seq" : 1}"#));
        assert!(!is_created(br#"{"type" : "updated", "title" : "created"}"#));
        assert!(!is_created(br#"{"seq":1}"#));
    }

    #[test]
    fn the_original_event_has_no_seq() {
        let f = fields(br#"{"type":"created","task_id":9,"board_id":1,"title":"x","completed":null,"timestamp":1}"#);
        assert_eq!((f.seq, f.task_id, f.sent_us), (None, Some(9), None));
    }
}
