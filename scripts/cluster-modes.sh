# shellcheck shell=bash
# Sourced by cluster.sh once its nodes run: the two modes, `faults` and `scale`.
# shellcheck disable=SC2154 # pgdir, pgbin, out, ts, secs, rate, ...: set by cluster.sh, which sources this

# --- faults: each sets `rec`, the recovery it measured (run in this shell, not a subshell, so
# the pids of what it restarts are kept) ---

# kill -9 the NATS node gateway 1 is connected to; restarted 10 s later.
fault_nats-kill() {
  local conn n t0 now
  conn=$(nats_conn_of "$(gw_ip 1)") || die "gateway 1 is connected to no NATS node"
  n=${conn%% *}
  log "  kill -9 NATS node $n (gateway 1's)"
  t0=$(date +%s.%N)
  kill -9 "${pid_of[nats$n]}"
  rec="> 60 s: gateway 1 never reconnected"
  for _ in $(seq 1 600); do
    if conn=$(nats_conn_of "$(gw_ip 1)") && [ "${conn%% *}" != "$n" ]; then
      now=$(date +%s.%N)
      rec="gateway 1 on node ${conn%% *} $(python3 -c "print(f'{$now - $t0:.1f}')") s after the kill"
      break
    fi
    sleep 0.1
  done
  sleep 10
  start_nats "$n"
}

# Everything between gateway 1 and its NATS node dropped for 10 s, both ways.
fault_partition() {
  local conn n t0 now
  conn=$(nats_conn_of "$(gw_ip 1)") || die "gateway 1 is connected to no NATS node"
  n=${conn%% *}
  log "  partition gateway 1 from NATS node $n for 10 s"
  on gw1 nft -f - <<NFT
table inet $PFX {
  chain out { type filter hook output priority 0; ip daddr $NET.1$n drop; }
  chain in { type filter hook input priority 0; ip saddr $NET.1$n drop; }
}
NFT
  sleep 10
  on gw1 nft delete table inet "$PFX"
  t0=$(date +%s.%N)
  rec="10 s partition; gateway 1 not connected to NATS 60 s after the heal"
  for _ in $(seq 1 600); do
    if conn=$(nats_conn_of "$(gw_ip 1)"); then
      now=$(date +%s.%N)
      rec="10 s partition; gateway 1 on node ${conn%% *} (was $n) $(python3 -c "print(f'{$now - $t0:.1f}')") s after the heal"
      break
    fi
    sleep 0.1
  done
  # What the gateway itself saw (its log): when it lost the link and got one back.
  rec="$rec; gateway log: $(grep -c 'NATS disconnected' "$state/gw1.log" || true) disconnect(s)"
}

# kill -9 the PostgreSQL primary's postmaster, promote the standby.
fault_pg-failover() {
  local pid t0
  pid=$(head -1 "$pgdir/primary/postmaster.pid")
  log "  kill -9 the PostgreSQL primary ($pid), promote the standby"
  t0=$(date +%s.%N)
  kill -9 "$pid"
  sleep 1
  on pg2 runuser -u postgres -- "$pgbin/pg_ctl" -D "$pgdir/standby" -w promote >/dev/null
  rec=$(until_create_works)
  rec="$(python3 -c "print(f'{$(date +%s.%N) - $t0 - $rec:.1f}')") s to promote (by hand, 1 s after the kill), then $rec s until a create was acknowledged"
}

# kill -9 one of the two task services; restarted 10 s later.
fault_tasks-kill() {
  log "  kill -9 task service 2"
  kill -9 "${pid_of[tasks2]}"
  rec=$(until_create_works)
  sleep 10
  start_tasks 2
  rec="creates through gateway 1 acknowledged $rec s after the kill"
}

# One row per fault from the fan-out JSONs of every gateway in $1.
fault_row() { # dir fault recovery
  python3 - "$@" <<'PY'
import glob, json, sys
d, fault, rec = sys.argv[1:4]
t = dict(published=0, errors=0, delivered=0, expected=0, missing=0, duplicates=0, out_of_order=0)
for f in glob.glob(f"{d}/gw*.json"):
    r = json.load(open(f))
    t["published"] += r["published"]; t["errors"] += r["publish_errors"]
    for k in ("delivered", "expected", "missing", "duplicates", "out_of_order"):
        t[k] += r["deliveries"][k]
print(f"| {fault} | {t['published']} | {t['errors']} | {t['expected']} | {t['delivered']} | "
      f"**{t['missing']}** | **{t['duplicates']}** | **{t['out_of_order']}** | {rec} |")
PY
}

