//! The intake's log reads: short gaps filled for every subscriber, and watched boards brought to
//! their heads in the log (after a reconnect, periodically, and when a board's subscription is
//! new).
use std::collections::HashMap;

use super::{Intake, FILL_PAGE, HEADS_CHUNK};
use crate::fanout::delivery::Delivery;

/// Why boards are being compared with their heads in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Check {
    /// The NATS connection is back: whatever is behind was missed, fetch it at once.
    Reconnect,
    /// The periodic check: only what was already behind last time is overdue (events merely in
    /// flight are not fetched twice).
    Periodic,
    /// The server has just confirmed these boards' new subscriptions: what was committed between
    /// a client asking for the board and that confirmation never came over NATS, fetch it at once.
    Window,
}

impl Intake {
    /// Publishes the board's events in (after, upto] from the task service. On failure the hub
    /// gets the next live event anyway; subscribers see the gap by seq and fetch it themselves.
    pub(super) async fn fill(&mut self, board: i64, after: i64, upto: i64) {
        let mut cursor = after;
        while cursor < upto {
            match self.tasks.list_events(board, cursor, FILL_PAGE, 0).await {
                Ok(page) if !page.reset && !page.events.is_empty() => {
                    for e in page.events {
                        if e.seq > upto {
                            return;
                        }
                        cursor = e.seq;
                        self.remember(board, e.seq);
                        self.publish(Delivery::new(board, e.seq, &e.payload), &e.payload);
                    }
                }
                Ok(_) => return,
                Err(s) => {
                    tracing::warn!(board, status = %s, "could not fill event gap");
                    return;
                }
            }
        }
    }

    /// Brings every watched board to its head in the log (see [`Check`]).
    pub(super) async fn catch_up(&mut self, why: Check) {
        let mut boards = self.hub.watched_boards();
        if self.hub.has_all_boards_subscribers() {
            boards.extend(self.last.keys().copied());
            boards.sort_unstable();
            boards.dedup();
        }
        if let Some(behind) = self.bring_up(&boards, why).await {
            self.behind = behind;
        }
    }

    /// Brings `boards` to their heads in the log; returns those still behind (for the next
    /// periodic check), or `None` when the heads could not be read.
    pub(super) async fn bring_up(
        &mut self,
        boards: &[i64],
        why: Check,
    ) -> Option<HashMap<i64, i64>> {
        let now = why != Check::Periodic;
        let mut behind = HashMap::new();
        for chunk in boards.chunks(HEADS_CHUNK) {
            let heads = match self.tasks.board_heads(chunk.to_vec(), None).await {
                Ok(h) => h,
                Err(s) => {
                    tracing::warn!(status = %s, check = ?why, "board heads unavailable; checking again later");
                    return None;
                }
            };
            for (board, head) in heads {
                let Some(last) = self.expected(board) else {
                    // Nobody here knew where this board stood: now they do. Its subscribers know
                    // their own start, and any that started before `head` (an event that has not
                    // reached NATS yet, say) read the rest from the log; the others ignore this.
                    self.hub.note_head(board, head);
                    self.remember(board, head);
                    self.hub.publish(Delivery::head(board, head));
                    continue;
                };
                if head <= last {
                    continue;
                }
                let due = now || self.behind.get(&board).is_some_and(|h| *h > last);
                if !due {
                    behind.insert(board, head);
                    continue;
                }
                // On a periodic check only what was already behind last time is overdue.
                let upto = if now {
                    head
                } else {
                    self.behind.get(&board).copied().unwrap_or(head).min(head)
                };
                let missed = u64::try_from(upto - last).unwrap_or(0);
                if why == Check::Window {
                    metrics::counter!("taskboard_events_window_total").increment(missed);
                    tracing::info!(
                        board,
                        from = last + 1,
                        to = upto,
                        "committed while the board's subscription was being made; bringing them from the log"
                    );
                } else {
                    metrics::counter!("taskboard_events_recovered_total").increment(missed);
                    tracing::warn!(
                        board,
                        from = last + 1,
                        to = upto,
                        "events missing from NATS; bringing them from the log"
                    );
                }
                if upto - last <= self.settings.inline_fill {
                    self.fill(board, last, upto).await;
                } else {
                    self.remember(board, upto);
                    self.hub.publish(Delivery::head(board, upto));
                }
                if head > upto {
                    behind.insert(board, head);
                }
            }
        }
        Some(behind)
    }
}
