//! Watchers: one board's socket per session, read by a task of its own; each frame checked by
//! seq, each created frame's latency recorded; a session ends by waiting for what was written.
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use goose::prelude::*;
use rand_distr::Distribution;
use tokio::sync::mpsc;

use super::{lock, Shared, FRAME_REQUEST};
use crate::extract;

/// How long one watcher transaction reads before handing back to Goose (which checks for the end
/// of the run between transactions).
const SLICE: Duration = Duration::from_millis(500);

/// A watcher's view of its board: expects seq `last + 1` next.
#[derive(Debug, Default)]
struct Seqs {
    last: i64,
    /// Seqs skipped over (a later one came first): missing unless they turn up.
    holes: BTreeSet<i64>,
    delivered: u64,
    duplicates: u64,
    out_of_order: u64,
    unparsed: u64,
}

impl Seqs {
    fn starting_after(last: i64) -> Seqs {
        Seqs {
            last,
            ..Seqs::default()
        }
    }

    fn observe(&mut self, seq: i64) {
        self.delivered += 1;
        if seq == self.last + 1 {
            self.last = seq;
        } else if seq > self.last {
            // At most a bounded number of holes per jump: a garbled seq must not eat the memory.
            let from = (self.last + 1).max(seq - 100_000);
            self.holes.extend(from..seq);
            self.last = seq;
        } else if self.holes.remove(&seq) {
            self.out_of_order += 1;
        } else {
            self.duplicates += 1;
        }
    }
}

/// What a socket's reader task hands over.
pub(super) enum Read {
    Frame(Instant, Bytes),
    Closed(u16),
    Failed(String),
}

/// A watcher between transactions: its board, its socket (read by a task of its own, so frames
/// are timed when they arrive, and reading never stops halfway through one) and its record.
pub(super) struct Watch {
    board: i64,
    frames: Option<mpsc::UnboundedReceiver<Read>>,
    reader: Option<tokio::task::JoinHandle<()>>,
    seqs: Seqs,
    /// Where the session ends, and (once it has) the seq it must reach before closing.
    session_end: Instant,
    drain: Option<(i64, Instant)>,
    sessions: u64,
}

/// A watcher user's handle on its state.
#[derive(Clone)]
struct WatchRef(Arc<tokio::sync::Mutex<Watch>>);

impl Shared {
    /// Adds a finished (or final) watcher session to its board's totals.
    fn settle(&self, w: &mut Watch, tail_missing: u64) {
        let last = w.seqs.last;
        let s = std::mem::replace(&mut w.seqs, Seqs::starting_after(last));
        let missing = s.holes.len() as u64 + tail_missing;
        let mut totals = lock(&self.totals);
        let t = totals.entry(w.board).or_default();
        t.sessions += 1;
        t.delivered += s.delivered;
        t.missing += missing;
        t.duplicates += s.duplicates;
        t.out_of_order += s.out_of_order;
        t.unparsed += s.unparsed;
        drop(totals);
        if missing + s.duplicates + s.out_of_order > 0 {
            tracing::warn!(
                board = w.board,
                missing,
                duplicates = s.duplicates,
                out_of_order = s.out_of_order,
                first_holes = ?s.holes.iter().take(5).collect::<Vec<_>>(),
                "watcher session ended with a delivery fault"
            );
        }
    }
}

/// The POST→frame latency of a frame received at `at`: created frames carry the writer's send
/// time (microseconds after `base`) in their title; other kinds carry the create's, so none.
fn created_latency(base: Instant, at: Instant, frame: &[u8]) -> Option<Duration> {
    if !extract::is_created(frame) {
        return None;
    }
    let sent = base + Duration::from_micros(extract::fields(frame).sent_us?);
    Some(at.saturating_duration_since(sent))
}

