#!/usr/bin/env python3
"""Checks the Helm charts without a cluster (run by scripts/test.sh through scripts/check-helm.sh).

1. values.schema.json of every chart is the one generated from its values.yaml (types, and the
   `# --` comment above each key as its description; unknown keys refused), so the two never drift;
   `--write-schemas` regenerates them. Helm refuses a value of the wrong type.
2. `helm lint --strict` of every chart alone and of the umbrella with each environment.
3. `helm template` of the same, validated by kubernetes-validate --strict against Kubernetes 1.31
   (what Talos 1.8 ships), plus what schemas miss: selectors match pod labels, Services select pods,
   named probe ports exist, referenced ConfigMaps/Secrets are rendered, quantities parse, names are
   DNS-1123, every container runs as non-root with a read-only root, no capabilities and the
   RuntimeDefault seccomp profile, the gateway's grace period outlasts its own drain, and both
   services run with AUTH=on in every environment.
4. No dead values: changing any documented value of a chart changes what it renders.

Usage: helm/check.py HELM_BINARY [--write-schemas]
"""
import copy
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
CHARTS = sorted(p for p in (HERE / "charts").iterdir() if (p / "Chart.yaml").exists())
UMBRELLA = HERE / "taskboard"
K8S = "1.31.0"
# Optional parts switched on for the dead-value check, so the values they use are exercised.
ALL_ON = {
    "gateway": {"ingress": {"enabled": True, "tlsSecret": "tls"}, "autoscaling": {"enabled": True, "websocketsPerPod": 500},
                "serviceMonitor": {"enabled": True},
                "auth": {"issuer": "https://id.example", "jwks": '{"keys": []}', "publicKey": "PEM"}},
    "tasks": {"serviceMonitor": {"enabled": True}},
    "postgres": {},
    "nats": {"replicas": 3},
}
# Values only used in another mode of the same chart: (chart, path) → overrides that select it.
MODE_OF = {
    ("postgres", "cnpg.instances"): {"mode": "cnpg"},
    ("postgres", "cnpg.syncReplicas"): {"mode": "cnpg"},
    ("gateway", "replicas"): {"autoscaling": {"enabled": False}},
    # The key sources take precedence in this order: each one is checked with those before it empty.
    ("gateway", "auth.publicKey"): {"auth": {"jwks": ""}},
    ("gateway", "auth.hs256Secret"): {"auth": {"jwks": "", "publicKey": ""}},
}
failures = []


def fail(msg):
    failures.append(msg)
    print("  FAIL " + msg)


# ---- 1. schemas -------------------------------------------------------------------------------
def comments(values_file):
    """path → the `# --` description above it."""
    out, stack, pending = {}, [], []
    for line in values_file.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = [stripped[4:].strip()]
            continue
        if stripped.startswith("#") and pending:
            pending.append(stripped.lstrip("#").strip())
            continue
        m = re.match(r"^(\s*)([A-Za-z0-9_]+):", line)
        if not m:
            pending = []
            continue
        indent = len(m.group(1)) // 2
        stack = stack[:indent] + [m.group(2)]
        if pending:
            out[".".join(stack)] = " ".join(pending)
        pending = []
    return out


def schema_of(value, path, docs):
    s = {}
    if path in docs:
        s["description"] = docs[path]
    if isinstance(value, bool):
        s["type"] = "boolean"
    elif isinstance(value, int):
        s["type"] = "integer"
    elif isinstance(value, float):
        s["type"] = "number"
    elif isinstance(value, str):
        s["type"] = "string"
    elif isinstance(value, dict):
        s["type"] = "object"
        s["additionalProperties"] = path.split(".")[-1] in ("resources", "requests", "limits") or not value
        s["properties"] = {k: schema_of(v, f"{path}.{k}" if path else k, docs) for k, v in value.items()}
    elif isinstance(value, list):
        s["type"] = "array"
    return s


def generated_schema(chart):
    values = yaml.safe_load((chart / "values.yaml").read_text())
    s = schema_of(values, "", comments(chart / "values.yaml"))
    s["$schema"] = "http://json-schema.org/draft-07/schema#"
    s["title"] = f"Values of the {chart.name} chart"
    s["additionalProperties"] = False
    if chart == UMBRELLA:
        # The components' values are checked by their own charts' schemas.
        for sub in CHARTS:
            s["properties"][sub.name]["additionalProperties"] = True
    # Helm hands every subchart the umbrella's `global` values.
    s["properties"]["global"] = {"type": "object", "description": "Helm's global values (not used)."}
    return json.dumps(s, indent=2, sort_keys=True) + "\n"


