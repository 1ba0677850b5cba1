//! `/ws`: query parsing (here), the upgrade (`upgrade`, with `deflate` negotiation), and the
//! connection itself (`session`, with its `feed`, `inbound` reader and `outbound` writer over a
//! `socket` shared with the hub).
mod close;
pub mod deflate;
mod feed;
pub mod frame;
mod inbound;
mod outbound;
mod reauth;
mod session;
mod socket;
mod upgrade;

use std::collections::BTreeMap;

pub use session::{Session, SessionSettings};
pub use upgrade::upgrade;

use crate::error::ApiError;

/// Most boards one connection may filter on.
pub const MAX_BOARDS: usize = 100;

/// What a client asked for in the `/ws` query.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Subscription {
    /// Boards to receive; empty means every board (the original's behaviour).
    pub boards: Vec<i64>,
    /// Resume points: events after this seq are replayed first, per board. Without board filters
    /// (every board) they name the boards to replay before going live.
    pub since: BTreeMap<i64, i64>,
}

fn positive(v: &str) -> Option<i64> {
    v.parse::<i64>().ok().filter(|n| *n > 0)
}

/// Parses `board_id` (repeatable) and `since` (`since=S` with one board, or `since=B:S` per board;
/// without any `board_id`, `since=B:S` resumes board B of an every-board subscription).
///
/// # Errors
/// A 400 answer saying which parameter is wrong.
pub fn parse_query(query: Option<&str>) -> Result<Subscription, ApiError> {
    let mut sub = Subscription::default();
    let mut bare_since = None;
    let mut pairs = Vec::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*k {
            "board_id" => {
                let b = positive(&v).ok_or_else(|| {
                    ApiError::bad_request("Invalid board_id")
                        .with_message(format!("board_id must be a positive integer, got {v:?}"))
                })?;
                if !sub.boards.contains(&b) {
                    sub.boards.push(b);
                }
            }
            "since" => match v.split_once(':') {
                Some((b, s)) => {
                    let b = positive(b);
                    let s = s.parse::<i64>().ok().filter(|s| *s >= 0);
                    match (b, s) {
                        (Some(b), Some(s)) => pairs.push((b, s)),
                        _ => return Err(bad_since(&v)),
                    }
                }
                None => {
                    bare_since = Some(
                        v.parse::<i64>()
                            .ok()
                            .filter(|s| *s >= 0)
                            .ok_or_else(|| bad_since(&v))?,
                    )
                }
            },
            _ => {}
        }
    }
    if sub.boards.len() > MAX_BOARDS {
        return Err(ApiError::bad_request("Too many board_id filters")
            .with_message(format!("at most {MAX_BOARDS} per connection")));
    }
    if let Some(s) = bare_since {
        match sub.boards.as_slice() {
            [b] => {
                sub.since.insert(*b, s);
            }
            _ => {
                return Err(ApiError::bad_request("Invalid since").with_message(
                    "since=S needs exactly one board_id; with several, use since=BOARD:SEQ",
                ))
            }
        }
    }
    if sub.boards.is_empty() && pairs.len() > MAX_BOARDS {
        return Err(ApiError::bad_request("Too many since values")
            .with_message(format!("at most {MAX_BOARDS} per connection")));
    }
    for (b, s) in pairs {
        if !sub.boards.is_empty() && !sub.boards.contains(&b) {
            return Err(ApiError::bad_request("Invalid since").with_message(format!(
                "since names board {b}, which is not a board_id filter"
            )));
        }
        sub.since.insert(b, s);
    }
    Ok(sub)
}

fn bad_since(v: &str) -> ApiError {
    ApiError::bad_request("Invalid since").with_message(format!(
        "since must be a non-negative seq or BOARD:SEQ, got {v:?}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_query_means_every_board_live() {
        assert_eq!(parse_query(None).unwrap(), Subscription::default());
    }

    #[test]
    fn repeated_board_ids_and_bare_since() {
        let s = parse_query(Some("board_id=3&board_id=4&board_id=3")).unwrap();
        assert_eq!(s.boards, vec![3, 4]);
        let s = parse_query(Some("board_id=3&since=17")).unwrap();
        assert_eq!(s.since.get(&3), Some(&17));
    }

    #[test]
    fn per_board_since_pairs() {
        let s = parse_query(Some("board_id=1&board_id=2&since=1:5&since=2:0")).unwrap();
        assert_eq!(s.since, BTreeMap::from([(1, 5), (2, 0)]));
    }

    #[test]
    fn an_every_board_subscription_resumes_named_boards() {
        let s = parse_query(Some("since=4:17&since=9:3")).unwrap();
        assert!(s.boards.is_empty());
        assert_eq!(s.since, BTreeMap::from([(4, 17), (9, 3)]));
    }

    #[test]
    fn bad_values_are_400s_that_say_why() {
        for q in [
            "board_id=x",
            "board_id=0",
            "board_id=-2",
            "since=5",
            "board_id=1&board_id=2&since=5",
            "board_id=1&since=-1",
            "board_id=1&since=2:5",
            "board_id=1&since=1:x",
        ] {
            let e = parse_query(Some(q)).unwrap_err();
            assert_eq!(e.status, 400, "{q}");
        }
    }
}