run_faults() {
  local i f dir lpid rec
  for i in $(seq 1 "$gateways"); do node "gw$i" $((40 + i)); start_gateway "$i"; done
  local faults=${only:-nats-kill partition tasks-kill pg-failover}
  {
    echo '```'
    echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r); $(git rev-parse --short HEAD)$(git diff --quiet || echo +changes)"
    echo "nodes: 3 NATS (routes), PostgreSQL primary + synchronous standby, 2 task services, $gateways gateways, 1 load node; one network namespace each"
    echo "load per fault: $secs s at $rate creates/s, 200 subscribers over 20 boards, spread over the gateways; each gateway's subscribers' events created through the next gateway"
    echo '```'
    echo
    echo "| fault | creates acknowledged | creates refused | deliveries expected | delivered | missing | duplicated | out of order | recovery |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
  } >"$out/summary.md"
  for f in $faults; do
    log "fault $f: $secs s of load at $rate creates/s over $gateways gateways"
    dir=$out/$f
    load "$dir" "$gateways" 200 20 "$rate" "$secs" &
    lpid=$!
    sleep $((secs / 3))
    "fault_$f"
    log "  $rec"
    wait "$lpid" || log "  the fan-out reported a failure (see $dir/gw*.log)"
    fault_row "$dir" "$f" "$rec" | tee -a "$out/summary.md"
  done
  cp "$out/summary.md" "bench/results/cluster-faults-$ts.md"
  log "results: bench/results/cluster-faults-$ts.md (raw output in $out/)"
}

# --- scale ---

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

run_scale() {
  local n sub i dir started=0
  {
    echo '```'
    echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r); $(git rev-parse --short HEAD)$(git diff --quiet || echo +changes)"
    echo "$boards boards, $subscribers subscribers, $rate creates/s for $secs s, spread so gateway i holds boards of its own 1/N; NATS: 3 nodes"
    echo '```'
    echo
    echo "| NATS_SUBSCRIBE | gateways | events committed | msgs sent to each gateway (min–max) | share total/N | max ÷ share | frames delivered | gateway CPU µs per frame | missing + dup + out of order |"
    echo "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |"
  } >"$out/summary.md"
  for n in 1 2 4; do
    for sub in board wildcard; do
      for i in $(seq 1 4); do
        if [ -n "${pid_of[gw$i]:-}" ]; then kill -TERM "${pid_of[gw$i]}" 2>/dev/null || true; wait "${pid_of[gw$i]}" 2>/dev/null || true; unset "pid_of[gw$i]"; fi
      done
      for i in $(seq 1 "$n"); do
        [ "$started" -lt "$i" ] && { node "gw$i" $((40 + i)); started=$i; }
        start_gateway "$i" NATS_SUBSCRIBE="$sub"
      done
      dir=$out/$sub-$n
      mkdir -p "$dir"
      for i in $(seq 1 "$n"); do
        echo "$i $(nats_conn_of "$(gw_ip "$i")" | cut -d' ' -f2) $(cpu_ticks "${pid_of[gw$i]}")" >>"$dir/before"
      done
      log "scale: $n gateways, NATS_SUBSCRIBE=$sub"
      load "$dir" "$n" "$subscribers" "$boards" "$rate" "$secs" || log "  the fan-out reported a failure (see $dir/gw*.log)"
      for i in $(seq 1 "$n"); do
        echo "$i $(nats_conn_of "$(gw_ip "$i")" | cut -d' ' -f2) $(cpu_ticks "${pid_of[gw$i]}")" >>"$dir/after"
      done
      python3 - "$dir" "$sub" "$n" "$(getconf CLK_TCK)" <<'PY' | tee -a "$out/summary.md"
import glob, json, sys
d, sub, n, tck = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rd = lambda f: {l.split()[0]: [int(x) for x in l.split()[1:]] for l in open(f"{d}/{f}")}
before, after = rd("before"), rd("after")
msgs = [after[i][0] - before[i][0] for i in sorted(after)]
cpu_s = sum(after[i][1] - before[i][1] for i in after) / tck
res = [json.load(open(f)) for f in sorted(glob.glob(f"{d}/gw*.json"))]
committed = sum(r["published"] for r in res)
frames = sum(r["deliveries"]["delivered"] for r in res)
bad = sum(r["deliveries"][k] for r in res for k in ("missing", "duplicates", "out_of_order"))
share = committed / n
print(f"| {sub} | {n} | {committed} | {min(msgs)}–{max(msgs)} | {share:.0f} | {max(msgs) / share:.2f} | "
      f"{frames} | {cpu_s * 1e6 / max(frames, 1):.1f} | {bad} |")
PY
    done
  done
  cp "$out/summary.md" "bench/results/cluster-scale-$ts.md"
  log "results: bench/results/cluster-scale-$ts.md (raw output in $out/)"
}
