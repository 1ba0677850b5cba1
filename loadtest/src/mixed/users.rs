//! Browsers (list a board, glance at its socket) and writers (create, complete, delete; each
//! acknowledged seq noted, so watchers know what they must receive).
use std::time::Instant;

use goose::prelude::*;

use super::{lock, watch::Read, Shared};
use crate::extract;
use crate::rest::{complete_task, create_task, delete_task};

/// A browser: lists a board, opens its socket for a moment, leaves.
pub(super) async fn browse(user: &mut GooseUser, shared: &Shared) -> TransactionResult {
    let board = shared.pick_board();
    let path = format!("/api/tasks?board_id={board}&page_size=20");
    let req = GooseRequest::builder()
        .path(path.as_str())
        .name("/api/tasks (browser)")
        .build();
    let _ = user.request(req).await?;
    let started = Instant::now();
    let (mut rx, reader) = match shared.open(board, None).await {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("{e:#}");
            return user
                .record_custom_request_duration(
                    "WS",
                    "connect (browser)",
                    started.elapsed(),
                    false,
                    None,
                    Some(&msg),
                )
                .await;
        }
    };
    user.record_custom_request_duration(
        "WS",
        "connect (browser)",
        started.elapsed(),
        true,
        None,
        None,
    )
    .await?;
    let until = Instant::now() + shared.browse;
    let mut frames = 0;
    while let Ok(Some(Read::Frame(..))) = tokio::time::timeout_at(until.into(), rx.recv()).await {
        frames += 1;
    }
    reader.abort();
    let mut s = lock(&shared.summary);
    s.browser_visits += 1;
    s.browser_frames += frames;
    Ok(())
}

fn seq_of(r: &reqwest::Response) -> Option<i64> {
    r.headers()
        .get("taskboard-seq")?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The task a writer is working on.
#[derive(Clone, Copy)]
struct Current(i64, i64);

pub(super) async fn create(user: &mut GooseUser, shared: &Shared) -> TransactionResult {
    let board = shared.pick_board();
    let sent = shared.base.elapsed().as_micros();
    let body = format!(
        r#"{{"board_id":{board},"title":"{}{sent}","description":"mixed load","created_by":1}}"#,
        extract::TITLE_MARK
    );
    let goose::goose::GooseResponse {
        mut request,
        response,
    } = create_task(user, body).await?;
    let Ok(resp) = response else {
        return Ok(());
    };
    if resp.status().as_u16() != 201 {
        return Ok(());
    }
    shared.wrote(board, seq_of(&resp));
    match resp
        .json::<serde_json::Value>()
        .await
        .ok()
        .and_then(|v| v["id"].as_i64())
    {
        Some(id) => user.set_session_data(Current(board, id)),
        None => return user.set_failure("create answered without an id", &mut request, None, None),
    }
    Ok(())
}

pub(super) async fn complete(user: &mut GooseUser, shared: &Shared) -> TransactionResult {
    let Some(&Current(board, id)) = user.get_session_data::<Current>() else {
        return Ok(());
    };
    if let Ok(resp) = complete_task(user, id).await?.response {
        if resp.status().as_u16() == 200 {
            shared.wrote(board, seq_of(&resp));
        }
    }
    Ok(())
}

pub(super) async fn delete(user: &mut GooseUser, shared: &Shared) -> TransactionResult {
    let Some(&Current(board, id)) = user.get_session_data::<Current>() else {
        return Ok(());
    };
    if let Ok(resp) = delete_task(user, id).await?.response {
        if resp.status().as_u16() == 204 {
            shared.wrote(board, seq_of(&resp));
        }
    }
    Ok(())
}
