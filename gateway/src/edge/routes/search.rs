//! `GET /api/search?q=&board_id=&page=&page_size=`: full-text search over the tasks of one board
//! or of all my boards, best match first, with the matching words marked.
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use serde::Serialize;
use taskboard_proto::v1;

use super::tasks::TaskJson;
use super::{json, not_allowed, Resp};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::AppState;

#[derive(Serialize)]
struct FragmentJson {
    text: String,
    #[serde(rename = "match")]
    matched: bool,
}

#[derive(Serialize)]
struct HitJson {
    task: TaskJson,
    rank: f32,
    /// The whole title, in pieces; the pieces that matched have `match: true`.
    title: Vec<FragmentJson>,
    /// Passages of the description around its matches.
    snippet: Vec<FragmentJson>,
}

#[derive(Serialize)]
struct SearchJson {
    hits: Vec<HitJson>,
    total_count: i32,
    page: i32,
    page_size: i32,
}

fn pieces(f: Vec<v1::Fragment>) -> Vec<FragmentJson> {
    f.into_iter()
        .map(|f| FragmentJson {
            text: f.text,
            matched: f.r#match,
        })
        .collect()
}

pub(super) async fn search(
    state: &AppState,
    req: Request<Incoming>,
    who: Option<&Principal>,
) -> Result<Resp, ApiError> {
    if req.method() != Method::GET {
        return Ok(not_allowed("GET, OPTIONS"));
    }
    let m = search_query(req.uri().query())?;
    let r = state
        .tasks
        .search(m, who)
        .await
        .map_err(|s| ApiError::from_status(&s, "search"))?;
    let hits = r
        .hits
        .into_iter()
        .filter_map(|h| {
            Some(HitJson {
                task: TaskJson::from(h.task?),
                rank: h.rank,
                title: pieces(h.title),
                snippet: pieces(h.snippet),
            })
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        &SearchJson {
            hits,
            total_count: r.total_count,
            page: r.page_number,
            page_size: r.page_size,
        },
    ))
}

/// The request of a query string; `q` is required (the task service checks its length).
fn search_query(query: Option<&str>) -> Result<v1::SearchTasksRequest, ApiError> {
    let mut m = v1::SearchTasksRequest::default();
    let mut q = None;
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*k {
            "q" => q = Some(v.into_owned()),
            "board_id" if !v.is_empty() => m.board_id = positive(&v, "board_id")?,
            "page" if !v.is_empty() => m.page_number = positive(&v, "page")?,
            "page_size" if !v.is_empty() => m.page_size = positive(&v, "page_size")?,
            _ => {}
        }
    }
    m.query = q.filter(|q| !q.trim().is_empty()).ok_or_else(|| {
        ApiError::bad_request("Search query is required")
            .with_message("send the words to find as q, e.g. /api/search?q=milk")
    })?;
    Ok(m)
}

/// A positive integer parameter.
fn positive<T: std::str::FromStr + PartialOrd + Default>(
    v: &str,
    what: &str,
) -> Result<T, ApiError> {
    v.parse::<T>()
        .ok()
        .filter(|n| *n > T::default())
        .ok_or_else(|| {
            ApiError::bad_request(format!("Invalid {what}"))
                .with_message(format!("{what} must be a positive integer, got {v:?}"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_string_needs_q_and_checks_the_numbers() {
        let m = search_query(Some("q=buy+milk&board_id=3&page=2&page_size=5")).unwrap();
        assert_eq!(
            (m.query.as_str(), m.board_id, m.page_number, m.page_size),
            ("buy milk", 3, 2, 5)
        );
        let m = search_query(Some("q=x&board_id=")).unwrap();
        assert_eq!((m.board_id, m.page_number, m.page_size), (0, 0, 0));
        for bad in [
            "",
            "q=",
            "q=%20",
            "q=x&board_id=0",
            "q=x&page=-1",
            "q=x&page_size=a",
        ] {
            let e = search_query(Some(bad)).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }
}