def check_schemas(write):
    print("== values.schema.json generated from values.yaml")
    for chart in CHARTS + [UMBRELLA]:
        want = generated_schema(chart)
        path = chart / "values.schema.json"
        if write:
            path.write_text(want)
        elif not path.exists() or path.read_text() != want:
            fail(f"{path.relative_to(HERE)} is out of date: run helm/check.py HELM --write-schemas")
        docs = comments(chart / "values.yaml")
        for leaf in leaves(yaml.safe_load((chart / "values.yaml").read_text())):
            if leaf[0] not in docs:
                fail(f"{chart.name}: value {leaf[0]} has no `# --` description")


# ---- helpers ----------------------------------------------------------------------------------
def leaves(d, prefix=""):
    for k, v in d.items():
        p = f"{prefix}.{k}" if prefix else k
        # `resources` is one value (requests and limits as Kubernetes spells them).
        if isinstance(v, dict) and v and k != "resources":
            yield from leaves(v, p)
        else:
            yield p, v


def merge(a, b):
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def get_path(d, path, default):
    for k in path.split("."):
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def set_path(d, path, value):
    d = copy.deepcopy(d)
    cur = d
    keys = path.split(".")
    for k in keys[:-1]:
        cur = cur.setdefault(k, {})
    cur[keys[-1]] = value
    return d


def changed(v):
    if isinstance(v, bool):
        return not v
    if isinstance(v, int):
        return v + 1
    if isinstance(v, str):
        return v + "x" if not re.fullmatch(r"\d+(\.\d+)?[a-zA-Z]*", v) else "7" + v
    if isinstance(v, dict):
        return {**v, "cpu": "3", "memory": "3Gi"}
    return v