/// Checks one thing the reader handed over (a frame's seq; a created frame's latency goes to
/// `latencies`); returns how the socket ended, if it did.
fn handle(
    base: Instant,
    seqs: &mut Seqs,
    r: Read,
    latencies: &mut Vec<Duration>,
) -> Option<Result<u16, String>> {
    match r {
        Read::Frame(at, payload) => {
            match extract::fields(&payload).seq {
                Some(seq) => seqs.observe(seq),
                None => {
                    seqs.delivered += 1;
                    seqs.unparsed += 1;
                }
            }
            if let Some(l) = created_latency(base, at, &payload) {
                latencies.push(l);
            }
            None
        }
        Read::Closed(code) => Some(Ok(code)),
        Read::Failed(e) => Some(Err(e)),
    }
}

/// [`handle`]s everything the reader has handed over so far.
fn take(
    base: Instant,
    seqs: &mut Seqs,
    rx: &mut mpsc::UnboundedReceiver<Read>,
    latencies: &mut Vec<Duration>,
) -> Option<Result<u16, String>> {
    while let Ok(r) = rx.try_recv() {
        if let Some(end) = handle(base, seqs, r, latencies) {
            return Some(end);
        }
    }
    None
}

/// One slice of a watcher's life: connect or resume if it has no socket, read for [`SLICE`],
/// and at the end of its session wait for the events written before it, then close.
pub(super) async fn slice(user: &mut GooseUser, shared: &Shared) -> TransactionResult {
    let watch = match user.get_session_data::<WatchRef>() {
        Some(WatchRef(w)) => w.clone(),
        None => {
            let board = shared.pick_board();
            let w = Arc::new(tokio::sync::Mutex::new(Watch {
                board,
                frames: None,
                reader: None,
                // The first session starts after what was written before it.
                seqs: Seqs::starting_after(shared.committed(board)),
                session_end: Instant::now(),
                drain: None,
                sessions: 0,
            }));
            lock(&shared.watchers).push(w.clone());
            user.set_session_data(WatchRef(w.clone()));
            w
        }
    };
    let mut w = watch.lock().await;
    if w.frames.is_none() {
        let started = Instant::now();
        let name = if w.sessions == 0 { "connect" } else { "resume" };
        match shared.open(w.board, Some(w.seqs.last)).await {
            Ok((rx, reader)) => {
                user.record_custom_request_duration(
                    "WS",
                    name,
                    started.elapsed(),
                    true,
                    None,
                    None,
                )
                .await?;
                w.frames = Some(rx);
                w.reader = Some(reader);
                w.sessions += 1;
                if w.sessions > 1 {
                    lock(&shared.summary).resumes += 1;
                }
                let secs = shared.session.sample(&mut rand::rng());
                w.session_end = Instant::now() + Duration::from_secs_f64(secs.min(3600.0));
                w.drain = None;
            }
            Err(e) => {
                let msg = format!("{e:#}");
                user.record_custom_request_duration(
                    "WS",
                    name,
                    started.elapsed(),
                    false,
                    None,
                    Some(&msg),
                )
                .await?;
                // A refused connect (403, gateway down) is retried a slice later, not at once:
                // the load suite must not turn into a connect flood.
                tokio::time::sleep(SLICE).await;
                return Ok(());
            }
        }
    }
    let slice_end = Instant::now() + SLICE;
    let mut latencies = Vec::new();
    let mut ended = None;
    let mut rx = w.frames.take().expect("a socket is open here");
    loop {
        ended = ended.or_else(|| take(shared.base, &mut w.seqs, &mut rx, &mut latencies));
        if ended.is_some() {
            break;
        }
        let now = Instant::now();
        if w.drain.is_none() && now >= w.session_end {
            w.drain = Some((shared.committed(w.board), now + Duration::from_secs(2)));
        }
        if let Some((want, until)) = w.drain {
            if w.seqs.last >= want || now >= until {
                break;
            }
        }
        if now >= slice_end {
            break;
        }
        // Wait for the next frame (recv is cancel-safe: nothing is lost on the timeout).
        let wait = slice_end.min(w.drain.map_or(slice_end, |d| d.1)) - now;
        if let Ok(Some(r)) = tokio::time::timeout(wait, rx.recv()).await {
            ended = handle(shared.base, &mut w.seqs, r, &mut latencies);
        }
    }
    for l in latencies {
        lock(&shared.latency).saturating_record(l.as_micros() as u64);
        user.record_custom_request_duration("WS", FRAME_REQUEST, l, true, None, None)
            .await?;
    }
    let done = match (&ended, w.drain) {
        (Some(_), _) => true,
        (None, Some((want, until))) => w.seqs.last >= want || Instant::now() >= until,
        (None, None) => false,
    };
    if !done {
        w.frames = Some(rx);
        return Ok(());
    }
    if let Some(r) = w.reader.take() {
        r.abort();
    }
    let tail = match (&ended, w.drain) {
        // The server ended it: the next session resumes from the last seq, so nothing is
        // missing yet.
        (Some(end), _) => {
            lock(&shared.summary).server_closes += 1;
            tracing::debug!(board = w.board, ?end, "server ended a watcher session");
            0
        }
        (None, Some((want, _))) => (want - w.seqs.last).max(0) as u64,
        (None, None) => 0,
    };
    shared.settle(&mut w, tail);
    if tail > 0 {
        user.record_custom_request_duration(
            "WS",
            "missing frames",
            Duration::ZERO,
            false,
            None,
            Some("events written before the session ended never arrived"),
        )
        .await?;
    }
    Ok(())
}

