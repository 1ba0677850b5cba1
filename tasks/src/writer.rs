//! Group commit: task mutations that arrive while a commit is in flight share the next
//! transaction and its one WAL flush, each still getting its own answer and its own error.
//!
//! One writer per replica takes whatever is queued (up to `max_batch`), runs it as one pipelined
//! transaction (its plain creates as one multi-row statement) and hands the committed events to the relay, which publishes them at once. A lone
//! mutation runs as its single statement, as before, so an idle service adds no latency. When a
//! statement of a batch fails (a deadlock with another replica, an out-of-range value), nothing
//! of the batch was committed and every mutation is retried on its own, so one item's error never
//! fails the others.
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

use crate::access::Caller;
use crate::db::{self, Applied, BatchError, EventRow, Mutation, Pool};
use crate::Error;

/// Mutations waiting for the writer; callers wait (back-pressure) beyond this.
const QUEUE: usize = 4096;

type Reply = oneshot::Sender<Result<Option<Applied>, Error>>;

struct Item {
    mutation: Mutation,
    who: Caller,
    reply: Reply,
    /// The caller's span (tracing on): the commit links to it, the event carries its context.
    span: tracing::Span,
}

/// The handle callers use (cheap to clone); the writer task stops when every handle is gone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Item>,
}

impl Writer {
    /// Starts the writer on `tracker`. Committed events go to `committed` (the relay publishes
    /// them); when that queue is full they wait in the outbox for the relay's next scan instead.
    pub fn spawn(
        pool: Pool,
        committed: mpsc::Sender<Vec<EventRow>>,
        max_batch: usize,
        tracker: &TaskTracker,
    ) -> Writer {
        let (tx, rx) = mpsc::channel(QUEUE);
        tracker.spawn(run(pool, rx, committed, max_batch.max(1)));
        Writer { tx }
    }

    /// Applies `mutation` for `who` in the next commit; `None` when the task does not exist or
    /// `who` may not change it.
    ///
    /// # Errors
    /// The mutation's own database error, or the service is shutting down.
    pub async fn apply(&self, mutation: Mutation, who: Caller) -> Result<Option<Applied>, Error> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Item {
                mutation,
                who,
                reply,
                span: if taskboard_telemetry::otel::enabled() {
                    tracing::Span::current()
                } else {
                    tracing::Span::none()
                },
            })
            .await
            .map_err(|_| Error::ShuttingDown)?;
        answer.await.map_err(|_| Error::ShuttingDown)?
    }
}

async fn run(
    pool: Pool,
    mut rx: mpsc::Receiver<Item>,
    committed: mpsc::Sender<Vec<EventRow>>,
    max_batch: usize,
) {
    let mut batch = Vec::with_capacity(max_batch);
    while rx.recv_many(&mut batch, max_batch).await > 0 {
        metrics::histogram!("taskboard_write_batch_size").record(batch.len() as f64);
        let items = std::mem::take(&mut batch);
        let events = if taskboard_telemetry::otel::enabled() {
            // One span per commit, linked to every request it serves.
            let span = tracing::info_span!("db.commit", changes = items.len());
            for item in &items {
                taskboard_telemetry::otel::link(&span, &item.span);
            }
            tracing::Instrument::instrument(commit(&pool, items), span).await
        } else {
            commit(&pool, items).await
        };
        if !events.is_empty() {
            if let Err(e) = committed.try_send(events) {
                // The events are committed; the relay's scan publishes them shortly.
                tracing::debug!(error = %e, "relay queue full; events left to the relay's scan");
            }
        }
    }
    tracing::debug!("writer stopped: no callers left");
}

/// Commits `items`, answers each, and returns the committed events in commit order.
async fn commit(pool: &Pool, items: Vec<Item>) -> Vec<EventRow> {
    if items.len() == 1 {
        return one_by_one(pool, items).await;
    }
    let refs: Vec<(&Mutation, Caller)> = items.iter().map(|i| (&i.mutation, i.who)).collect();
    match db::apply_batch(pool, &refs).await {
        Ok(results) => {
            let mut events = Vec::with_capacity(results.len());
            for (item, r) in items.into_iter().zip(results) {
                if let Some(a) = &r {
                    events.push(traced(a, &item));
                }
                let _ = item.reply.send(Ok(r));
            }
            // The batch's creates ran as one statement ahead of the rest, so a board's events
            // are not in answer order; the relay publishes each board's in seq order.
            events.sort_unstable_by_key(|e| (e.board_id, e.seq));
            events
        }
        Err(BatchError::Unknown(e)) => {
            tracing::warn!(error = %e, items = items.len(), "connection lost while committing a batch; its outcome is unknown");
            for item in items {
                let _ = item.reply.send(Err(Error::CommitUnknown));
            }
            Vec::new()
        }
        Err(e) => {
            tracing::warn!(error = %e, items = items.len(), "batch not committed; running its mutations one by one");
            metrics::counter!("taskboard_write_batches_split_total").increment(1);
            one_by_one(pool, items).await
        }
    }
}

/// The committed event, carrying the trace context of the request that made it.
fn traced(a: &Applied, item: &Item) -> EventRow {
    EventRow {
        trace: taskboard_telemetry::otel::traceparent(&item.span),
        ..a.event.clone()
    }
}

/// Each mutation in its own transaction, concurrently (as without batching), each with its own
/// answer.
async fn one_by_one(pool: &Pool, items: Vec<Item>) -> Vec<EventRow> {
    let results =
        futures_util::future::join_all(items.iter().map(|i| db::apply(pool, &i.mutation, i.who)))
            .await;
    let mut events = Vec::new();
    for (item, r) in items.into_iter().zip(results) {
        if let Ok(Some(a)) = &r {
            events.push(traced(a, &item));
        }
        let _ = item.reply.send(r);
    }
    // Concurrent transactions may commit out of seq order; the relay publishes in seq order.
    events.sort_unstable_by_key(|e| (e.board_id, e.seq));
    events
}
