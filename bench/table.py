#!/usr/bin/env python3
"""Markdown tables of a bench/results/<timestamp>.json (scripts/bench.sh), for BENCHMARKS.md."""
import json
import sys


def f(x, nd=0):
    return "–" if x is None else f"{x:,.{nd}f}"


def main(path):
    data = json.load(open(path))
    runs = data["runs"]
    print(f"Run `{path}`; {data['machine'].splitlines()[0]}\n")
    print("| scenario | gateway deliveries/CPU-s | nats-ws | limit | gateway ÷ nats-ws | gateway ÷ limit "
          "| p50 / p99 ms gateway | nats-ws | limit | missing/dup/order gateway | nats-ws |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    names = sorted({k.rsplit("-", 1)[0] for k in runs if k.startswith("fanout-") and k.endswith("-gateway")})
    for n in names:
        g, w, l = runs.get(n + "-gateway"), runs.get(n + "-nats-ws"), runs.get(n + "-limit")
        def eff(r):
            return r and r.get("deliveries_per_server_cpu_s")
        def lat(r):
            return "–" if not r else f"{r['latency']['p50_ms']:.1f} / {r['latency']['p99_ms']:.1f}"
        def acc(r):
            if not r:
                return "–"
            d = r["deliveries"]
            return f"{d['missing']}/{d['duplicates']}/{d['out_of_order']} of {d['expected']:,}"
        ratio_w = eff(g) / eff(w) if eff(g) and eff(w) else None
        ratio_l = eff(g) / eff(l) if eff(g) and eff(l) else None
        print(f"| {n.removeprefix('fanout-')} | {f(eff(g))} | {f(eff(w))} | {f(eff(l))} | "
              f"{f(ratio_w, 2)}× | {f(ratio_l and ratio_l * 100)}% | {lat(g)} | {lat(w)} | {lat(l)} | {acc(g)} | {acc(w)} |")
    print()
    print("| idle connections | held | server RSS growth per connection | server CPU per connection |")
    print("|---|---:|---:|---:|")
    for k, r in sorted(runs.items()):
        if r.get("mode") == "connections":
            print(f"| {k} | {r['connections']:,} | {f(r.get('bytes_per_connection'))} B | "
                  f"{f(r.get('cpu_us_per_connection_s'), 2)} µs/s |")
    on, off = runs.get("metrics-ab-on"), runs.get("metrics-ab-off")
    if on and off:
        print()
        print("| metrics A/B (same binary, 1k subscribers, 1 board, 100/s) | deliveries/CPU-s | p50 / p99 ms |")
        print("|---|---:|---:|")
        for label, r in (("metrics on", on), ("metrics off (METRICS_PORT=0)", off)):
            print(f"| {label} | {f(r.get('deliveries_per_server_cpu_s'))} | "
                  f"{r['latency']['p50_ms']:.1f} / {r['latency']['p99_ms']:.1f} |")
        a, b = on.get("deliveries_per_server_cpu_s"), off.get("deliveries_per_server_cpu_s")
        if a and b:
            print(f"| on ÷ off | {a / b:.2f} | |")
    print()
    print("| creates | boards | creates/s |")
    print("|---|---:|---:|")
    for k, r in sorted(runs.items()):
        if r.get("mode") in ("rest", "pgbench"):
            print(f"| {k} | {r['params']['boards']} | {f(r.get('creates_per_s'))} |")


if __name__ == "__main__":
    main(sys.argv[1])
