//! The outbox relay's queries: events left behind the cursor, moving the cursor over published
//! runs without a gap, pruning, and what is still pending.
use std::time::Duration;

use super::events::EventRow;
use super::pool::acquire;
use super::Pool;
use crate::Error;

/// Events behind the outbox cursor of boards whose first unpublished event committed more than
/// `grace` ago; boards interleaved, each board in seq order.
///
/// # Errors
/// Database or pool failure.
pub async fn behind(pool: &Pool, limit: i64, grace: Duration) -> Result<Vec<EventRow>, Error> {
    let c = acquire(pool).await?;
    let rows = c
        .client
        .query(&c.stmts.behind, &[&limit, &grace.as_secs_f64()])
        .await?;
    Ok(rows.iter().map(|r| EventRow::from_row(r, 0)).collect())
}

/// Records `events` as published (and confirmed): each board's cursor moves as far as its
/// published runs reach without a gap; a run after a gap (another replica has not confirmed the
/// seqs before it yet) is kept until the gap is published.
///
/// # Errors
/// Database or pool failure.
pub async fn advance(pool: &Pool, events: &[EventRow]) -> Result<u64, Error> {
    let (boards, firsts, lasts) = runs(events);
    if boards.is_empty() {
        return Ok(0);
    }
    // The usual case in one set-based statement: each board's first run continues its cursor
    // and the board has no kept runs. Everything else goes through `taskboard_advance`.
    let mut first_of_board = vec![false; boards.len()];
    for i in 0..boards.len() {
        first_of_board[i] = i == 0 || boards[i - 1] != boards[i];
    }
    let pick = |v: &[i64], first: bool| -> Vec<i64> {
        v.iter()
            .zip(&first_of_board)
            .filter(|(_, f)| **f == first)
            .map(|(x, _)| *x)
            .collect()
    };
    let c = acquire(pool).await?;
    let done: std::collections::HashSet<i64> = c
        .client
        .query(
            &c.stmts.advance_fast,
            &[
                &pick(&boards, true),
                &pick(&firsts, true),
                &pick(&lasts, true),
            ],
        )
        .await?
        .iter()
        .filter(|r| !r.get::<_, bool>(1))
        .map(|r| r.get(0))
        .collect();
    let rest: Vec<usize> = (0..boards.len())
        .filter(|&i| !first_of_board[i] || !done.contains(&boards[i]))
        .collect();
    if !rest.is_empty() {
        let take = |v: &[i64]| rest.iter().map(|&i| v[i]).collect::<Vec<i64>>();
        c.client
            .execute(
                &c.stmts.advance,
                &[&take(&boards), &take(&firsts), &take(&lasts)],
            )
            .await?;
    }
    Ok(boards.len() as u64)
}

/// The unbroken runs of seqs in `events`, per board in seq order: (boards, firsts, lasts).
fn runs(events: &[EventRow]) -> (Vec<i64>, Vec<i64>, Vec<i64>) {
    let mut seqs: Vec<(i64, i64)> = events.iter().map(|e| (e.board_id, e.seq)).collect();
    seqs.sort_unstable();
    seqs.dedup();
    let (mut boards, mut firsts, mut lasts) = (Vec::new(), Vec::new(), Vec::<i64>::new());
    for (board, seq) in seqs {
        if boards.last() == Some(&board) && lasts.last() == Some(&(seq - 1)) {
            *lasts.last_mut().expect("as many lasts as boards") = seq;
            continue;
        }
        boards.push(board);
        firsts.push(seq);
        lasts.push(seq);
    }
    (boards, firsts, lasts)
}

/// Deletes published events older than `retention`.
///
/// # Errors
/// Database or pool failure.
pub async fn prune(pool: &Pool, retention: Duration) -> Result<u64, Error> {
    let c = acquire(pool).await?;
    Ok(c.client
        .execute(&c.stmts.prune, &[&retention.as_secs_f64()])
        .await?)
}

/// How many committed events are not published yet.
///
/// # Errors
/// Database or pool failure.
pub async fn pending(pool: &Pool) -> Result<i64, Error> {
    let c = acquire(pool).await?;
    Ok(c.client.query_one(&c.stmts.pending, &[]).await?.get(0))
}
