//! Access changes carried by a board's own events: a member removed or downgraded
//! (`member_changed`) and a deleted board (`board_deleted`). The hub applies them to the sockets it
//! holds in seq order, so a removed member gets nothing committed after the removal, on every
//! gateway that carries the board.
use serde::Deserialize;

/// WebSocket close code: access to a board was revoked (removed from it).
pub const CLOSE_REVOKED: u16 = 4003;
/// WebSocket close code: the board was deleted.
pub const CLOSE_BOARD_DELETED: u16 = 4004;
/// WebSocket close code: the user's role on a board went down; reconnecting (with the resume
/// hint) continues under the new role.
pub const CLOSE_ROLE_CHANGED: u16 = 4005;

/// An event that changes who may receive a board's events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// `user` is no longer a member.
    Removed { user: i64 },
    /// `user`'s role went down (owner → editor, editor → viewer, ...).
    Downgraded { user: i64, role: String },
    /// Nobody receives the board's events any more.
    BoardDeleted,
}

/// How the hub closes a socket an access change reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revoked {
    pub code: u16,
    pub reason: String,
    /// A reconnect continues where it left off (a downgrade); otherwise the board is out of reach.
    pub resumable: bool,
}

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(default)]
    user_id: i64,
    #[serde(default, borrow)]
    role: Option<&'a str>,
    #[serde(default, borrow)]
    previous_role: Option<&'a str>,
}

/// How high a role is: more is more rights.
fn rank(role: &str) -> u8 {
    match role {
        "owner" => 3,
        "editor" => 2,
        "viewer" => 1,
        _ => 0,
    }
}

/// The access change `payload` (an event's browser JSON) makes, if any. Cheap for every other
/// event: the JSON is parsed only when its type, the first field, is one of the two kinds.
pub fn of(payload: &[u8]) -> Option<Change> {
    let head = &payload[..payload.len().min(48)];
    let mentions = |k: &[u8]| head.windows(k.len()).any(|w| w == k);
    if !mentions(b"member_changed") && !mentions(b"board_deleted") {
        return None;
    }
    let e: Event<'_> = serde_json::from_slice(payload).ok()?;
    match e.kind {
        "board_deleted" => Some(Change::BoardDeleted),
        "member_changed" if e.user_id > 0 => match (e.role, e.previous_role) {
            (None, _) => Some(Change::Removed { user: e.user_id }),
            (Some(now), Some(before)) if rank(now) < rank(before) => Some(Change::Downgraded {
                user: e.user_id,
                role: now.to_owned(),
            }),
            _ => None,
        },
        _ => None,
    }
}

impl Change {
    /// Whether it reaches a socket of `user` (`None`: AUTH=off, or the service role).
    pub fn reaches(&self, user: Option<i64>) -> bool {
        match self {
            Change::BoardDeleted => true,
            Change::Removed { user: u } | Change::Downgraded { user: u, .. } => user == Some(*u),
        }
    }

    /// The close it calls for on a socket of `board`.
    pub fn close(&self, board: i64) -> Revoked {
        match self {
            Change::Removed { .. } => Revoked {
                code: CLOSE_REVOKED,
                reason: format!("access revoked: you are no longer a member of board {board}"),
                resumable: false,
            },
            Change::Downgraded { role, .. } => Revoked {
                code: CLOSE_ROLE_CHANGED,
                reason: format!("your role on board {board} is now {role}; reconnect"),
                resumable: true,
            },
            Change::BoardDeleted => Revoked {
                code: CLOSE_BOARD_DELETED,
                reason: format!("board {board} was deleted"),
                resumable: false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_and_board_events_are_access_changes_and_task_events_are_not() {
        let removed = br#"{"type" : "member_changed", "board_id" : 3, "seq" : 9, "user_id" : 7, "role" : null, "previous_role" : "editor"}"#;
        assert_eq!(of(removed), Some(Change::Removed { user: 7 }));
        let down = br#"{"type":"member_changed","board_id":3,"seq":9,"user_id":7,"role":"viewer","previous_role":"owner"}"#;
        assert_eq!(
            of(down),
            Some(Change::Downgraded {
                user: 7,
                role: "viewer".into()
            })
        );
        let up = br#"{"type":"member_changed","board_id":3,"seq":9,"user_id":7,"role":"owner","previous_role":"viewer"}"#;
        assert_eq!(of(up), None, "more rights close nothing");
        let added = br#"{"type":"member_changed","board_id":3,"seq":9,"user_id":7,"role":"viewer","previous_role":null}"#;
        assert_eq!(of(added), None);
        assert_eq!(
            of(br#"{"type":"board_deleted","board_id":3,"seq":9}"#),
            Some(Change::BoardDeleted)
        );
        let task = br#"{"type":"created","board_id":3,"seq":9,"title":"member_changed"}"#;
        assert_eq!(
            of(task),
            None,
            "a title naming the kind is no access change"
        );
        assert_eq!(of(b"{\"type\":\"member_changed\" garbage"), None);
    }

    #[test]
    fn a_change_reaches_the_named_user_or_everyone_for_a_deleted_board() {
        let c = Change::Removed { user: 7 };
        assert!(c.reaches(Some(7)) && !c.reaches(Some(8)) && !c.reaches(None));
        assert!(Change::BoardDeleted.reaches(None));
        assert_eq!(c.close(3).code, 4003);
        assert!(c.close(3).reason.contains("board 3"));
    }
}
