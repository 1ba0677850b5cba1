//! Who is viewing each board right now: this gateway's WebSocket users, announced to the other
//! gateways over NATS with heartbeats (an entry whose gateway stops announcing expires), merged,
//! and sent to the board's subscribers as `presence` frames.
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::fanout::delivery::Delivery;
use crate::fanout::hub::Hub;

/// How often changed boards are sent to their subscribers (changes in between are merged).
const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// What one gateway announces about one board.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Announcement {
    /// The announcing gateway's id.
    gateway: String,
    board: i64,
    /// Users with a WebSocket on the board there; empty: none any more.
    users: Vec<i64>,
    /// "I have just subscribed to this board: tell me who is on it" (every gateway with viewers
    /// of it announces them at once instead of at its next heartbeat). Absent means false, so
    /// gateways that do not know it read the rest.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    ask: bool,
}

/// The `presence` frame of a board.
#[derive(Serialize)]
struct Frame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    board_id: i64,
    users: &'a [i64],
}

#[derive(Default)]
struct State {
    /// board → user → sessions on this gateway.
    local: HashMap<i64, HashMap<i64, usize>>,
    /// (gateway, board) → its users, until the instant they expire.
    remote: HashMap<(String, i64), (Vec<i64>, Instant)>,
    /// board → the list its subscribers were last sent.
    shown: HashMap<i64, Vec<i64>>,
    /// Boards to send at the next flush (also when unchanged: a new session needs the list).
    dirty: HashSet<i64>,
    /// Boards to announce at once (a local join or leave, or another gateway asked).
    announce: HashSet<i64>,
    /// Boards whose next announcement asks the others for theirs.
    asking: HashSet<i64>,
}

/// The presence of every board this gateway knows about.
pub struct Presence {
    id: String,
    subject_prefix: String,
    ttl: Duration,
    hub: Arc<Hub>,
    state: Mutex<State>,
}

