#!/usr/bin/env python3
"""Reads `perf script` output (call-graph samples) on stdin and prints the share of samples in each
group of code: a sample counts for the first group, in the order below, with a frame on its stack.
Used by scripts/profile.sh."""
import sys, re, collections
RULES = [
    ("gathering (creates.rs)", r"creates::Gather"),
    ("REST route handler (routes::, JSON, auth)", r"taskboard_gateway::routes::"),
    ("gRPC server call (tonic, our handlers)", r"TaskServiceServer|tonic::server|taskboard_tasks::service"),
    ("writer + database (tokio-postgres)", r"taskboard_tasks::writer|taskboard_tasks::db|tokio_postgres"),
    ("NATS client (the relay's publish / the gateway's intake)", r"taskboard_tasks::outbox|async_nats"),
    ("HTTP/2 connection (h2, hyper h2)", r"h2::|hyper::proto::h2"),
    ("HTTP/1 connection (hyper h1: read, parse, write)", r"hyper::proto::h1"),
    ("NATS intake (events.rs)", r"taskboard_gateway::events"),
    ("tokio scheduler, parked/idle (epoll, futex, switches)", r"tokio::runtime|epoll_wait|futex|finish_task_switch|schedule"),
]
counts = collections.Counter(); total = 0
block = []
def flush():
    global total
    if not block: return
    total += 1
    text = "\n".join(block)
    for name, pat in RULES:
        if re.search(pat, text):
            counts[name] += 1; break
    else:
        counts["other"] += 1
for line in sys.stdin:
    if not line.strip():
        flush(); block = []
    else:
        block.append(line)
flush()
for name, _ in RULES + [("other", "")]:
    print(f"{name:55s} {100*counts[name]/max(total,1):5.1f}%")
print("samples", total)