/// After Goose stops: the watchers still open wait (up to `settle`) for the last events written,
/// then every one of them is settled.
pub(super) async fn settle_all(shared: &Shared, settle: Duration) {
    let until = Instant::now() + settle;
    let watchers: Vec<_> = lock(&shared.watchers).clone();
    for watch in watchers {
        let mut w = watch.lock().await;
        let Some(mut rx) = w.frames.take() else {
            continue;
        };
        let want = shared.committed(w.board);
        let mut latencies = Vec::new();
        let mut ended = None;
        while w.seqs.last < want && ended.is_none() {
            match tokio::time::timeout_at(until.into(), rx.recv()).await {
                Ok(Some(r)) => ended = handle(shared.base, &mut w.seqs, r, &mut latencies),
                _ => break,
            }
        }
        if ended.is_none() {
            take(shared.base, &mut w.seqs, &mut rx, &mut latencies);
        }
        for l in latencies {
            lock(&shared.latency).saturating_record(l.as_micros() as u64);
        }
        if let Some(r) = w.reader.take() {
            r.abort();
        }
        let short = (want - w.seqs.last).max(0) as u64;
        if short > 0 {
            lock(&shared.summary).unsettled += 1;
        }
        shared.settle(&mut w, short);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_frames_leave_nothing_missing() {
        let mut s = Seqs::starting_after(4);
        for q in 5..=9 {
            s.observe(q);
        }
        assert_eq!(
            (s.last, s.holes.len(), s.duplicates, s.out_of_order),
            (9, 0, 0, 0)
        );
    }

    #[test]
    fn a_skipped_seq_is_missing_until_it_arrives_late() {
        let mut s = Seqs::starting_after(0);
        for q in [1, 2, 4, 5] {
            s.observe(q);
        }
        assert_eq!(s.holes.iter().copied().collect::<Vec<_>>(), [3]);
        s.observe(3);
        assert!(s.holes.is_empty());
        assert_eq!(s.out_of_order, 1);
        s.observe(4);
        assert_eq!(s.duplicates, 1);
        assert_eq!(s.delivered, 6);
    }

    #[test]
    fn a_wild_seq_cannot_allocate_without_bound() {
        let mut s = Seqs::starting_after(0);
        s.observe(i64::MAX / 2);
        assert!(s.holes.len() <= 100_000);
    }

    #[test]
    fn latency_is_read_from_created_frames_only() {
        let base = Instant::now();
        let at = base + Duration::from_millis(7);
        let created = br#"{"type" : "created", "task_id" : 1, "title" : "lt 2000", "seq" : 1}"#;
        let updated = br#"{"type" : "updated", "task_id" : 1, "title" : "lt 2000", "seq" : 2}"#;
        assert_eq!(
            created_latency(base, at, created),
            Some(Duration::from_millis(5))
        );
        assert_eq!(created_latency(base, at, updated), None);
    }
}