impl Presence {
    /// Presence on subjects `presence.<prefix>.<board>` (the intake subscribes them with the
    /// boards' events and hands what it hears to [`Presence::heard_payload`]); an announcement
    /// holds for `ttl`, and each gateway repeats its own every third of that.
    pub fn new(nats_prefix: &str, ttl: Duration, hub: Arc<Hub>) -> Arc<Self> {
        Arc::new(Presence {
            // Unique enough among gateways (and among several in one test process).
            id: format!(
                "{:x}-{:x}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos())
            ),
            subject_prefix: nats_prefix.to_owned(),
            ttl,
            hub,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `user` is viewing `boards` until the guard is dropped.
    pub fn join(self: &Arc<Self>, boards: &[i64], user: i64) -> Viewing {
        let mut s = self.lock();
        for b in boards {
            *s.local.entry(*b).or_default().entry(user).or_default() += 1;
            s.dirty.insert(*b);
            s.announce.insert(*b);
        }
        Viewing {
            presence: self.clone(),
            boards: boards.to_vec(),
            user,
        }
    }

    fn leave(&self, boards: &[i64], user: i64) {
        let mut s = self.lock();
        for b in boards {
            if let Some(users) = s.local.get_mut(b) {
                if let Some(n) = users.get_mut(&user) {
                    *n -= 1;
                    if *n == 0 {
                        users.remove(&user);
                    }
                }
                if users.is_empty() {
                    s.local.remove(b);
                }
            }
            s.dirty.insert(*b);
            s.announce.insert(*b);
        }
    }

    /// This gateway's users of `board`.
    fn local_users(s: &State, board: i64) -> Vec<i64> {
        s.local
            .get(&board)
            .map(|u| {
                let mut v: Vec<i64> = u.keys().copied().collect();
                v.sort_unstable();
                v
            })
            .unwrap_or_default()
    }

    /// Everyone viewing `board`, here or on a gateway whose announcement has not expired.
    fn merged(s: &State, board: i64, now: Instant) -> Vec<i64> {
        let mut all: BTreeSet<i64> = Self::local_users(s, board).into_iter().collect();
        for ((_, b), (users, until)) in &s.remote {
            if *b == board && *until > now {
                all.extend(users);
            }
        }
        all.into_iter().collect()
    }

    /// Takes in a message heard on a presence subject.
    pub fn heard_payload(&self, payload: &[u8]) {
        match serde_json::from_slice::<Announcement>(payload) {
            Ok(a) => self.heard(a, Instant::now()),
            Err(e) => tracing::debug!(error = %e, "presence: not an announcement"),
        }
    }

    /// This gateway has just subscribed to `board`'s presence: its next announcement asks the
    /// other gateways for theirs.
    pub fn ask(&self, board: i64) {
        let mut s = self.lock();
        s.announce.insert(board);
        s.asking.insert(board);
    }

    /// Takes in another gateway's announcement.
    fn heard(&self, a: Announcement, now: Instant) {
        if a.gateway == self.id {
            return;
        }
        let mut s = self.lock();
        let board = a.board;
        if a.ask && s.local.contains_key(&board) {
            s.announce.insert(board);
        }
        if a.users.is_empty() {
            s.remote.remove(&(a.gateway, board));
        } else {
            s.remote
                .insert((a.gateway, board), (a.users, now + self.ttl));
        }
        if Self::merged(&s, board, now) != s.shown.get(&board).cloned().unwrap_or_default() {
            s.dirty.insert(board);
        }
    }

    /// Drops expired announcements (their gateway stopped: died, or cut off), marking the boards
    /// whose list changes.
    fn expire(&self, now: Instant) {
        let mut s = self.lock();
        let gone: Vec<(String, i64)> = s
            .remote
            .iter()
            .filter(|(_, (_, until))| *until <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            s.dirty.insert(k.1);
            s.remote.remove(&k);
        }
    }

    /// The frames to send now (boards with subscribers whose list changed or who have a new
    /// session) and the announcements to publish.
    fn take(&self, now: Instant, heartbeat: bool) -> (Vec<Delivery>, Vec<Announcement>) {
        let mut s = self.lock();
        let mut frames = Vec::new();
        for board in std::mem::take(&mut s.dirty) {
            let users = Self::merged(&s, board, now);
            if self.hub.is_watched(board) {
                let json = serde_json::to_vec(&Frame {
                    kind: "presence",
                    board_id: board,
                    users: &users,
                })
                .unwrap_or_default();
                frames.push(Delivery::unsequenced(board, &json));
            }
            if users.is_empty() {
                s.shown.remove(&board);
            } else {
                s.shown.insert(board, users);
            }
        }
        let boards: Vec<i64> = if heartbeat {
            let mut all: Vec<i64> = s.local.keys().copied().collect();
            all.extend(s.announce.drain());
            all.sort_unstable();
            all.dedup();
            all
        } else {
            s.announce.drain().collect()
        };
        let out = boards
            .into_iter()
            .map(|board| Announcement {
                gateway: self.id.clone(),
                board,
                users: Self::local_users(&s, board),
                ask: false,
            })
            .collect::<Vec<_>>();
        let out = out
            .into_iter()
            .map(|mut a| {
                a.ask = s.asking.remove(&a.board);
                a
            })
            .collect();
        (frames, out)
    }

    fn subject(&self, board: i64) -> String {
        taskboard_proto::nats::presence_subject(&self.subject_prefix, board)
    }

    /// Sends frames, announces and expires, until `shutdown`; then announces that this gateway's
    /// users are gone. (What the other gateways announce comes in through the intake.)
    pub async fn run(self: Arc<Self>, nats: async_nats::Client, shutdown: CancellationToken) {
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        let mut heartbeat = tokio::time::interval(self.ttl / 3);
        loop {
            let beat = tokio::select! {
                _ = flush.tick() => false,
                _ = heartbeat.tick() => true,
                () = shutdown.cancelled() => break,
            };
            let now = Instant::now();
            self.expire(now);
            let (frames, announcements) = self.take(now, beat);
            for f in frames {
                self.hub.publish(f);
            }
            self.publish(&nats, announcements).await;
        }
        // Leaving: the others drop this gateway's users at once instead of after the TTL.
        let boards: Vec<i64> = self.lock().local.keys().copied().collect();
        let gone = boards
            .into_iter()
            .map(|board| Announcement {
                gateway: self.id.clone(),
                board,
                users: Vec::new(),
                ask: false,
            })
            .collect();
        self.publish(&nats, gone).await;
        let _ = nats.flush().await;
    }

    async fn publish(&self, nats: &async_nats::Client, announcements: Vec<Announcement>) {
        for a in announcements {
            let Ok(body) = serde_json::to_vec(&a) else {
                continue;
            };
            if let Err(e) = nats.publish(self.subject(a.board), body.into()).await {
                tracing::debug!(error = %e, "presence: announcement not sent");
            }
        }
    }
}

/// A user's WebSocket on some boards; dropping it ends their presence there.
pub struct Viewing {
    presence: Arc<Presence>,
    boards: Vec<i64>,
    user: i64,
}

impl Drop for Viewing {
    fn drop(&mut self) {
        self.presence.leave(&self.boards, self.user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presence() -> Arc<Presence> {
        Presence::new("t", Duration::from_secs(3), Arc::new(Hub::new(16)))
    }

    fn announced(p: &Presence, now: Instant) -> Vec<(i64, Vec<i64>)> {
        let (_, a) = p.take(now, false);
        let mut v: Vec<(i64, Vec<i64>)> = a.into_iter().map(|a| (a.board, a.users)).collect();
        v.sort();
        v
    }

    #[test]
    fn local_sessions_count_per_user_and_leave_when_the_last_one_goes() {
        let p = presence();
        let now = Instant::now();
        let a = p.join(&[1, 2], 7);
        let b = p.join(&[1], 7);
        let c = p.join(&[1], 8);
        assert_eq!(announced(&p, now), vec![(1, vec![7, 8]), (2, vec![7])]);
        drop(a);
        assert_eq!(announced(&p, now), vec![(1, vec![7, 8]), (2, vec![])]);
        drop(b);
        drop(c);
        assert_eq!(announced(&p, now), vec![(1, vec![])]);
        assert!(p.lock().local.is_empty());
    }

    #[test]
    fn other_gateways_count_until_their_announcement_expires() {
        let p = presence();
        let t = Instant::now();
        let _me = p.join(&[1], 7);
        let them = |users: Vec<i64>| Announcement {
            gateway: "other".into(),
            board: 1,
            users,
            ask: false,
        };
        p.heard(them(vec![9, 7]), t);
        assert_eq!(Presence::merged(&p.lock(), 1, t), vec![7, 9]);
        // Their own echo is ignored.
        p.heard(
            Announcement {
                gateway: p.id.clone(),
                board: 1,
                users: vec![],
                ask: false,
            },
            t,
        );
        assert_eq!(Presence::merged(&p.lock(), 1, t), vec![7, 9]);
        let later = t + Duration::from_secs(4);
        p.expire(later);
        assert_eq!(Presence::merged(&p.lock(), 1, later), vec![7]);
        assert!(p.lock().dirty.contains(&1));
        // An empty announcement removes them at once.
        p.heard(them(vec![5]), later);
        p.heard(them(vec![]), later);
        assert_eq!(Presence::merged(&p.lock(), 1, later), vec![7]);
    }

    #[test]
    fn a_heartbeat_announces_every_board_with_local_users() {
        let p = presence();
        let now = Instant::now();
        let _v = p.join(&[3, 4], 1);
        p.take(now, false);
        let (_, a) = p.take(now, true);
        let boards: Vec<i64> = a.iter().map(|a| a.board).collect();
        assert_eq!(boards, vec![3, 4]);
        let (_, a) = p.take(now, false);
        assert!(a.is_empty(), "nothing changed");
    }

    #[test]
    fn a_gateway_that_asks_is_answered_at_once_by_those_with_viewers() {
        let p = presence();
        let now = Instant::now();
        let _v = p.join(&[3], 1);
        p.take(now, false);
        let ask = |board| Announcement {
            gateway: "new".into(),
            board,
            users: vec![],
            ask: true,
        };
        p.heard(ask(4), now);
        assert!(announced(&p, now).is_empty(), "no viewers of board 4 here");
        p.heard(ask(3), now);
        assert_eq!(
            announced(&p, now),
            vec![(3, vec![1])],
            "not at the next heartbeat"
        );
        // Its own ask goes out once, and an older gateway's message (no `ask`) still parses.
        p.ask(3);
        let (_, a) = p.take(now, false);
        assert!(a[0].ask);
        assert!(!p.take(now, false).1.iter().any(|a| a.ask));
        let old: Announcement =
            serde_json::from_str(r#"{"gateway":"g","board":3,"users":[2]}"#).unwrap();
        assert!(!old.ask);
        assert!(!serde_json::to_string(&Announcement { ask: false, ..old })
            .unwrap()
            .contains("ask"));
    }
}
