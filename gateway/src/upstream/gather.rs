//! Creates gathered into CreateTasks calls: while `calls` create calls are out, the creates that
//! arrive wait and go together in the next call, so under load one gRPC call (one HTTP/2 stream,
//! its headers and its tower stack, on both sides) serves many creates. A create that finds a call
//! slot free goes at once, alone, from its own task: an idle gateway adds no hop and no delay.
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use taskboard_proto::v1;
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;
use tonic::{Code, Status};

use crate::auth::Principal;
use crate::upstream::client::TasksClient;

/// A create's answer: the task and its seq, and whether it replays an idempotent create.
pub type Created = Result<(v1::CreateTaskResponse, bool), Status>;

/// After a task service answered UNIMPLEMENTED to CreateTasks (an older version, during a rolling
/// upgrade), creates go one per call for this long before gathering is tried again.
const RETRY_GATHERING: Duration = Duration::from_secs(30);

/// How a create goes.
enum Way {
    /// In a call slot of its own.
    Slot(v1::CreateTaskRequest),
    /// Alone, outside the slots (gathering is off for now).
    Unslotted(v1::CreateTaskRequest),
    /// With the next call that frees a slot.
    Queued(oneshot::Receiver<Created>),
}

struct Waiting {
    item: v1::CreateTasksItem,
    since: Instant,
    reply: oneshot::Sender<Created>,
}

struct State {
    /// Call slots not in use.
    free: usize,
    /// Creates waiting for a slot, oldest first.
    queue: Vec<Waiting>,
    /// Set when the task service did not know CreateTasks.
    unsupported_at: Option<Instant>,
}

struct Inner {
    client: TasksClient,
    state: Mutex<State>,
    max_items: usize,
    tracker: TaskTracker,
}

/// Where the gateway's creates go: gathered into CreateTasks calls, or (`CREATE_CALLS` 0) each in
/// a call of its own. Cheap to clone.
#[derive(Clone)]
pub struct Creates {
    client: TasksClient,
    gather: Option<Gather>,
}

impl Creates {
    /// At most `calls` create calls in flight, the creates that arrive meanwhile going together
    /// (at most `max_items` per call) in the next one; `calls` 0: one call per create. The calls
    /// for queued creates run on `tracker`.
    pub fn new(client: TasksClient, calls: usize, max_items: usize, tracker: TaskTracker) -> Self {
        let gather = (calls > 0).then(|| Gather::new(client.clone(), calls, max_items, tracker));
        Creates { client, gather }
    }

    /// Creates a task for `who`; `true` when the answer is a retry's replay of an idempotent create.
    pub async fn create(&self, m: v1::CreateTaskRequest, who: Option<&Principal>) -> Created {
        match &self.gather {
            Some(g) => g.create(m, who).await,
            None => self.client.create(m, who).await,
        }
    }
}

/// The gathering of creates (cheap to clone).
#[derive(Clone)]
pub struct Gather(Arc<Inner>);

impl Gather {
    /// Gathers creates for `client` with at most `calls` calls in flight and `max_items` creates
    /// per call; the calls that carry queued creates run on `tracker`.
    pub fn new(client: TasksClient, calls: usize, max_items: usize, tracker: TaskTracker) -> Self {
        Gather(Arc::new(Inner {
            client,
            state: Mutex::new(State {
                free: calls.max(1),
                queue: Vec::new(),
                unsupported_at: None,
            }),
            max_items: max_items.max(1),
            tracker,
        }))
    }

    /// Creates a task for `who`: at once when a call slot is free, else in the next call.
    pub async fn create(&self, m: v1::CreateTaskRequest, who: Option<&Principal>) -> Created {
        match self.way(m, who) {
            Way::Queued(answer) => answer.await.unwrap_or_else(|_| {
                Err(Status::unavailable(
                    "the gateway stopped before the create was answered; it may have been made",
                ))
            }),
            Way::Slot(m) => {
                // Holds the slot until the call ends, however it ends (a client that goes away
                // drops this future); the slot then carries whatever queued meanwhile.
                let _slot = Slot(self.clone());
                self.0.client.create(m, who).await
            }
            Way::Unslotted(m) => self.0.client.create(m, who).await,
        }
    }

