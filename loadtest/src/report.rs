//! Results: latency histograms (HDR, microseconds), the JSON result file and the human summary.
use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::accounting::Totals;
use crate::procstat::ServerCost;

/// Histograms split into shards so thousands of subscribers do not contend on one lock.
pub struct Latencies {
    shards: Vec<Mutex<Histogram<u64>>>,
}

/// Highest latency recorded exactly: one minute, in microseconds (higher values are clamped).
const MAX_US: u64 = 60_000_000;

impl Latencies {
    pub fn new(shards: usize) -> Self {
        Latencies {
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(Histogram::new_with_bounds(1, MAX_US, 3).expect("bounds")))
                .collect(),
        }
    }

    pub fn record(&self, shard: usize, us: u64) {
        let mut h = self.shards[shard % self.shards.len()]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let _ = h.record(us.clamp(1, MAX_US));
    }

    pub fn merged(&self) -> Histogram<u64> {
        let mut all = Histogram::new_with_bounds(1, MAX_US, 3).expect("bounds");
        for s in &self.shards {
            let _ = all.add(&*s.lock().unwrap_or_else(|e| e.into_inner()));
        }
        all
    }
}

/// Percentiles in milliseconds.
#[derive(Debug, Clone, Serialize, Default)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// (latency ms, fraction of deliveries at or below it): the CDF for plots.
    pub cdf: Vec<(f64, f64)>,
}

impl LatencySummary {
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        let cdf = [
            0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9999, 1.0,
        ]
        .iter()
        .map(|q| (ms(h.value_at_quantile(*q)), *q))
        .collect();
        LatencySummary {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            cdf,
        }
    }
}

/// The JSON result of one run.
#[derive(Debug, Clone, Serialize, Default)]
pub struct RunResult {
    pub mode: String,
    pub target: String,
    pub params: serde_json::Value,
    pub duration_s: f64,
    pub published: u64,
    pub publish_errors: u64,
    pub deliveries: Totals,
    pub deliveries_per_s: f64,
    pub latency: LatencySummary,
    /// REST publishes: intended send time → the 201 answer (the commit's share of `latency`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_latency: Option<LatencySummary>,
    pub connections: u64,
    pub connect_errors: u64,
    pub server: Vec<ServerCost>,
    pub server_cpu_seconds: f64,
    /// Deliveries per CPU-second of the given server processes (None without --server-pid).
    pub deliveries_per_server_cpu_s: Option<f64>,
    /// RSS growth per open connection (idle connections mode).
    pub bytes_per_connection: Option<f64>,
    pub cpu_us_per_connection_s: Option<f64>,
    /// Bytes of the delivered frames on the wire, headers included (fan-out mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wire_bytes: Option<u64>,
    pub ok: bool,
}

impl RunResult {
    /// Prints the summary a person reads.
    pub fn print(&self) {
        let d = &self.deliveries;
        println!("\n== {} ({}) ==", self.mode, self.target);
        println!("duration            {:.1} s", self.duration_s);
        if self.published > 0 || self.publish_errors > 0 {
            println!(
                "published           {} ({} errors)",
                self.published, self.publish_errors
            );
        }
        if self.connections > 0 {
            println!(
                "connections         {} ({} failed)",
                self.connections, self.connect_errors
            );
        }
        if d.delivered > 0 || d.expected > 0 {
            println!(
                "deliveries          {} of {} expected, {:.0}/s",
                d.delivered, d.expected, self.deliveries_per_s
            );
            println!(
                "missing/dup/order   {} / {} / {}{}",
                d.missing,
                d.duplicates,
                d.out_of_order,
                if d.unparsed > 0 {
                    format!(" ({} unparsed)", d.unparsed)
                } else {
                    String::new()
                }
            );
            if d.resumed > 0 {
                println!(
                    "resumed             {} times after a 1013 close (from the last seq held)",
                    d.resumed
                );
            }
            let l = &self.latency;
            println!(
                "latency ms          p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
                l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
            );
        }
        if let Some(l) = &self.publish_latency {
            println!(
                "POST answered ms    p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
                l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
            );
        }
        for s in &self.server {
            println!(
                "server pid {:<7}   cpu {:.2} s, rss start {:.1} MiB, peak {:.1} MiB",
                s.pid,
                s.cpu_seconds,
                s.start_rss_bytes as f64 / 1048576.0,
                s.peak_rss_bytes as f64 / 1048576.0
            );
        }
        if let Some(v) = self.deliveries_per_server_cpu_s {
            println!("deliveries/server-CPU-s {v:.0}");
        }
        if let Some(b) = self.bytes_per_connection {
            println!("bytes/connection    {b:.0}");
        }
        println!(
            "result              {}",
            if self.ok { "OK" } else { "FAILED" }
        );
    }

    /// Writes the JSON file, if asked.
    pub fn write(&self, path: Option<&std::path::Path>) -> anyhow::Result<()> {
        if let Some(p) = path {
            std::fs::write(p, serde_json::to_vec_pretty(self)?)?;
            println!("wrote {}", p.display());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_merge_into_one_distribution() {
        let l = Latencies::new(4);
        for i in 1..=1000u64 {
            l.record(i as usize, i * 10);
        }
        let s = LatencySummary::of(&l.merged());
        assert_eq!(s.count, 1000);
        assert!((s.p50_ms - 5.0).abs() < 0.05, "{}", s.p50_ms);
        assert!((s.max_ms - 10.0).abs() < 0.05, "{}", s.max_ms);
    }
}
