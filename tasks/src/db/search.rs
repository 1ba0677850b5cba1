//! Full-text search over tasks: ranked matches with highlighted titles and snippets.
use taskboard_proto::v1;

use super::{acquire, task_from_row, Pool};
use crate::access::Caller;
use crate::Error;

/// Where a match starts and ends in the text PostgreSQL highlights (`ts_headline` with these as
/// `StartSel`/`StopSel`; the statement removes them from the text first).
const START: char = '\u{2}';
const STOP: char = '\u{3}';

/// A page of search results and the number of all matches.
pub struct SearchPage {
    pub hits: Vec<v1::SearchHit>,
    pub total: i64,
}

/// Tasks matching `query` on `board` (or on every board of `who`), best first; `None` when `who`
/// may not read `board`.
///
/// # Errors
/// Database or pool failure.
pub async fn search(
    pool: &Pool,
    query: &str,
    board: Option<i64>,
    limit: i64,
    offset: i64,
    who: Caller,
) -> Result<Option<SearchPage>, Error> {
    let c = acquire(pool).await?;
    let rows = c
        .client
        .query(
            &c.stmts.search,
            &[&query, &board, &limit, &offset, &who.user, &who.all_boards],
        )
        .await?;
    if !rows.first().is_some_and(|r| r.get::<_, bool>(1)) {
        return Ok(None);
    }
    let total = rows.first().map_or(0, |r| r.get(0));
    let hits = rows
        .iter()
        .filter(|r| r.get::<_, Option<f32>>(2).is_some())
        .map(|r| v1::SearchHit {
            task: Some(task_from_row(r, 3)),
            rank: r.get(2),
            title: fragments(r.get(3 + super::TASK_COLUMNS)),
            snippet: fragments(r.get(4 + super::TASK_COLUMNS)),
        })
        .collect();
    Ok(Some(SearchPage { hits, total }))
}

/// Splits highlighted text into plain and matching pieces (empty pieces dropped).
fn fragments(marked: &str) -> Vec<v1::Fragment> {
    let mut out = Vec::new();
    let mut matched = false;
    let mut rest = marked;
    while !rest.is_empty() {
        let end = rest.find([START, STOP]).unwrap_or(rest.len());
        if end > 0 {
            out.push(v1::Fragment {
                text: rest[..end].to_owned(),
                r#match: matched,
            });
        }
        match rest[end..].chars().next() {
            Some(c) => {
                matched = c == START;
                rest = &rest[end + c.len_utf8()..];
            }
            None => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(s: &str) -> Vec<(String, bool)> {
        fragments(s)
            .into_iter()
            .map(|f| (f.text, f.r#match))
            .collect()
    }

    #[test]
    fn highlighted_text_splits_into_plain_and_matching_pieces() {
        assert_eq!(
            pieces("buy \u{2}milk\u{3} and \u{2}bread\u{3}"),
            vec![
                ("buy ".to_owned(), false),
                ("milk".to_owned(), true),
                (" and ".to_owned(), false),
                ("bread".to_owned(), true)
            ]
        );
        assert_eq!(pieces("\u{2}é\u{3}"), vec![("é".to_owned(), true)]);
        assert_eq!(pieces("plain"), vec![("plain".to_owned(), false)]);
        assert!(pieces("").is_empty());
    }
}
