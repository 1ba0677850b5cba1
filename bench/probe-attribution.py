#!/usr/bin/env python3
"""Where a POST→frame tail comes from, for scripts/probe-latency.sh --profile: the services' own
stage histograms (a /metrics scrape before and after one round, differenced) and, from
`perf sched latency --pids` over the middle of that round, how long each process's threads waited
for a CPU after being woken (scheduler delay, the off-CPU time that is not the process's own doing).

Usage: probe-attribution.py DIR ROUND [LATENCY_JSON]
  LATENCY_JSON                                   the round's POST→frame figures (k6 summary shape)
  DIR/metrics-<side>-<ROUND>-{before,after}.txt  Prometheus text of gateway and tasks
  DIR/sched-<ROUND>.txt                          `perf sched latency --pids` output
  DIR/threads-<ROUND>.txt                        "<name> <tid>" lines: whose thread each tid is
  DIR/cpu-<ROUND>.txt                            two /proc/stat "cpu" lines, before and after
Prints a Markdown section on stdout."""
import collections, json, pathlib, re, sys

STAGES = [  # (side, metric, label filter, what it covers)
    ("gateway", "taskboard_http_request_duration_seconds", 'method="POST"',
     "POST handled by the gateway (gathering, gRPC, commit)"),
    ("tasks", "taskboard_outbox_publish_lag_seconds", "", "commit → published to NATS (relay)"),
    ("gateway", "taskboard_event_lag_seconds", "", "commit → received by the gateway"),
    ("gateway", "taskboard_fanout_seconds", "", "received → last subscriber's frame written"),
    ("gateway", "taskboard_end_to_end_lag_seconds", "", "commit → last subscriber's frame written"),
]


def buckets(path, metric, label):
    """{upper bound: cumulative count} for one histogram, summed over label sets that match."""
    out = collections.Counter()
    pat = re.compile(rf'^{metric}_bucket\{{(.*)\}} (\S+)$')
    for line in pathlib.Path(path).read_text().splitlines():
        m = pat.match(line)
        if not m or (label and label not in m.group(1)):
            continue
        le = re.search(r'le="([^"]+)"', m.group(1)).group(1)
        out[float("inf") if le == "+Inf" else float(le)] += float(m.group(2))
    return out


def quantile(cum, q):
    """The upper bound of the bucket that holds quantile q (what a histogram can say)."""
    total = cum.get(float("inf"), 0)
    if total <= 0:
        return None
    for le in sorted(cum):
        if cum[le] >= q * total:
            return le
    return float("inf")


def ms(v):
    if v is None:
        return "–"
    return "> 5 s" if v == float("inf") else f"≤ {v * 1e3:g}"


def stage_rows(d, rnd):
    rows = []
    for side, metric, label, what in STAGES:
        before = d / f"metrics-{side}-{rnd}-before.txt"
        after = d / f"metrics-{side}-{rnd}-after.txt"
        if not (before.exists() and after.exists()):
            continue
        b, a = buckets(before, metric, label), buckets(after, metric, label)
        cum = {le: a[le] - b.get(le, 0) for le in a}
        n = cum.get(float("inf"), 0)
        over = n - cum.get(0.025, 0)
        rows.append(f"| {what} | `{metric}` | {n:.0f} | {ms(quantile(cum, 0.5))} | "
                    f"{ms(quantile(cum, 0.99))} | {over:.0f} |")
    return rows


def sched_rows(d, rnd):
    owner = {}
    for line in (d / f"threads-{rnd}.txt").read_text().splitlines():
        name, tid = line.split()
        owner[tid] = name
    agg = collections.defaultdict(lambda: [0.0, 0, 0.0, 0.0])  # runtime ms, switches, delay·n, max
    pat = re.compile(r"^\s*(.+?):(\d+)\s*\|\s*([\d.]+) ms\s*\|\s*(\d+)\s*\|\s*avg:\s*([\d.]+) ms\s*\|"
                     r"\s*max:\s*([\d.]+) ms")
    for line in (d / f"sched-{rnd}.txt").read_text().splitlines():
        m = pat.match(line)
        if not m:
            continue
        comm, tid, run, sw, avg, mx = m.groups()
        # Our processes by thread id (their workers share the comm "tokio-runtime-w"); the rest
        # (postgres backends, nats-server, the kernel's own) by command name.
        name = owner.get(tid, comm)
        a = agg[name]
        a[0] += float(run)
        a[1] += int(sw)
        a[2] += float(avg) * int(sw)
        a[3] = max(a[3], float(mx))
    top = sorted(agg.items(), key=lambda kv: -kv[1][0])[:8]
    return [f"| {n} | {a[0]:.0f} | {a[1]} | {a[2] / max(a[1], 1):.3f} | {a[3]:.1f} |" for n, a in top]


def cpu_busy(d, rnd):
    f = d / f"cpu-{rnd}.txt"
    if not f.exists():
        return None
    b, a = [list(map(int, line.split()[1:])) for line in f.read_text().splitlines()[:2]]
    diff = [y - x for x, y in zip(b, a)]
    idle = diff[3] + diff[4]  # idle + iowait
    return 1 - idle / max(sum(diff), 1)


def main():
    d, rnd = pathlib.Path(sys.argv[1]), sys.argv[2]
    out = ["### Attribution: a profiled round of ours", ""]
    if len(sys.argv) > 3 and pathlib.Path(sys.argv[3]).exists():
        lat = json.loads(pathlib.Path(sys.argv[3]).read_text())["metrics"]["post_to_frame"]
        out += [f"POST→frame in this round, as the harness saw it: p50 {lat['p(50)']:.1f}, "
                f"p99 {lat['p(99)']:.1f}, max {lat['max']:.1f} ms (perf running; not in the medians above).", ""]
    out += [
           "Stage histograms from the services' /metrics (bucket bounds, ms; the buckets are "
           "…, 10, 25, 50, 100, …):", "",
           "| stage | metric | events | p50 | p99 | over 25 ms |",
           "| --- | --- | ---: | ---: | ---: | ---: |", *stage_rows(d, rnd), ""]
    busy = cpu_busy(d, rnd)
    if (d / f"sched-{rnd}.txt").exists():
        out += [f"Scheduler delay (`perf sched latency`, woken → running), the busiest processes"
                + (f"; both CPUs {busy:.0%} busy over the window" if busy is not None else "") + ":", "",
                "| process | CPU ms | switches | avg delay ms | max delay ms |",
                "| --- | ---: | ---: | ---: | ---: |", *sched_rows(d, rnd), ""]
    print("\n".join(out))


if __name__ == "__main__":
    main()
