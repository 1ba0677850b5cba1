//! The publishers of a fan-out run: creates at a fixed rate over REST, or NATS publishes to
//! nats-server directly, each timed from its intended send time.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::extract;

use super::{nats_prefix, FanoutArgs, Shared};

/// Creates tasks through the REST API at the fixed rate; title carries the intended send time.
pub(super) async fn publish_rest(
    args: &FanoutArgs,
    boards: &[i64],
    shared: &Arc<Shared>,
    pub_base: Instant,
    total: u64,
    published: &Arc<Vec<AtomicU64>>,
    errors: &Arc<AtomicU64>,
) -> Result<()> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.publishers)
        .timeout(Duration::from_secs(30))
        .build()?;
    let base = args.publish_url.as_deref().unwrap_or(&args.url);
    let url = format!("{}/api/tasks", base.trim_end_matches('/'));
    let next = Arc::new(AtomicU64::new(0));
    let interval = 1.0 / args.rate;
    let mut workers = Vec::new();
    for _ in 0..args.publishers.max(1) {
        let (client, url, next) = (client.clone(), url.clone(), next.clone());
        let (boards, shared, published, errors) = (
            boards.to_vec(),
            shared.clone(),
            published.clone(),
            errors.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= total {
                    return;
                }
                let intended = pub_base + Duration::from_secs_f64(k as f64 * interval);
                tokio::time::sleep_until(intended.into()).await;
                let bi = (k as usize) % boards.len();
                let sent_us = intended.duration_since(shared.base).as_micros() as u64;
                let body = format!(
                    r#"{{"board_id":{},"title":"{}{sent_us}","created_by":1}}"#,
                    boards[bi],
                    extract::TITLE_MARK
                );
                let mut req = client.post(&url).header("content-type", "application/json");
                if let Some(a) = &shared.auth {
                    req = req.header("authorization", a);
                }
                let ok = req.body(body).send().await.is_ok_and(|r| r.status() == 201);
                if ok {
                    shared
                        .answered
                        .record(k as usize, shared.now_us().saturating_sub(sent_us));
                    published[bi].fetch_add(1, Ordering::Relaxed);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for w in workers {
        w.await?;
    }
    Ok(())
}

/// Publishes over core NATS at the fixed rate, numbering events per board.
#[allow(clippy::too_many_arguments)]
pub(super) async fn publish_nats(
    args: &FanoutArgs,
    boards: &[i64],
    board_base: i64,
    shared: &Arc<Shared>,
    pub_base: Instant,
    total: u64,
    published: &Arc<Vec<AtomicU64>>,
    errors: &Arc<AtomicU64>,
) -> Result<()> {
    let client = async_nats::connect(&args.nats_url)
        .await
        .with_context(|| format!("connect {}", args.nats_url))?;
    let prefix = nats_prefix(board_base);
    let mut seqs = vec![0i64; boards.len()];
    let interval = 1.0 / args.rate;
    for k in 0..total {
        let intended = pub_base + Duration::from_secs_f64(k as f64 * interval);
        tokio::time::sleep_until(intended.into()).await;
        let bi = (k as usize) % boards.len();
        seqs[bi] += 1;
        let sent_us = intended.duration_since(shared.base).as_micros() as u64;
        let mut body = format!(
            r#"{{"type":"created","board_id":{},"seq":{},"title":"{}{sent_us}","pad":""#,
            boards[bi],
            seqs[bi],
            extract::TITLE_MARK
        );
        while body.len() + 2 < args.payload_bytes {
            body.push('x');
        }
        body.push_str("\"}");
        match client
            .publish(format!("{prefix}.{}", boards[bi]), body.into())
            .await
        {
            Ok(()) => {
                published[bi].fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    client.flush().await?;
    Ok(())
}
