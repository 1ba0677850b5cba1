//! The watch streams (WatchTasks, WatchEvents): a board's events after a cursor, then live ones as
//! they commit, with back-pressure from each stream's own bounded buffer. An idle stream costs the
//! database nothing: streams query only when the relay's LISTEN session says something committed
//! (and once more whenever that session is re-established, in case a notification was missed).
use taskboard_proto::v1;
use tokio::sync::mpsc;
use tonic::Status;

use super::log::needs_reset;
use super::refusals::not_a_member;
use super::Service;
use crate::access::Caller;
use crate::db::{self, EventRow};

/// Events fetched per query by the watch streams.
pub(crate) const WATCH_PAGE: i64 = 500;

/// What a watch stream turns into items.
pub(crate) enum WatchItem<'a> {
    Event(&'a EventRow),
    /// The reader missed pruned events; it continues from this head.
    Reset(i64),
}

/// The task an event carries (its payload's `task` object), as the original's `Task` message.
pub(crate) fn task_of_event(e: &EventRow) -> Option<v1::Task> {
    #[derive(serde::Deserialize)]
    struct Payload {
        task: TaskJson,
    }
    #[derive(serde::Deserialize)]
    struct TaskJson {
        id: i64,
        board_id: i64,
        title: String,
        description: String,
        completed: bool,
        created_by: i64,
        created_at: String,
        updated_at: String,
        version: i64,
        #[serde(default)]
        assignee: Option<i64>,
        #[serde(default)]
        due_at: Option<String>,
        #[serde(default)]
        position: f64,
    }
    // The board's own events carry no task.
    if e.kind.starts_with("board_") {
        return None;
    }
    let ts = |t: &str| {
        chrono::DateTime::parse_from_rfc3339(t)
            .ok()
            .map(|t| prost_types::Timestamp {
                seconds: t.timestamp(),
                nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
            })
    };
    match serde_json::from_slice::<Payload>(&e.payload) {
        Ok(Payload { task: t }) => Some(v1::Task {
            id: t.id,
            board_id: t.board_id,
            title: t.title,
            description: t.description,
            completed: t.completed,
            created_by: t.created_by,
            created_at: ts(&t.created_at),
            updated_at: ts(&t.updated_at),
            version: t.version,
            assignee: t.assignee.unwrap_or(0),
            due_at: t.due_at.as_deref().and_then(ts),
            position: t.position,
        }),
        Err(err) => {
            tracing::error!(board = e.board_id, seq = e.seq, error = %err, "event payload without a task");
            None
        }
    }
}

impl Service {
    /// Feeds one watch stream with what `item` makes of each event after `cursor`, until the
    /// client goes away or the service shuts down.
    pub(crate) async fn watch<T: Send + 'static>(
        self,
        board: i64,
        mut cursor: i64,
        who: Caller,
        tx: mpsc::Sender<Result<T, Status>>,
        item: impl Fn(WatchItem<'_>) -> Option<T>,
    ) {
        let mut wake = self.wake.clone();
        loop {
            // Mark the current notification as seen before querying, so one that arrives while
            // the query runs is not missed.
            wake.borrow_and_update();
            let (events, head) = match db::list_events(
                &self.pool,
                db::EventsOf::Board(board),
                cursor,
                WATCH_PAGE,
                who,
            )
            .await
            {
                Ok(Some(x)) => x,
                // Membership ended while the stream was open.
                Ok(None) => {
                    let _ = tx.send(Err(not_a_member(board))).await;
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Err(Status::from(e))).await;
                    return;
                }
            };
            if needs_reset(cursor, head, &events) {
                cursor = head;
                if let Some(i) = item(WatchItem::Reset(head)) {
                    if tx.send(Ok(i)).await.is_err() {
                        return;
                    }
                }
                continue;
            }
            let full = events.len() as i64 == WATCH_PAGE;
            for e in &events {
                cursor = e.seq;
                if let Some(i) = item(WatchItem::Event(e)) {
                    if tx.send(Ok(i)).await.is_err() {
                        return;
                    }
                }
            }
            if full {
                continue;
            }
            tokio::select! {
                _ = wake.changed() => {}
                _ = tx.closed() => return,
                _ = self.shutdown.cancelled() => {
                    let _ = tx.send(Err(Status::unavailable("server shutting down"))).await;
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::log::tests::ev;

    #[test]
    fn an_event_payload_gives_back_its_task() {
        let mut e = ev(3);
        e.payload = bytes::Bytes::from_static(
            br#"{"type":"updated","seq":3,"task":{"id":7,"board_id":1,"title":"t","description":"d","completed":true,"created_by":0,"created_at":"2026-11-27T17:50:31.123456Z","updated_at":"2026-11-27T17:50:32Z","version":2}}"#,
        );
        let t = task_of_event(&e).expect("task");
        assert_eq!((t.id, t.completed, t.version), (7, true, 2));
        assert_eq!(t.created_at.unwrap().nanos, 123_456_000);
        e.payload = bytes::Bytes::from_static(b"{}");
        assert!(task_of_event(&e).is_none());
    }
}