def render(helm, chart, values=None, namespace="taskboard"):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump(values or {}, f)
        f.flush()
        r = subprocess.run([helm, "template", "tb", str(chart), "-n", namespace, "-f", f.name],
                           capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(r.stderr.strip())
    # Generated secrets differ on every render.
    return re.sub(r"(?m)^(\s+(?:password|token|jwt-secret): ).*$", r"\1<random>", r.stdout)


# ---- 3. what schemas miss -----------------------------------------------------------------------
DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
QUANTITY = re.compile(r"^\d+(\.\d+)?(m|Ki|Mi|Gi|Ti|k|M|G)?$")


def semantic(docs, label):
    kinds = {}
    for d in docs:
        kinds.setdefault(d["kind"], []).append(d)
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    pods = []
    for d in docs:
        name = d["metadata"]["name"]
        if len(name) > 63 or not DNS1123.match(name):
            fail(f"{label}: {d['kind']} name {name!r} is not DNS-1123")
        if d["kind"] in ("Deployment", "StatefulSet"):
            spec = d["spec"]
            tlabels = spec["template"]["metadata"]["labels"]
            sel = spec["selector"]["matchLabels"]
            if any(tlabels.get(k) != v for k, v in sel.items()):
                fail(f"{label}: {name}: selector {sel} does not match pod labels {tlabels}")
            pods.append(tlabels)
            pod = spec["template"]["spec"]
            psc = pod.get("securityContext", {})
            if not psc.get("runAsNonRoot") or psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
                fail(f"{label}: {name}: pod not runAsNonRoot with RuntimeDefault seccomp")
            for c in pod["containers"]:
                sc = c.get("securityContext", {})
                if not (sc.get("readOnlyRootFilesystem") and sc.get("allowPrivilegeEscalation") is False
                        and sc.get("capabilities", {}).get("drop") == ["ALL"]):
                    fail(f"{label}: {name}/{c['name']}: securityContext not locked down")
                ports = {p.get("name") for p in c.get("ports", [])} | {p["containerPort"] for p in c.get("ports", [])}
                for probe in ("readinessProbe", "livenessProbe"):
                    p = c.get(probe, {})
                    port = (p.get("httpGet") or p.get("grpc") or p.get("tcpSocket") or {}).get("port")
                    if port is not None and port not in ports:
                        fail(f"{label}: {name}/{c['name']}: {probe} port {port} is not a container port")
                for kind in ("requests", "limits"):
                    for k, v in c.get("resources", {}).get(kind, {}).items():
                        if not QUANTITY.match(str(v)):
                            fail(f"{label}: {name}: {kind}.{k} {v!r} is not a quantity")
                for e in c.get("env", []):
                    # Secrets reach the processes as mounted files (the *_FILE variables).
                    if e.get("valueFrom", {}).get("secretKeyRef"):
                        fail(f"{label}: {name}: secret {e['name']} passed as an environment variable")
                    if e["name"].endswith("_FILE") and not any(
                            e["value"].startswith(m["mountPath"] + "/") for m in c.get("volumeMounts", [])):
                        fail(f"{label}: {name}: {e['name']}={e['value']} is on no mounted volume")
                env = {e["name"]: e.get("value") for e in c.get("env", [])}
                if c["name"] == "gateway":
                    pre = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
                    if pod["terminationGracePeriodSeconds"] <= pre + int(env["SHUTDOWN_GRACE_SECS"]):
                        fail(f"{label}: gateway grace period does not outlast preStop + its drain")
            if pod.get("automountServiceAccountToken") is not False:
                fail(f"{label}: {name}: mounts a service-account token (none of our pods uses the API)")
            # Alone, postgres reads the task service's Secret (the umbrella renders both).
            for v in pod.get("volumes", []):
                secrets = [v.get("secret", {}).get("secretName")] + [
                    s.get("secret", {}).get("name") for s in v.get("projected", {}).get("sources", [])]
                for sn in filter(None, secrets):
                    shared = (label.startswith("postgres") and sn.endswith("-tasks-db")) or (
                        label.startswith("gateway") and sn.endswith("-service-token"))
                    if ("Secret", sn) not in names and "existing" not in label and not shared:
                        fail(f"{label}: {name}: Secret {sn} is not rendered")
                cm = v.get("configMap", {}).get("name")
                if cm and ("ConfigMap", cm) not in names:
                    fail(f"{label}: {name}: ConfigMap {cm} is not rendered")
    # Addresses the services are given must name a rendered Service (in a whole-system render;
    # CloudNativePG's `-rw` Service is made by its operator).
    if label.startswith("umbrella"):
        services = {n for k, n in names if k == "Service"}
        for d in kinds.get("Deployment", []):
            for c in d["spec"]["template"]["spec"]["containers"]:
                for e in c.get("env", []):
                    if e["name"] in ("TASK_SERVICE_ADDR", "NATS_URL", "DB_HOST"):
                        host = re.sub(r"^\w+://", "", e["value"]).split(":")[0]
                        if host not in services and not host.endswith("-rw"):
                            fail(f"{label}: {e['name']}={e['value']} names no rendered Service")
        for ing in kinds.get("Ingress", []):
            for rule in ing["spec"]["rules"]:
                for path in rule["http"]["paths"]:
                    if path["backend"]["service"]["name"] not in services:
                        fail(f"{label}: Ingress backend {path['backend']['service']['name']} is not rendered")
    for svc in kinds.get("Service", []):
        sel = svc["spec"].get("selector", {})
        if sel and not any(all(p.get(k) == v for k, v in sel.items()) for p in pods):
            fail(f"{label}: Service {svc['metadata']['name']} selects no pod")


def validate(rendered, label):
    r = subprocess.run(["kubernetes-validate", "--strict", "-k", K8S, "-"], input=rendered,
                       capture_output=True, text=True)
    bad = [l for l in (r.stdout + r.stderr).splitlines() if l.startswith("ERROR")]
    if r.returncode != 0 and bad:
        fail(f"{label}: kubernetes-validate: {bad[:3]}")
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    semantic(docs, label)
    return docs


def main():
    helm = sys.argv[1]
    write = "--write-schemas" in sys.argv
    check_schemas(write)

    print("== helm lint --strict, helm template, kubernetes-validate --strict -k " + K8S)
    for chart in CHARTS:
        r = subprocess.run([helm, "lint", "--strict", str(chart)], capture_output=True, text=True)
        if r.returncode != 0:
            fail(f"helm lint {chart.name}: {r.stdout[-400:]}{r.stderr[-400:]}")
        validate(render(helm, chart), chart.name)
        validate(render(helm, chart, ALL_ON[chart.name]), chart.name + " (all on)")
    validate(render(helm, CHARTS[[c.name for c in CHARTS].index("postgres")], {"mode": "cnpg"}), "postgres cnpg")
    validate(render(helm, CHARTS[[c.name for c in CHARTS].index("tasks")],
                    {"database": {"existingSecret": "given"}}), "tasks existing secret")
    subprocess.run([helm, "dependency", "build", str(UMBRELLA)], check=True, capture_output=True)
    for env in ("dev", "prod"):
        f = HERE / "environments" / f"{env}.yaml"
        r = subprocess.run([helm, "lint", "--strict", str(UMBRELLA), "-f", str(f)], capture_output=True, text=True)
        if r.returncode != 0:
            fail(f"helm lint umbrella {env}: {r.stdout[-400:]}")
        docs = validate(render(helm, UMBRELLA, yaml.safe_load(f.read_text())), f"umbrella {env}")
        # Authentication is never silently off: both services run with AUTH=on in every environment.
        for d in docs:
            if d["kind"] == "Deployment":
                for c in d["spec"]["template"]["spec"]["containers"]:
                    auth = {e["name"]: e.get("value") for e in c.get("env", [])}.get("AUTH")
                    if auth != "on":
                        fail(f"umbrella {env}: {d['metadata']['name']} runs with AUTH={auth}")
        print(f"  ok umbrella {env}: {len(docs)} objects: "
              + ", ".join(sorted({d['kind'] for d in docs})))
    prod = [d for d in yaml.safe_load_all(render(helm, UMBRELLA, yaml.safe_load((HERE / 'environments/prod.yaml').read_text()))) if d]
    deployments = {d["metadata"]["name"]: d for d in prod if d["kind"] in ("Deployment", "StatefulSet")}
    if deployments["tb-tasks"]["spec"]["replicas"] < 2:
        fail("prod: fewer than 2 task services")
    if deployments["tb-nats"]["spec"]["replicas"] != 3:
        fail("prod: NATS is not a 3-node cluster")
    rule = next((d for d in prod if d["kind"] == "PrometheusRule"), None)
    alerts = yaml.safe_load((HERE.parent / "dashboards" / "alerts.yml").read_text())
    if not rule or rule["spec"]["groups"] != alerts["groups"]:
        fail("prod: the PrometheusRule is not dashboards/alerts.yml")

    print("== wrong types are refused (values.schema.json)")
    r = subprocess.run([helm, "template", "tb", str(CHARTS[0]), "--set", "replicas=many"], capture_output=True, text=True)
    if r.returncode == 0:
        fail(f"{CHARTS[0].name}: replicas=many was accepted")
    r = subprocess.run([helm, "template", "tb", str(CHARTS[0]), "--set", "nosuchvalue=1"], capture_output=True, text=True)
    if r.returncode == 0:
        fail(f"{CHARTS[0].name}: an unknown value was accepted")

    print("== every documented value changes the output")
    for chart in CHARTS:
        values = yaml.safe_load((chart / "values.yaml").read_text())
        for path, v in leaves(values):
            base = merge(ALL_ON[chart.name], MODE_OF.get((chart.name, path), {}))
            try:
                before = render(helm, chart, base)
                after = render(helm, chart, set_path(base, path, changed(get_path(base, path, v))))
            except RuntimeError as e:
                fail(f"{chart.name}: {path}: render failed: {e}")
                continue
            if before == after:
                fail(f"{chart.name}: value {path} changes nothing")
    # The umbrella's own values (the others belong to the subcharts, checked above).
    own = {"prometheusRule": {"enabled": True}, "grafanaDashboards": {"enabled": True}}
    umbrella_values = yaml.safe_load((UMBRELLA / "values.yaml").read_text())
    for path, v in leaves({k: umbrella_values[k] for k in own}):
        before = render(helm, UMBRELLA, own)
        after = render(helm, UMBRELLA, set_path(own, path, changed(get_path(own, path, v))))
        if before == after:
            fail(f"taskboard: value {path} changes nothing")
    if failures:
        print(f"helm: {len(failures)} failure(s)")
        sys.exit(1)
    print("helm: all checks passed")


if __name__ == "__main__":
    main()
