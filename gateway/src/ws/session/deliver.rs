//! A session's writing side: the queued deliveries in seq order (`deliver`), batched into one
//! vectored write (`flush`), and the gaps read from the log (`replay`).
use std::collections::HashMap;

use bytes::Bytes;
use tokio::io::AsyncWrite;

use super::{Ctx, End};
use crate::fanout::delivery::{step, Delivery, Kind as DeliveryKind, Step};
use crate::fanout::outlet::Rest;
use crate::ws::close::rewind;
use crate::ws::frame::text_frame;
use crate::ws::outbound::{WriteError, Writer};

impl Ctx {
    /// Writes what was queued (after the rest of a frame the hub began), skipping what was
    /// already sent; fetches a gap (or what a head marker says is missing) from the log first.
    pub(super) async fn deliver<W: AsyncWrite + Unpin>(
        &self,
        wr: &mut Writer<W>,
        rest: Option<Rest>,
        incoming: &mut Vec<Delivery>,
        last: &mut HashMap<i64, i64>,
        batch: &mut Vec<Delivery>,
    ) -> Result<(), End> {
        let m = &self.hub.metrics;
        if let Some((bytes, d)) = rest {
            wr.finish(&bytes).await?;
            m.frames_sent.increment(1);
            m.bytes_sent.increment(d.wire(self.deflate).len() as u64);
            d.done(m);
        }
        batch.clear();
        for d in incoming.drain(..) {
            let prev = last.get(&d.board_id).copied();
            match step(d.kind, d.seq, prev) {
                Step::Skip => d.done(m),
                Step::Write => {
                    if d.kind == DeliveryKind::Event {
                        last.insert(d.board_id, d.seq);
                    }
                    batch.push(d);
                }
                Step::Fetch => {
                    // A gap: write what is batched, fetch the gap, then carry on.
                    self.flush(wr, batch, last).await?;
                    // Boxed: the gRPC call's state is large and only needed on this rare path,
                    // so it does not belong in every idle connection's task.
                    Box::pin(self.replay(wr, d.board_id, last, true)).await?;
                    match d.kind {
                        DeliveryKind::Event if last.get(&d.board_id).is_none_or(|l| d.seq > *l) => {
                            last.insert(d.board_id, d.seq);
                            batch.push(d);
                        }
                        _ => d.done(m),
                    }
                }
            }
        }
        self.flush(wr, batch, last).await
    }

    /// Writes the batched events with one vectored write, then counts them. When the write times
    /// out, `last` is moved back to what the client will have received whole, so the resume hint
    /// names no event it never got.
    pub(super) async fn flush<W: AsyncWrite + Unpin>(
        &self,
        wr: &mut Writer<W>,
        batch: &mut Vec<Delivery>,
        last: &mut HashMap<i64, i64>,
    ) -> Result<(), End> {
        if batch.is_empty() {
            return Ok(());
        }
        if let Err(e) = wr.frames(batch).await {
            if matches!(e, WriteError::TimedOut) {
                rewind(last, &batch[wr.whole.min(batch.len())..]);
            }
            return Err(e.into());
        }
        let m = &self.hub.metrics;
        m.frames_sent.increment(batch.len() as u64);
        m.bytes_sent.increment(
            batch
                .iter()
                .map(|d| d.wire(self.deflate).len() as u64)
                .sum(),
        );
        for d in batch.drain(..) {
            d.done(m);
        }
        Ok(())
    }

    /// Sends the board's events after `last[board]` from the task service, until it has no more.
    /// A `reset` (events pruned) is passed on as `{"type":"reset",...}`. With `gap` (events the
    /// hub did not carry, after the session was authorized), an access change that reaches this
    /// user ends the replay with it, as the hub would have (`since` replays of a session just
    /// authorized do not: a removal there may have been followed by a new membership).
    pub(super) async fn replay<W: AsyncWrite + Unpin>(
        &self,
        wr: &mut Writer<W>,
        board: i64,
        last: &mut HashMap<i64, i64>,
        gap: bool,
    ) -> Result<(), End> {
        loop {
            let after = last.get(&board).copied().unwrap_or(0);
            // At most MAX_REPLAYS reads in flight in this gateway (a crowd of resumers queues
            // instead of starving the task service's pool), one per page however many need it.
            let page = self.replays.page(board, after).await.map_err(|s| {
                tracing::warn!(board, status = %s, "replay failed");
                End::ReplayUnavailable
            })?;
            if page.reset {
                let reset = taskboard_proto::nats::reset_payload(board, page.head_seq);
                wr.bytes(&text_frame(reset.as_bytes())).await?;
                last.insert(board, page.head_seq);
                return Ok(());
            }
            let revoked = gap
                .then(|| {
                    page.events.iter().enumerate().find_map(|(i, e)| {
                        let c = crate::fanout::access::of(&e.payload)?;
                        c.reaches(self.user).then(|| (i, c.close(board)))
                    })
                })
                .flatten();
            let upto = revoked.as_ref().map_or(page.events.len(), |(i, _)| i + 1);
            let frames: Vec<Bytes> = page.events[..upto]
                .iter()
                .map(|e| {
                    self.deflate
                        .then(|| self.hub.deflated(&e.payload))
                        .flatten()
                        .unwrap_or_else(|| text_frame(&e.payload))
                })
                .collect();
            let (last_seq, head) = (page.events[..upto].last().map(|e| e.seq), page.head_seq);
            // Only the frames are kept while the client reads them.
            drop(page);
            wr.frames(&frames).await?;
            let m = &self.hub.metrics;
            m.events_replayed.increment(frames.len() as u64);
            m.frames_sent.increment(frames.len() as u64);
            m.bytes_sent
                .increment(frames.iter().map(|f| f.len() as u64).sum());
            let Some(seq) = last_seq else {
                return Ok(());
            };
            last.insert(board, seq);
            if let Some((_, why)) = revoked {
                return Err(End::Revoked(why));
            }
            // Pages are cut by count and by bytes: done when the board's head is reached.
            if seq >= head {
                return Ok(());
            }
        }
    }
}
