//! The delivery summary: totals and per-board counts, as Markdown and JSON.
use anyhow::{Context, Result};
use serde::Serialize;

/// One board's delivery record, over every watcher session on it.
#[derive(Default, Debug, Clone, Serialize)]
pub struct BoardTotals {
    pub board_id: i64,
    /// Events written to it (writers' acknowledged requests).
    pub written: u64,
    /// Watcher sessions on it.
    pub sessions: u64,
    /// Frames watchers received.
    pub delivered: u64,
    pub missing: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// Frames without a seq (not an event).
    pub unparsed: u64,
}

/// The run's delivery summary (what `--summary` writes).
#[derive(Default, Debug, Serialize)]
pub struct Summary {
    /// Watcher users that ran (each holds one board's socket at a time).
    pub watchers: u64,
    pub written: u64,
    pub sessions: u64,
    pub resumes: u64,
    pub browser_visits: u64,
    pub delivered: u64,
    pub browser_frames: u64,
    pub missing: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub unparsed: u64,
    /// Sessions the server ended (a close frame or a dropped connection), resumed like any other.
    pub server_closes: u64,
    /// Watchers still waiting for events when --settle-secs ran out (their shortfall is missing).
    pub unsettled: u64,
    /// POST→frame of created frames, from the harness's own histogram (Goose has the same
    /// samples in its report, in whole milliseconds).
    pub latency_ms: crate::report::LatencySummary,
    /// Goose's report files of the same run (`--report-file`), linked from the Markdown.
    pub goose_reports: Vec<String>,
    pub boards: Vec<BoardTotals>,
}

impl Summary {
    /// Nothing lost, doubled or reordered, and something was delivered.
    pub fn clean(&self) -> bool {
        self.delivered > 0
            && self.missing == 0
            && self.duplicates == 0
            && self.out_of_order == 0
            && self.unsettled == 0
    }
}

/// The summary as Markdown: totals, then the boards (the busiest 20, and any with a fault).
pub fn markdown(s: &Summary) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let verdict = if s.clean() {
        "every frame arrived once, in order"
    } else if s.delivered == 0 {
        "**nothing delivered**: connects or writes failed, see Goose's errors (a token that is not a member of the boards gets 403; use a service-role token)"
    } else {
        "**delivery faults**"
    };
    let _ = writeln!(out, "# Mixed load: WebSocket delivery ({verdict})\n");
    if !s.goose_reports.is_empty() {
        let links: Vec<String> = s
            .goose_reports
            .iter()
            .map(|r| format!("[{r}]({r})"))
            .collect();
        let _ = writeln!(
            out,
            "Goose's report of this run (requests, latency percentiles, `WS` rows): {}\n",
            links.join(", ")
        );
    }
    let _ = writeln!(
        out,
        "| watchers | written | watcher sessions | resumes | server closes | frames delivered | missing | duplicated | out of order | unparsed | unsettled watchers | browser visits | browser frames |"
    );
    let _ = writeln!(out, "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let _ = writeln!(
        out,
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
        s.watchers,
        s.written,
        s.sessions,
        s.resumes,
        s.server_closes,
        s.delivered,
        s.missing,
        s.duplicates,
        s.out_of_order,
        s.unparsed,
        s.unsettled,
        s.browser_visits,
        s.browser_frames
    );
    let l = &s.latency_ms;
    let _ = writeln!(
        out,
        "POST→frame of created frames ({} samples): p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms.\n",
        l.count, l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms
    );
    let _ = writeln!(
        out,
        "| board | written | sessions | delivered | missing | duplicated | out of order |"
    );
    let _ = writeln!(out, "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (i, b) in s.boards.iter().enumerate() {
        if i < 20 || b.missing + b.duplicates + b.out_of_order > 0 {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                b.board_id,
                b.written,
                b.sessions,
                b.delivered,
                b.missing,
                b.duplicates,
                b.out_of_order
            );
        }
    }
    if s.boards.len() > 20 {
        let _ = writeln!(
            out,
            "\n({} boards in all; the JSON has every one.)",
            s.boards.len()
        );
    }
    out
}

pub(super) fn write(path: &std::path::Path, s: &Summary) -> Result<()> {
    std::fs::write(path, markdown(s)).with_context(|| format!("write {}", path.display()))?;
    let json = path.with_extension("summary.json");
    std::fs::write(&json, serde_json::to_vec_pretty(s)?)
        .with_context(|| format!("write {}", json.display()))?;
    Ok(())
}
