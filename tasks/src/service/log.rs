//! Paging a board's log: how much of a page fits the byte budget, when a reader must reset
//! (events it missed were pruned), and the reset event. A leaf of ListEvents and the streams.
use taskboard_proto::v1;

use crate::db::EventRow;

/// How many of `events` fit in a page of `budget` bytes (0, or more than
/// [`taskboard_proto::EVENTS_PAGE_BYTES`], means that); at least one, so a single large event
/// still goes through.
pub(super) fn within_page_bytes(events: &[EventRow], budget: i32) -> usize {
    let budget = usize::try_from(budget)
        .ok()
        .filter(|b| *b > 0)
        .map_or(taskboard_proto::EVENTS_PAGE_BYTES, |b| {
            b.min(taskboard_proto::EVENTS_PAGE_BYTES)
        });
    let mut total = 0;
    events
        .iter()
        .take_while(|e| {
            total += e.payload.len();
            total <= budget
        })
        .count()
        .max(events.len().min(1))
}

/// Whether a reader at `after_seq` has missed events that are no longer kept (or is ahead of the
/// board): then it must reload and continue from `head`.
pub(super) fn needs_reset(after_seq: i64, head: i64, events: &[EventRow]) -> bool {
    if after_seq > head {
        return true;
    }
    after_seq < head && events.first().is_none_or(|e| e.seq != after_seq + 1)
}

/// The `reset` event: "reload the board, then continue from `head`".
pub(super) fn reset_event(board_id: i64, head: i64) -> v1::Event {
    v1::Event {
        board_id,
        seq: head,
        kind: taskboard_proto::nats::KIND_RESET.into(),
        payload: taskboard_proto::nats::reset_payload(board_id, head).into(),
        committed_at: None,
        task_id: 0,
        actor: 0,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An event of board 1 with an empty payload (shared with the streams' tests).
    pub(crate) fn ev(seq: i64) -> EventRow {
        EventRow {
            board_id: 1,
            seq,
            kind: "created".into(),
            task_id: 1,
            payload: bytes::Bytes::new(),
            committed_at: chrono::Utc::now(),
            actor: None,
            trace: None,
        }
    }

    #[test]
    fn a_page_stops_before_its_payloads_pass_the_byte_budget() {
        let big = |seq| EventRow {
            payload: bytes::Bytes::from(vec![b'x'; 1024 * 1024 + 1]),
            ..ev(seq)
        };
        let events: Vec<EventRow> = (1..=10).map(big).collect();
        assert_eq!(within_page_bytes(&events, 0), 3);
        assert_eq!(within_page_bytes(&events, i32::MAX), 3, "never past 4 MiB");
        assert_eq!(within_page_bytes(&events, 2_200_000), 2, "a smaller budget");
        assert_eq!(within_page_bytes(&[ev(1), ev(2)], 0), 2);
        let huge = EventRow {
            payload: bytes::Bytes::from(vec![b'x'; 5 * 1024 * 1024]),
            ..ev(1)
        };
        assert_eq!(within_page_bytes(&[huge], 1), 1, "one event always goes");
        assert_eq!(within_page_bytes(&[], 0), 0);
    }

    #[test]
    fn reader_at_head_needs_no_reset() {
        assert!(!needs_reset(5, 5, &[]));
        assert!(!needs_reset(0, 0, &[]));
    }

    #[test]
    fn contiguous_events_need_no_reset() {
        assert!(!needs_reset(3, 5, &[ev(4), ev(5)]));
    }

    #[test]
    fn pruned_events_need_a_reset() {
        assert!(needs_reset(3, 9, &[ev(7), ev(8), ev(9)]));
        assert!(needs_reset(3, 9, &[]));
    }

    #[test]
    fn a_reader_ahead_of_the_board_needs_a_reset() {
        assert!(needs_reset(10, 4, &[]));
    }
}
