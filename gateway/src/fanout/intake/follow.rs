//! The intake's subscriptions follow the hub: a board's is made when its first subscriber here
//! arrives and dropped a linger after its last one leaves. A new one is confirmed by the server
//! (a round trip), then the board is brought to its head in the log, so nothing committed while
//! the subscription was being made is lost.
use std::time::Duration;

use futures_util::future::BoxFuture;
use taskboard_proto::nats::RoundTrip;
use tokio::time::Instant;

use super::heads::Check;
use super::{Intake, CONFIRM_TIMEOUT};
use crate::fanout::interest::{Interest, Key, Source};

/// Pause after a round trip that could not even be sent (the client is reconnecting).
const RETRY_DELAY: Duration = Duration::from_millis(200);

/// The subscriptions and the confirmations in flight.
pub(super) struct Follow {
    pub interest: Interest,
    nats: async_nats::Client,
    /// New subscriptions the server has not confirmed yet.
    window: Vec<Key>,
    /// The round trip, while no confirmation is in flight.
    rt: Option<RoundTrip>,
    /// The confirmation in flight: gives back the round trip, its boards and whether it came.
    confirming: Option<BoxFuture<'static, (RoundTrip, Vec<Key>, bool)>>,
}

/// What happened next.
pub(super) enum Step {
    Message(Source, async_nats::Message),
    /// A board gained its first subscriber here or lost its last.
    Changed,
    /// The server confirmed these new subscriptions.
    Confirmed(Vec<Key>),
    /// A lingering subscription is due to be dropped.
    Sweep,
}

impl Follow {
    pub fn new(interest: Interest, nats: async_nats::Client, rt: RoundTrip) -> Self {
        Follow {
            interest,
            nats,
            window: Vec::new(),
            rt: Some(rt),
            confirming: None,
        }
    }

    /// Waits for the next step. Cancel-safe: a confirmation in flight survives.
    pub async fn next(&mut self, hub: &crate::fanout::hub::Hub) -> Step {
        let drop_at = self.interest.next_drop();
        let Follow {
            interest,
            confirming,
            ..
        } = self;
        let done = tokio::select! {
            (source, m) = interest.next() => return Step::Message(source, m),
            () = hub.changed() => return Step::Changed,
            () = sleep_until(drop_at), if drop_at.is_some() => return Step::Sweep,
            done = async { confirming.as_mut().expect("guarded").await }, if confirming.is_some() => done,
        };
        self.confirming = None;
        let (rt, boards, ok) = done;
        self.rt = Some(rt);
        if ok {
            return Step::Confirmed(boards);
        }
        tracing::warn!(
            boards = boards.len(),
            "NATS has not confirmed new board subscriptions yet; asking again"
        );
        self.window.extend(boards);
        self.confirm();
        Step::Changed
    }

    /// Starts confirming the window, unless a confirmation is in flight (the window waits for
    /// the next one).
    fn confirm(&mut self) {
        if self.window.is_empty() || self.confirming.is_some() {
            return;
        }
        let Some(mut rt) = self.rt.take() else {
            return;
        };
        let boards = std::mem::take(&mut self.window);
        let nats = self.nats.clone();
        self.confirming = Some(Box::pin(async move {
            let ok = match rt.confirm(&nats, CONFIRM_TIMEOUT).await {
                Ok(ok) => ok,
                Err(e) => {
                    tracing::warn!(error = %e, "NATS round trip not sent");
                    tokio::time::sleep(RETRY_DELAY).await;
                    false
                }
            };
            (rt, boards, ok)
        }));
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Intake {
    /// Subscribes boards that gained their first subscriber, lets go of those that lost their
    /// last (after the linger).
    pub(super) async fn follow_changes(&mut self, f: &mut Follow) {
        let now = Instant::now();
        for (board, watched) in self.hub.take_changes() {
            let key = board.map_or(Key::All, Key::Board);
            if !watched {
                f.interest.unwanted(key, now);
                continue;
            }
            match f.interest.want(key).await {
                Ok(true) => {
                    f.window.push(key);
                    tracing::debug!(?key, "subscribed to the board's events");
                }
                Ok(false) => {}
                // The periodic head check still delivers its events, late.
                Err(e) => tracing::error!(error = %e, "cannot subscribe to a board's events"),
            }
        }
        f.confirm();
    }

    /// The server has the subscriptions: what was committed to their boards before is read from
    /// the log; all-boards clients may be answered.
    pub(super) async fn confirmed(&mut self, keys: Vec<Key>) {
        let mut boards = Vec::with_capacity(keys.len());
        for k in keys {
            match k {
                Key::Board(b) => boards.push(b),
                Key::All => self.hub.set_all_boards_live(true),
            }
        }
        if let Some(p) = &self.presence {
            for b in &boards {
                p.ask(*b);
            }
        }
        if let Some(behind) = self.bring_up(&boards, Check::Window).await {
            self.behind.extend(behind);
        }
    }

    /// Drops lingering subscriptions that are due, and what was known of their boards (a later
    /// subscriber starts from the head in the log).
    pub(super) fn sweep(&mut self, f: &mut Follow) {
        let hub = self.hub.clone();
        let wanted = |k: Key| match k {
            Key::Board(b) => hub.is_watched_board(b),
            Key::All => hub.has_all_boards_subscribers(),
        };
        for key in f.interest.sweep(Instant::now(), wanted) {
            match key {
                Key::Board(b) => {
                    self.last.remove(&b);
                    self.behind.remove(&b);
                    tracing::debug!(board = b, "unsubscribed from the board's events");
                }
                Key::All => {
                    self.hub.set_all_boards_live(false);
                    tracing::debug!("unsubscribed from every board's events");
                }
            }
        }
    }
}
