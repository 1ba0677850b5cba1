//! An HTML page (inline SVG, no scripts, no CDN) from result files: latency CDFs of the fan-out
//! runs and a bar chart of deliveries per server CPU-second.
use std::fmt::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::Value;

const COLORS: [&str; 8] = [
    "#2f6fed", "#c92a2a", "#1f9d55", "#c77700", "#7048e8", "#0b7285", "#e64980", "#495057",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn label(v: &Value, file: &Path) -> String {
    let p = &v["params"];
    let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("run");
    match v["mode"].as_str() {
        Some("fanout") | Some("limit") => format!(
            "{stem}: {} {} subs, {} boards, {}/s",
            v["target"].as_str().unwrap_or(""),
            p["subscribers"],
            p["boards"].as_u64().unwrap_or(1),
            p["rate"]
        ),
        _ => stem.to_owned(),
    }
}

/// Writes the page.
///
/// # Errors
/// A result file cannot be read or parsed, or the page cannot be written.
pub fn write(out: &Path, files: &[PathBuf]) -> Result<()> {
    let mut runs = Vec::new();
    for f in files {
        let v: Value = serde_json::from_slice(
            &std::fs::read(f).with_context(|| format!("read {}", f.display()))?,
        )
        .with_context(|| format!("parse {}", f.display()))?;
        runs.push((label(&v, f), v));
    }
    let mut html = String::from(
        "<!doctype html><meta charset=utf-8><title>Taskboard benchmark</title>\
         <style>body{font:14px system-ui;margin:2rem}svg{background:#fff;border:1px solid #ddd}\
         td,th{padding:.2rem .6rem;text-align:right}th:first-child,td:first-child{text-align:left}</style>\
         <h1>Taskboard benchmark</h1>",
    );
    // Latency CDF (log-scaled x).
    let (w, h, m) = (900.0, 420.0, 50.0);
    let lx = |ms: f64| m + (ms.max(0.01).log10() + 2.0) / 6.0 * (w - 2.0 * m);
    let ly = |q: f64| h - m - q * (h - 2.0 * m);
    let _ = write!(
        html,
        "<h2>Latency CDF (publish → frame received)</h2><svg width={w} height={h}>"
    );
    for d in [-2i32, -1, 0, 1, 2, 3, 4] {
        let x = lx(10f64.powi(d));
        let _ = write!(html, "<line x1={x} y1={} x2={x} y2={} stroke=#eee /><text x={x} y={} font-size=11 text-anchor=middle>{}ms</text>", m, h - m, h - m + 16.0, 10f64.powi(d));
    }
    for q in [0.0, 0.5, 0.9, 0.99, 1.0] {
        let y = ly(q);
        let _ = write!(html, "<line x1={m} y1={y} x2={} y2={y} stroke=#eee /><text x={} y={} font-size=11 text-anchor=end>{q}</text>", w - m, m - 6.0, y + 4.0);
    }
    let mut legend = 0;
    for (i, (name, v)) in runs.iter().enumerate() {
        let Some(cdf) = v["latency"]["cdf"].as_array() else {
            continue;
        };
        if cdf.is_empty() || v["latency"]["count"].as_u64() == Some(0) {
            continue;
        }
        let pts: Vec<String> = cdf
            .iter()
            .filter_map(|p| {
                Some(format!(
                    "{:.1},{:.1}",
                    lx(p[0].as_f64()?),
                    ly(p[1].as_f64()?)
                ))
            })
            .collect();
        let c = COLORS[i % COLORS.len()];
        let _ = write!(
            html,
            "<polyline fill=none stroke={c} stroke-width=2 points=\"{}\" />",
            pts.join(" ")
        );
        let _ = write!(
            html,
            "<text x={} y={} font-size=12 fill={c}>{}</text>",
            m + 10.0,
            m + 14.0 * legend as f64,
            esc(name)
        );
        legend += 1;
    }
    html.push_str("</svg>");
    // Deliveries per server CPU-second.
    let bars: Vec<(&String, f64)> = runs
        .iter()
        .filter_map(|(n, v)| Some((n, v["deliveries_per_server_cpu_s"].as_f64()?)))
        .collect();
    if let Some(max) = bars.iter().map(|b| b.1).reduce(f64::max) {
        let bh = 26.0;
        let height = bars.len() as f64 * bh + 20.0;
        let _ = write!(
            html,
            "<h2>Deliveries per server CPU-second</h2><svg width={w} height={height}>"
        );
        for (i, (n, val)) in bars.iter().enumerate() {
            let y = 10.0 + i as f64 * bh;
            let bw = val / max * (w - 420.0);
            let c = COLORS[i % COLORS.len()];
            let _ = write!(html, "<text x=5 y={} font-size=12>{}</text><rect x=400 y={y} width={bw:.1} height={} fill={c} /><text x={} y={} font-size=12>{val:.0}</text>", y + 16.0, esc(n), bh - 6.0, 405.0 + bw, y + 16.0);
        }
        html.push_str("</svg>");
    }
    // Table.
    html.push_str("<h2>Runs</h2><table><tr><th>run</th><th>deliveries/s</th><th>p50 ms</th><th>p99 ms</th><th>p99.9 ms</th><th>missing</th><th>dup</th><th>order</th><th>server CPU s</th><th>per CPU-s</th><th>B/conn</th></tr>");
    for (n, v) in &runs {
        let f = |p: &str| {
            v.pointer(p)
                .and_then(Value::as_f64)
                .map_or("–".into(), |x| format!("{x:.1}"))
        };
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(n), f("/deliveries_per_s"), f("/latency/p50_ms"), f("/latency/p99_ms"), f("/latency/p999_ms"),
            f("/deliveries/missing"), f("/deliveries/duplicates"), f("/deliveries/out_of_order"),
            f("/server_cpu_seconds"), f("/deliveries_per_server_cpu_s"), f("/bytes_per_connection")
        );
    }
    html.push_str("</table>");
    std::fs::write(out, html).with_context(|| format!("write {}", out.display()))?;
    println!("wrote {}", out.display());
    Ok(())
}
