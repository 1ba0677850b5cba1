//! One event as the fan-out carries it ([`Delivery`]: routing data and the WebSocket frame built
//! once), what it is ([`Kind`]), and the per-board seq rule ([`step`]) that the session and the
//! publisher's direct write both follow. A leaf: the hub and the outlets use it, it uses neither.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

/// One event as delivered: routing data from the NATS headers and the complete WebSocket text
/// frame (header and browser JSON), built once and shared (a clone is a reference-count bump) by
/// every recipient, which writes it to its socket as is.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub board_id: i64,
    /// The event's per-board seq; 0 for an unsequenced event.
    pub seq: i64,
    pub kind: Kind,
    pub frame: Bytes,
    /// The same event as a compressed frame (permessage-deflate), built once by the hub when a
    /// recipient negotiated compression and the event is worth compressing.
    pub deflated: Option<Bytes>,
    /// For live events: when it arrived and how many recipients have yet to write it.
    pub timing: Option<Arc<Timing>>,
}

/// What a delivery is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An event with its seq.
    Event,
    /// An event without seq (published by the Go original's task service, which sets no
    /// headers): written as it comes, never deduplicated and never counted in the board's seq.
    Unsequenced,
    /// No frame: "the board's log has reached `seq`". The gateway found events missing (after a
    /// NATS outage, say) and tells subscribers to read them from the log themselves, at their own
    /// pace, instead of pushing a backlog through their bounded queues.
    Head,
}

impl Delivery {
    /// The frame to write to a socket that negotiated compression (`deflate`) or not.
    pub fn wire(&self, deflate: bool) -> &Bytes {
        match &self.deflated {
            Some(d) if deflate => d,
            _ => &self.frame,
        }
    }
}

/// Per-event bookkeeping for the fan-out and end-to-end histograms: one allocation per event,
/// one atomic decrement per delivery; the recipient that writes it last records both.
#[derive(Debug)]
pub struct Timing {
    received: Instant,
    /// Commit time in the task service (µs since the epoch), from the NATS headers.
    committed_us: Option<i64>,
    remaining: AtomicUsize,
}

impl Timing {
    /// Sets how many recipients will write the event (before any of them can finish).
    pub fn expect(&self, recipients: usize) {
        self.remaining.store(recipients, Ordering::Release);
    }
}

impl Delivery {
    /// Builds the frame around `payload` (the one copy of an event the gateway makes).
    pub fn new(board_id: i64, seq: i64, payload: &[u8]) -> Self {
        Delivery {
            board_id,
            seq,
            kind: Kind::Event,
            frame: crate::ws::frame::text_frame(payload),
            deflated: None,
            timing: None,
        }
    }

    /// An event without seq (see [`Kind::Unsequenced`]).
    pub fn unsequenced(board_id: i64, payload: &[u8]) -> Self {
        Delivery {
            board_id,
            seq: 0,
            kind: Kind::Unsequenced,
            frame: crate::ws::frame::text_frame(payload),
            deflated: None,
            timing: None,
        }
    }

    /// A marker: the board's log has reached `seq` (see [`Kind::Head`]).
    pub fn head(board_id: i64, seq: i64) -> Self {
        Delivery {
            board_id,
            seq,
            kind: Kind::Head,
            frame: Bytes::new(),
            deflated: None,
            timing: None,
        }
    }

    /// A live event just received from NATS, timed from now.
    pub fn live(board_id: i64, seq: i64, payload: &[u8], committed_us: Option<i64>) -> Self {
        Delivery {
            timing: Some(Arc::new(Timing {
                received: Instant::now(),
                committed_us,
                remaining: AtomicUsize::new(0),
            })),
            ..Delivery::new(board_id, seq, payload)
        }
    }

    /// Called by each recipient once it has written (or skipped) this event.
    pub fn done(&self, m: &crate::metrics::WsMetrics) {
        if let Some(t) = &self.timing {
            if t.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                m.fanout.record(t.received.elapsed().as_secs_f64());
                if let Some(c) = t.committed_us {
                    let now = chrono::Utc::now().timestamp_micros();
                    m.end_to_end.record(((now - c) as f64 / 1e6).max(0.0));
                }
            }
        }
    }
}

/// What a session does with a delivery, given the last seq it sent of the delivery's board.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Write it (an event then becomes the board's last).
    Write,
    /// Already sent, or a head marker that says nothing new: drop it.
    Skip,
    /// Events are missing before it: read them from the log first.
    Fetch,
}

/// The one rule both the session and the publisher's direct write follow.
pub fn step(kind: Kind, seq: i64, last: Option<i64>) -> Step {
    match (kind, last) {
        (Kind::Unsequenced, _) => Step::Write,
        (Kind::Head, Some(l)) if seq > l => Step::Fetch,
        // Where a board stands is only known once it has a start.
        (Kind::Head, _) => Step::Skip,
        (Kind::Event, Some(l)) if seq <= l => Step::Skip,
        (Kind::Event, Some(l)) if seq > l + 1 => Step::Fetch,
        (Kind::Event, _) => Step::Write,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_for_each_kind_of_delivery() {
        assert_eq!(step(Kind::Event, 5, None), Step::Write);
        assert_eq!(step(Kind::Event, 5, Some(4)), Step::Write);
        assert_eq!(step(Kind::Event, 5, Some(5)), Step::Skip);
        assert_eq!(step(Kind::Event, 5, Some(7)), Step::Skip);
        assert_eq!(step(Kind::Event, 5, Some(3)), Step::Fetch);
        assert_eq!(step(Kind::Unsequenced, 0, Some(3)), Step::Write);
        assert_eq!(step(Kind::Head, 5, None), Step::Skip);
        assert_eq!(step(Kind::Head, 5, Some(5)), Step::Skip);
        assert_eq!(step(Kind::Head, 5, Some(4)), Step::Fetch);
    }
}