    /// Takes a free slot for `m`, or queues it.
    fn way(&self, m: v1::CreateTaskRequest, who: Option<&Principal>) -> Way {
        let mut s = self.0.state.lock().unwrap_or_else(PoisonError::into_inner);
        if s.unsupported_at
            .is_some_and(|at| at.elapsed() < RETRY_GATHERING)
        {
            Way::Unslotted(m)
        } else if s.free > 0 {
            s.free -= 1;
            Way::Slot(m)
        } else {
            let (reply, answer) = oneshot::channel();
            s.queue.push(Waiting {
                item: item(m, who),
                since: Instant::now(),
                reply,
            });
            Way::Queued(answer)
        }
    }

    /// A call slot came free: it carries the queued creates, or becomes free.
    fn release(&self) {
        let batch = {
            let mut s = self.0.state.lock().unwrap_or_else(PoisonError::into_inner);
            if s.queue.is_empty() {
                s.free += 1;
                return;
            }
            let n = s.queue.len().min(self.0.max_items);
            s.queue.drain(..n).collect::<Vec<_>>()
        };
        if tokio::runtime::Handle::try_current().is_err() {
            // Dropped outside the runtime (it is going away): the waiting creates are answered
            // UNAVAILABLE as their replies drop, and nothing is sent.
            return;
        }
        let this = self.clone();
        self.0.tracker.spawn(async move {
            let _slot = Slot(this.clone());
            this.send(batch).await;
        });
    }

    /// One call for `batch` (CreateTask for a lone create), each create answered.
    async fn send(&self, batch: Vec<Waiting>) {
        let waited = batch
            .iter()
            .map(|w| w.since.elapsed())
            .max()
            .unwrap_or_default();
        if batch.len() == 1 {
            let w = batch.into_iter().next().expect("one create");
            let answer = self.0.client.create_item(w.item, waited).await;
            let _ = w.reply.send(answer);
            return;
        }
        metrics::counter!("taskboard_creates_gathered_total").increment(batch.len() as u64);
        let (items, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|w| (w.item, w.reply)).unzip();
        match self.0.client.create_many(items.clone(), waited).await {
            Ok(results) if results.len() == replies.len() => {
                for (reply, r) in replies.into_iter().zip(results) {
                    let _ = reply.send(outcome(r));
                }
            }
            Ok(results) => {
                let s = Status::internal(format!(
                    "CreateTasks answered {} results for {} creates",
                    results.len(),
                    replies.len()
                ));
                tracing::error!(status = %s, "task service broke the CreateTasks contract");
                for reply in replies {
                    let _ = reply.send(Err(s.clone()));
                }
            }
            Err(s) if s.code() == Code::Unimplemented => {
                // Nothing was made: an older task service. One call each, and single calls for
                // a while.
                tracing::warn!(status = %s, "the task service does not know CreateTasks; creating one per call");
                self.0
                    .state
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .unsupported_at = Some(Instant::now());
                let answers = futures_util::future::join_all(
                    items
                        .into_iter()
                        .map(|item| self.0.client.create_item(item, waited)),
                )
                .await;
                for (reply, a) in replies.into_iter().zip(answers) {
                    let _ = reply.send(a);
                }
            }
            Err(s) => {
                for reply in replies {
                    let _ = reply.send(Err(s.clone()));
                }
            }
        }
    }
}

/// A call slot in use; released when dropped.
struct Slot(Gather);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// A create as an item of CreateTasks, made for `who`.
fn item(request: v1::CreateTaskRequest, who: Option<&Principal>) -> v1::CreateTasksItem {
    let span = tracing::Span::current();
    v1::CreateTasksItem {
        request: Some(request),
        user: who.map_or(0, |p| p.user),
        service_role: who.is_some_and(|p| p.service),
        traceparent: taskboard_telemetry::otel::traceparent(&span).unwrap_or_default(),
    }
}

/// One item's result as the answer a CreateTask call would have given.
fn outcome(r: v1::CreateTasksResult) -> Created {
    use v1::create_tasks_result::Outcome;
    match r.outcome {
        Some(Outcome::Created(c)) => Ok((c, r.replayed)),
        Some(Outcome::Error(e)) => Err(Status::new(Code::from_i32(e.code), e.message)),
        None => Err(Status::internal(
            "CreateTasks answered an item with no outcome",
        )),
    }
}
