//! Server-side cost, read from `/proc/<pid>`: CPU seconds (user + system) and resident memory.
use std::time::Duration;

/// Clock ticks per second of `/proc/<pid>/stat` times (USER_HZ; 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// CPU seconds used so far by `pid` (all threads).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SEC)
}

/// Resident set size of `pid`, bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Samples RSS every 100 ms while a run goes on; keeps the peak.
pub struct Sampler {
    pids: Vec<u32>,
    cpu_start: Vec<f64>,
    peak: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
    stop: tokio::sync::watch::Sender<bool>,
}

/// What a sampler measured, per server process.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServerCost {
    pub pid: u32,
    pub cpu_seconds: f64,
    pub peak_rss_bytes: u64,
    pub start_rss_bytes: u64,
    pub end_rss_bytes: u64,
}

impl Sampler {
    pub fn start(pids: &[u32]) -> Sampler {
        let cpu_start = pids
            .iter()
            .map(|p| cpu_seconds(*p).unwrap_or(0.0))
            .collect();
        let peak = std::sync::Arc::new(std::sync::Mutex::new(
            pids.iter()
                .map(|p| rss_bytes(*p).unwrap_or(0))
                .collect::<Vec<_>>(),
        ));
        let (stop, mut rx) = tokio::sync::watch::channel(false);
        let (p2, k2) = (pids.to_vec(), peak.clone());
        tokio::spawn(async move {
            loop {
                {
                    let mut k = k2.lock().unwrap_or_else(|e| e.into_inner());
                    for (i, pid) in p2.iter().enumerate() {
                        k[i] = k[i].max(rss_bytes(*pid).unwrap_or(0));
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = rx.changed() => return,
                }
            }
        });
        Sampler {
            pids: pids.to_vec(),
            cpu_start,
            peak,
            stop,
        }
    }

    /// RSS now, per pid (for a baseline before connections open).
    pub fn rss_now(&self) -> Vec<u64> {
        self.pids
            .iter()
            .map(|p| rss_bytes(*p).unwrap_or(0))
            .collect()
    }

    pub fn finish(self, start_rss: &[u64]) -> Vec<ServerCost> {
        let _ = self.stop.send(true);
        let peak = self.peak.lock().unwrap_or_else(|e| e.into_inner()).clone();
        self.pids
            .iter()
            .enumerate()
            .map(|(i, pid)| ServerCost {
                pid: *pid,
                cpu_seconds: cpu_seconds(*pid).unwrap_or(0.0) - self.cpu_start[i],
                peak_rss_bytes: peak[i],
                start_rss_bytes: start_rss.get(i).copied().unwrap_or(0),
                end_rss_bytes: rss_bytes(*pid).unwrap_or(0),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        assert!(
            rss_bytes(pid).unwrap() > 1024 * 1024,
            "a process has more than 1 MiB resident"
        );
        // Burn 200 ms of this thread's CPU, measured by the scheduler's own nanosecond clock
        // (an independent source), however long that takes on a loaded machine: the counter
        // (10 ms ticks) must grow by most of it.
        let thread_cpu = || -> f64 {
            let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
            s.split_whitespace().next().unwrap().parse::<f64>().unwrap() / 1e9
        };
        let before = cpu_seconds(pid).unwrap();
        let start = thread_cpu();
        let mut x = 0u64;
        while thread_cpu() - start < 0.2 {
            for i in 0..10_000u64 {
                x = x.wrapping_add(std::hint::black_box(i * i));
            }
        }
        assert!(x > 0);
        let used = cpu_seconds(pid).unwrap() - before;
        assert!(
            (0.15..5.0).contains(&used),
            "measured {used} CPU seconds for 0.2 s of work"
        );
    }
}
