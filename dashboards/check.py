#!/usr/bin/env python3
"""Checks the dashboards and alert rules against reality (run by scripts/test.sh).

1. Every dashboard validates against a JSON schema generated from @grafana/schema's Dashboard type.
2. Every panel query parses as PromQL (Grafana's variables substituted).
3. promtool check rules / test rules on alerts.yml.
4. Live: the real services (debug binaries, fresh database, the test NATS) are scraped by a real
   Prometheus on loopback after real traffic (taskboard-loadtest); every metric a panel names is one
   the services export, and every panel query returns data.

Environment: TASKBOARD_TEST_PG (admin URL), TASKBOARD_TEST_NATS, TASKBOARD_BIN_DIR (default: the
debug directory of cargo's target directory, as `cargo metadata` reports it, so CARGO_TARGET_DIR and
.cargo/config are honoured). Needs node/npm, promtool and prometheus (Debian's package), promql-parser (PyPI).
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def cargo_bin_dir():
    """Where cargo puts the debug binaries of this workspace (wherever its target directory is)."""
    try:
        meta = subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"],
                              cwd=ROOT, check=True, capture_output=True, text=True).stdout
        return Path(json.loads(meta)["target_directory"]) / "debug"
    except (OSError, subprocess.CalledProcessError, KeyError, ValueError):
        return ROOT / "target" / "debug"


BIN = Path(os.environ.get("TASKBOARD_BIN_DIR") or cargo_bin_dir())
PG = os.environ.get("TASKBOARD_TEST_PG", "postgres://postgres@127.0.0.1:5432/postgres")
NATS = os.environ.get("TASKBOARD_TEST_NATS", "nats://127.0.0.1:4222")
DASHBOARDS = sorted(HERE.glob("*.json"))
failures = []


def fail(msg):
    failures.append(msg)
    print(f"  FAIL {msg}")


def step(msg):
    print(f"== {msg}", flush=True)


def substitute(expr, rate="1m"):
    return (expr.replace("$__rate_interval", rate).replace("$__interval", rate)
            .replace("${datasource}", "prometheus"))


def queries():
    for d in DASHBOARDS:
        dash = json.loads(d.read_text())
        for p in dash.get("panels", []):
            for t in p.get("targets", []):
                yield d.name, p["title"], t["expr"]


def check_schema():
    step("dashboards against @grafana/schema's Dashboard type")
    tooling = HERE / "tooling"
    subprocess.run(["npm", "ci", "--prefer-offline", "--no-audit", "--no-fund", "--silent"], cwd=tooling, check=True)
    schema = Path(tempfile.mkdtemp()) / "dashboard.schema.json"
    subprocess.run([str(tooling / "node_modules/.bin/ts-json-schema-generator"), "-p",
                    str(tooling / "node_modules/@grafana/schema/dist/types/raw/dashboard/x/types.gen.d.ts"),
                    "-t", "Dashboard", "--no-type-check", "--additional-properties", "-o", str(schema)],
                   check=True)
    for d in DASHBOARDS:
        r = subprocess.run([str(tooling / "node_modules/.bin/ajv"), "validate", "--spec=draft7", "--all-errors",
                            "-s", str(schema), "-d", str(d)], capture_output=True, text=True)
        if r.returncode != 0:
            fail(f"{d.name} does not match the Dashboard schema:\n{r.stdout}{r.stderr}")
        else:
            print(f"  ok {d.name}")
        dash = json.loads(d.read_text())
        names = [v.get("name") for v in dash.get("templating", {}).get("list", [])]
        if "datasource" not in names:
            fail(f"{d.name} has no $datasource variable")
        for p in dash["panels"]:
            if p.get("datasource", {}).get("uid") != "${datasource}":
                fail(f"{d.name}: panel {p['title']!r} does not use $datasource")


def check_promql():
    step("panel queries parse as PromQL")
    import promql_parser
    n = 0
    for name, title, expr in queries():
        try:
            promql_parser.parse(substitute(expr))
            n += 1
        except Exception as e:  # the parser raises its own error types
            fail(f"{name}: {title!r}: {expr!r} does not parse: {e}")
    print(f"  ok {n} queries")


def check_rules():
    step("promtool check rules / test rules")
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts.test.yml"]):
        r = subprocess.run(["promtool", *args], cwd=HERE, capture_output=True, text=True)
        print("  " + (r.stdout + r.stderr).strip().replace("\n", "\n  "))
        if r.returncode != 0:
            fail(f"promtool {' '.join(args)}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def wait_for(what, fn, seconds=30):
    deadline = time.time() + seconds
    while True:
        try:
            v = fn()
            if v:
                return v
        except Exception:
            pass
        if time.time() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.2)


def check_live():
    step("live: real services scraped by a real Prometheus after real traffic")
    procs = []
    tmp = Path(tempfile.mkdtemp())
    db = f"tb_t_dash_{os.getpid()}_{int(time.time())}"
    subprocess.run(["psql", PG, "-qc", f"CREATE DATABASE {db}"], check=True)
    prefix = f"tbdash{os.getpid()}"
    grpc, http, gw_m, tasks_m, prom = (free_port() for _ in range(5))
    # As deployed: authentication on; the traffic uses a service-role token.
    secrets = {"JWT_SECRET": os.urandom(24).hex(), "SERVICE_TOKEN": os.urandom(16).hex()}
    env = {"PATH": os.environ["PATH"], "RUST_LOG": "warn", "BIND_ADDR": "127.0.0.1",
           "NATS_URL": NATS, "NATS_SUBJECT_PREFIX": prefix, **secrets}
    try:
        procs.append(subprocess.Popen([str(BIN / "taskboard-tasks")], env={
            **env, "PORT": str(grpc), "METRICS_PORT": str(tasks_m),
            "DATABASE_URL": PG.rsplit("/", 1)[0] + "/" + db, "RELAY_POLL_INTERVAL_MS": "200"}))
        procs.append(subprocess.Popen([str(BIN / "taskboard-gateway")], env={
            **env, "HTTP_PORT": str(http), "METRICS_PORT": str(gw_m),
            "TASK_SERVICE_ADDR": f"127.0.0.1:{grpc}"}))
        wait_for("gateway /ready", lambda: get(f"http://127.0.0.1:{http}/ready"))
        cfg = tmp / "prometheus.yml"
        cfg.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            f"  - job_name: taskboard-gateway\n    static_configs: [{{targets: ['127.0.0.1:{gw_m}']}}]\n"
            f"  - job_name: taskboard-tasks\n    static_configs: [{{targets: ['127.0.0.1:{tasks_m}']}}]\n")
        procs.append(subprocess.Popen(
            ["prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{prom}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        api = f"http://127.0.0.1:{prom}/api/v1"
        wait_for("Prometheus to scrape both targets", lambda: all(
            t["health"] == "up" for t in json.loads(get(f"{api}/targets"))["data"]["activeTargets"])
            and len(json.loads(get(f"{api}/targets"))["data"]["activeTargets"]) == 2)

        # Traffic: REST creates, WebSocket deliveries, a resume, disconnects.
        token = subprocess.run([str(BIN / "taskboard-token"), "--service"], env=env,
                               capture_output=True, text=True, check=True).stdout.strip()
        lt = subprocess.run([str(BIN / "taskboard-loadtest"), "fanout", "--url", f"http://127.0.0.1:{http}",
                             "--subscribers", "20", "--boards", "2", "--rate", "20", "--duration", "3",
                             "--publishers", "4"], capture_output=True, text=True,
                            env={**os.environ, "TASKBOARD_TOKEN": token})
        if lt.returncode != 0:
            fail(f"traffic generation failed:\n{lt.stdout}{lt.stderr}")
        if not re.search(r"POST answered ms +p50 [\d.]+", lt.stdout):
            fail(f"the fan-out report lacks the POST's own latency:\n{lt.stdout}")
        exported = set()
        for port in (gw_m, tasks_m):
            for line in get(f"http://127.0.0.1:{port}/metrics").splitlines():
                m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", line)
                if m and not line.startswith("#"):
                    exported.add(m.group(1))
        # Let a few more scrapes land so rate() has two samples after the traffic.
        time.sleep(4)
        n = 0
        for name, title, expr in queries():
            for metric in set(re.findall(r"\btaskboard_[a-z_]+\b", expr)):
                if metric not in exported:
                    fail(f"{name}: {title!r} uses {metric}, which the services do not export")
            q = urllib.parse.quote(substitute(expr))
            res = json.loads(get(f"{api}/query?query={q}"))
            if res.get("status") != "success" or not res["data"]["result"]:
                fail(f"{name}: {title!r}: {expr!r} returned no data: {res}")
            else:
                n += 1
        print(f"  ok {n} panel queries returned data; {len(exported)} metric names exported")
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run(["psql", PG, "-qc", f"DROP DATABASE IF EXISTS {db}"], check=False)


def main():
    check_schema()
    check_promql()
    check_rules()
    check_live()
    if failures:
        print(f"\n{len(failures)} dashboard/alert check(s) failed")
        sys.exit(1)
    print("\ndashboards and alerts: all checks passed")


if __name__ == "__main__":
    main()
