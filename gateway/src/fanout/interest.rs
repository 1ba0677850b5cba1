//! The gateway's NATS subscriptions: per board (its events and its presence) while a client here
//! watches it, dropped a linger after the last one leaves; or everything under the prefix
//! (NATS_SUBSCRIBE=wildcard). Knows nothing of the hub: the intake tells it what is wanted.
use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use futures_util::stream::{SelectAll, Stream, StreamExt};
use taskboard_proto::nats as contract;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// What a message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Events,
    Presence,
}

/// What a subscription is for: one board, or every board (an all-boards client).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    Board(i64),
    All,
}

type Feed = Pin<Box<dyn Stream<Item = (Source, async_nats::Message)> + Send>>;

/// The subscriptions and the messages that arrive on them.
pub struct Interest {
    nats: async_nats::Client,
    prefix: String,
    presence: bool,
    linger: Duration,
    /// Fixed at `<prefix>.>`: nothing is subscribed or dropped later.
    wildcard: bool,
    streams: SelectAll<Feed>,
    /// Held subscriptions; dropping the sender ends (and unsubscribes) their streams.
    held: HashMap<Key, Vec<oneshot::Sender<()>>>,
    /// Held but no longer wanted: dropped at this instant unless wanted again.
    leaving: HashMap<Key, Instant>,
}

/// A subscription could not be made (the client is closed).
#[derive(Debug, thiserror::Error)]
#[error("subscribe {subject}: {source}")]
pub struct SubscribeError {
    subject: String,
    source: async_nats::SubscribeError,
}

impl Interest {
    /// Per-board subscriptions, none yet; presence subjects too when `presence`.
    pub fn per_board(
        nats: async_nats::Client,
        prefix: &str,
        presence: bool,
        linger: Duration,
    ) -> Self {
        Interest {
            nats,
            prefix: prefix.to_owned(),
            presence,
            linger,
            wildcard: false,
            streams: SelectAll::new(),
            held: HashMap::new(),
            leaving: HashMap::new(),
        }
    }

    /// Everything under `prefix` (and every board's presence), for good.
    ///
    /// # Errors
    /// The client is closed.
    pub async fn wildcard(
        nats: async_nats::Client,
        prefix: &str,
        presence: bool,
    ) -> Result<Self, SubscribeError> {
        let mut i = Self::per_board(nats, prefix, presence, Duration::ZERO);
        i.wildcard = true;
        let mut subjects = vec![(Source::Events, contract::wildcard(prefix))];
        if presence {
            subjects.push((Source::Presence, contract::presence_wildcard(prefix)));
        }
        i.hold(Key::All, subjects).await?;
        Ok(i)
    }

    /// Whether this is the fixed wildcard.
    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }

    /// Board subscriptions held (including lingering ones).
    pub fn boards(&self) -> usize {
        self.held
            .keys()
            .filter(|k| matches!(k, Key::Board(_)))
            .count()
    }

    /// Makes sure `key` is subscribed; `true` when the subscription is new (the server has yet to
    /// confirm it), `false` when it was held already (perhaps lingering).
    ///
    /// # Errors
    /// The client is closed.
    pub async fn want(&mut self, key: Key) -> Result<bool, SubscribeError> {
        if self.wildcard {
            return Ok(false);
        }
        self.leaving.remove(&key);
        if self.held.contains_key(&key) {
            return Ok(false);
        }
        let subjects = match key {
            Key::Board(b) => {
                let mut s = vec![(Source::Events, contract::board_interest(&self.prefix, b))];
                if self.presence {
                    s.push((
                        Source::Presence,
                        contract::presence_subject(&self.prefix, b),
                    ));
                }
                s
            }
            // Presence frames go to board subscribers only: no all-boards presence.
            Key::All => vec![(Source::Events, contract::all_boards(&self.prefix))],
        };
        self.hold(key, subjects).await?;
        Ok(true)
    }

    /// `key` is not wanted any more: it is dropped a linger from `now` unless wanted again.
    pub fn unwanted(&mut self, key: Key, now: Instant) {
        if !self.wildcard && self.held.contains_key(&key) {
            self.leaving.entry(key).or_insert(now + self.linger);
        }
    }

    /// When the next lingering subscription is due to be dropped.
    pub fn next_drop(&self) -> Option<Instant> {
        self.leaving.values().min().copied()
    }

    /// Drops the subscriptions whose linger has passed by `now`, except those `wanted` says are
    /// wanted again (a change not seen yet); returns the dropped ones.
    pub fn sweep(&mut self, now: Instant, wanted: impl Fn(Key) -> bool) -> Vec<Key> {
        let due: Vec<Key> = self
            .leaving
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(k, _)| *k)
            .collect();
        let mut dropped = Vec::with_capacity(due.len());
        for k in due {
            self.leaving.remove(&k);
            if wanted(k) {
                continue;
            }
            dropped.push(k);
            // Dropping the senders ends the streams; the subscribers are dropped with them,
            // which unsubscribes.
            self.held.remove(&k);
        }
        if !dropped.is_empty() {
            metrics::gauge!("taskboard_nats_board_subscriptions").set(self.boards() as f64);
        }
        dropped
    }

    /// The next message on any subscription; never resolves while there is none.
    pub async fn next(&mut self) -> (Source, async_nats::Message) {
        loop {
            if self.streams.is_empty() {
                std::future::pending::<()>().await;
            }
            if let Some(m) = self.streams.next().await {
                return m;
            }
        }
    }

    async fn hold(
        &mut self,
        key: Key,
        subjects: Vec<(Source, String)>,
    ) -> Result<(), SubscribeError> {
        let mut stops = Vec::with_capacity(subjects.len());
        for (source, subject) in subjects {
            let sub = self
                .nats
                .subscribe(subject.clone())
                .await
                .map_err(|source| SubscribeError { subject, source })?;
            let (stop, stopped) = oneshot::channel::<()>();
            self.streams
                .push(Box::pin(sub.map(move |m| (source, m)).take_until(stopped)));
            stops.push(stop);
        }
        self.held.insert(key, stops);
        metrics::gauge!("taskboard_nats_board_subscriptions").set(self.boards() as f64);
        Ok(())
    }
}
