"""deploy/ is validated, offline:

- Kubernetes manifests against the Kubernetes OpenAPI schemas bundled by
  kubernetes-validate (strict: unknown fields fail), the KEDA ScaledObject
  against deploy/k8s/schemas/keda-scaledobject.schema.json;
- compose.yaml against the compose-spec schema shipped by check-jsonschema;
- alert rules and the Grafana dashboard: every metric and label they use is
  one xgrader.metrics exports (promtool is not available);
- the systemd unit with systemd-analyze (verify, offline security score);
- cross-references: probes hit the metrics port, selectors match, settings
  in the ConfigMap/compose environment load into xgrader.config.Settings.
Each validator is also shown to reject a broken copy.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from xgrader.config import Settings
from xgrader.metrics import MetricsHooks

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
K8S = DEPLOY / "k8s"
K8S_VERSION = "1.33.0"   # hostUsers (pod user namespaces) is on by default from 1.33
KEDA_SCHEMA = K8S / "schemas" / "keda-scaledobject.schema.json"
SERVICEMONITOR_SCHEMA = K8S / "schemas" / "servicemonitor.schema.json"


def k8s_docs(folder: Path = K8S) -> list[tuple[Path, dict]]:
    """The manifests `kubectl apply -f FOLDER` applies (not recursive: .yaml, .yml, .json)."""
    out = []
    for path in sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml", ".json")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((path, doc))
    return out


def by_kind(kind: str) -> dict:
    found = [doc for _, doc in k8s_docs() if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}"
    return found[0]


def validate_k8s(doc: dict) -> None:
    if doc.get("apiVersion", "").startswith("keda.sh/"):
        jsonschema.validate(doc, json.loads(KEDA_SCHEMA.read_text()))
    elif doc.get("apiVersion", "").startswith("monitoring.coreos.com/"):
        jsonschema.validate(doc, json.loads(SERVICEMONITOR_SCHEMA.read_text()))
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


# -- Kubernetes ------------------------------------------------------------------
def test_every_manifest_validates():
    docs = k8s_docs()
    kinds = {doc["kind"] for _, doc in docs}
    assert {"Namespace", "ConfigMap", "Deployment", "PodDisruptionBudget",
            "ScaledObject", "Service", "ServiceMonitor"} <= kinds
    for path, doc in docs + k8s_docs(K8S / "examples"):
        try:
            validate_k8s(doc)
        except Exception as exc:  # name the file in the failure
            pytest.fail(f"{path.name} ({doc['kind']}): {exc}")


@pytest.mark.parametrize("kind, breakage", [
    ("Deployment", lambda d: d["spec"].__setitem__("replicas", "two")),
    ("Deployment", lambda d: d["spec"]["template"]["spec"]["containers"][0].__setitem__("imagePullPolcy", "x")),
    ("PodDisruptionBudget", lambda d: d["spec"].__setitem__("maxUnavailble", 1)),
    ("ScaledObject", lambda d: d["spec"]["triggers"][0]["metadata"].__setitem__("threshold", 4)),
    ("ScaledObject", lambda d: d["spec"]["triggers"][0]["metadata"].pop("query")),
    ("ScaledObject", lambda d: d["spec"].__setitem__("minReplicas", 1)),
    ("ServiceMonitor", lambda d: d["spec"]["endpoints"][0].__setitem__("interval", "15 s")),
    ("ServiceMonitor", lambda d: d["spec"]["endpoints"][0].__setitem__("prot", "metrics")),
    ("ServiceMonitor", lambda d: d["spec"].pop("selector")),
])
def test_validators_reject_broken_copies(kind, breakage):
    doc = copy.deepcopy(by_kind(kind))
    breakage(doc)
    with pytest.raises((kubernetes_validate.ValidationError, jsonschema.ValidationError)):
        validate_k8s(doc)


def test_deployment_is_hardened_and_probed():
    dep = by_kind("Deployment")
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True and sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
    assert "privileged" not in sc
    assert pod["automountServiceAccountToken"] is False
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    config = by_kind("ConfigMap")["data"]
    assert ports["metrics"] == int(config["XGRADER_METRICS_PORT"])
    assert config["XGRADER_METRICS_HOST"] == "0.0.0.0"   # the kubelet and Prometheus must reach it
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    # the drain on SIGTERM fits in the grace period
    assert pod["terminationGracePeriodSeconds"] > float(config["XGRADER_SHUTDOWN_GRACE_S"])
    # every writable path is a volume
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/tmp", config["XDG_CACHE_HOME"], config["XGRADER_HANDLERS"]} <= mounts
    assert str(Path(config["XGRADER_QUEUE_PASSWORD_FILE"]).parent) in mounts


def test_applying_the_folder_never_overwrites_the_secret():
    """`kubectl apply -f deploy/k8s/` carries no Secret: the example lives in
    examples/ (not applied: kubectl does not recurse) with the keys the pod uses."""
    assert [doc for _, doc in k8s_docs() if doc["kind"] == "Secret"] == []
    (example,) = [doc for _, doc in k8s_docs(K8S / "examples") if doc["kind"] == "Secret"]
    pod = by_kind("Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == example["metadata"]["name"]
    assert {i["key"] for i in volume["secret"]["items"]} <= set(example["stringData"])
    env_refs = [e["valueFrom"]["secretKeyRef"] for c in pod["containers"] for e in c.get("env", [])
                if "secretKeyRef" in e.get("valueFrom", {})]
    assert all(r["name"] == example["metadata"]["name"] and r["key"] in example["stringData"] for r in env_refs)


def test_bwrap_gets_what_it_needs_and_nothing_is_unconfined_but_apparmor():
    """The grader container: a pod user namespace, an unmasked /proc (bwrap
    mounts a fresh one), a Localhost seccomp profile shipped in deploy/k8s/seccomp/
    (podman's default: namespaces and mounts allowed without capabilities),
    no capability, non-root."""
    pod = by_kind("Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert pod["hostUsers"] is False and sc["procMount"] == "Unmasked"
    assert sc["seccompProfile"]["type"] == "Localhost"
    profile = K8S / "seccomp" / Path(sc["seccompProfile"]["localhostProfile"]).name
    assert sc["seccompProfile"]["localhostProfile"] == f"profiles/{profile.name}"
    # The very profile the docker backend starts every job's from (one file: a link).
    assert profile.resolve() == (DEPLOY.parent / "xgrader" / "backends" / "seccomp-docker.json").resolve()
    rules = json.loads(profile.read_text())
    assert rules["defaultAction"] == "SCMP_ACT_ERRNO"
    allowed = {n for r in rules["syscalls"] if r["action"] == "SCMP_ACT_ALLOW" and not r.get("includes", {}).get("caps")
               for n in r["names"]}
    assert {"unshare", "clone", "mount", "umount2", "pivot_root", "setns"} <= allowed
    assert "Unconfined" not in json.dumps(pod["securityContext"]) and sc["appArmorProfile"]["type"] == "Unconfined"
    config = by_kind("ConfigMap")["data"]
    assert config["XGRADER_SANDBOX"] == "bwrap"


def test_assignments_come_from_the_course_image_by_an_init_container():
    pod = by_kind("Deployment")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    (grader,) = pod["containers"]
    config = by_kind("ConfigMap")["data"]
    handlers = next(v for v in pod["volumes"] if v["name"] == "handlers")
    assert "emptyDir" in handlers   # no ReadOnlyMany storage class needed; a new course image is a rollout
    (into,) = [m for m in init["volumeMounts"] if m["name"] == "handlers"]
    (used,) = [m for m in grader["volumeMounts"] if m["name"] == "handlers"]
    assert used["readOnly"] is True and used["mountPath"] == config["XGRADER_HANDLERS"]
    assert init["command"][:2] == ["cp", "-R"] and init["command"][-1].rstrip("/") == into["mountPath"]
    assert init["command"][-2] == "/handlers/."   # where deploy/k8s/course/Containerfile puts them
    assert "COPY . /handlers" in (K8S / "course" / "Containerfile").read_text()
    sc = init["securityContext"]
    assert sc["capabilities"]["drop"] == ["ALL"] and sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True and sc["seccompProfile"]["type"] == "RuntimeDefault"


def test_prometheus_scrapes_the_graders_for_keda():
    """The ServiceMonitor (Operator) and the plain scrape job both reach the
    pods' metrics port, where xgrader_queue_length (KEDA's query) is served."""
    dep, service, monitor = by_kind("Deployment"), by_kind("Service"), by_kind("ServiceMonitor")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]} and endpoint["path"] == "/metrics"
    (job,) = yaml.safe_load((DEPLOY / "prometheus" / "scrape.yaml").read_text())["scrape_configs"]
    keep = [r for r in job["relabel_configs"] if r.get("action") == "keep"]
    labels = {"__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", k): v for k, v in pod_labels.items()}
    ports = {p["name"] for c in dep["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
    for rule in keep:
        value = ";".join(labels.get(src) or ("metrics" if src.endswith("port_name") and "metrics" in ports else "")
                         for src in rule["source_labels"])
        assert re.fullmatch(rule["regex"], value), (rule, value)
    assert job["kubernetes_sd_configs"][0]["namespaces"]["names"] == [dep["metadata"]["namespace"]]
    (trigger,) = [t for t in by_kind("ScaledObject")["spec"]["triggers"]
                  if "xgrader_queue_length" in t["metadata"]["query"]]
    assert "prometheus-operated" in trigger["metadata"]["serverAddress"]   # the Operator's service


def test_configmap_settings_load(monkeypatch, tmp_path):
    """Every ConfigMap key is a real setting with a valid value."""
    config = dict(by_kind("ConfigMap")["data"])
    secret_file = tmp_path / "queue_password"
    secret_file.write_text("pw\n")
    config["XGRADER_QUEUE_PASSWORD_FILE"] = str(secret_file)
    for key, value in config.items():
        if key.startswith("XGRADER_"):
            field = key.removeprefix("XGRADER_").lower().split("__")[0]   # nested: XGRADER_LEDGER__URL
            assert field in Settings.model_fields, key
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.queue_names == ["xgrader"] and settings.sandbox == "bwrap"
    assert settings.queue_password.get_secret_value() == "pw"


def test_selectors_and_scaler_point_at_the_deployment():
    dep = by_kind("Deployment")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert by_kind("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert by_kind("Service")["spec"]["selector"].items() <= labels.items()
    so = by_kind("ScaledObject")
    assert so["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    assert so["spec"]["scaleTargetRef"]["kind"] == dep["kind"]
    assert 1 <= so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"]
    namespaces = {doc["metadata"].get("namespace") for _, doc in k8s_docs() if doc["kind"] != "Namespace"}
    assert namespaces == {by_kind("Namespace")["metadata"]["name"]}
    triggers = {t["name"]: t for t in so["spec"]["triggers"]}
    assert all(t["type"] == "prometheus" for t in triggers.values())
    for trigger in triggers.values():
        check_promql(trigger["metadata"]["query"])
    # the backlog where the server reports it, busy slots everywhere (edx-submissions has no queue length)
    assert "xgrader_queue_length" in triggers["backlog"]["metadata"]["query"]
    assert triggers["backlog"]["metadata"]["ignoreNullValues"] == "true"
    assert "xgrader_slot_busy_seconds_total" in triggers["busy-slots"]["metadata"]["query"]


# -- metrics referenced by alerts, dashboard, scaler -----------------------------------
def exported() -> dict[str, set[str]]:
    """Sample name -> label names, from the metrics module itself."""
    out: dict[str, set[str]] = {}
    for value in vars(MetricsHooks()).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        name, labels, kind = value._name, set(value._labelnames), value._type
        if kind == "counter":
            out[name + "_total"] = labels
        elif kind == "histogram":
            out[name + "_bucket"] = labels | {"le"}
            out[name + "_sum"] = out[name + "_count"] = labels
        elif kind == "gauge":
            out[name] = labels
    out["xgrader_build_info"] = {"version"}
    return out


METRIC = re.compile(r"\b(xgrader_[a-z0-9_]+)\s*(\{[^}]*\})?")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*\"")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def check_promql(expr: str) -> None:
    known = exported()
    found = METRIC.findall(expr)
    assert found, f"no xgrader metric in {expr!r}"
    labels: set[str] = set()
    for name, selector in found:
        assert name in known, f"{name} is not exported by xgrader.metrics ({expr!r})"
        labels |= known[name]
        for label, _op in MATCHER.findall(selector or ""):
            assert label in known[name], f"{name} has no label {label!r} ({expr!r})"
    for group in GROUPING.findall(expr):
        for label in filter(None, (s.strip() for s in group.split(","))):
            assert label in labels, f"grouping by unknown label {label!r} in {expr!r}"
    assert expr.count("(") == expr.count(")"), expr


def test_check_promql_catches_typos():
    with pytest.raises(AssertionError):
        check_promql("rate(xgrader_submissions_graded[5m])")       # counter without _total
    with pytest.raises(AssertionError):
        check_promql('xgrader_queue_length{queeu="x"}')
    with pytest.raises(AssertionError):
        check_promql("sum by (kind) (xgrader_queue_length)")
    check_promql('sum by (queue, kind) (rate(xgrader_infra_failures_total{kind!="x"}[5m]))')


DURATION = re.compile(r"^\d+[smhdw]$")


def test_alert_rules():
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())
    names = set()
    count = 0
    for group in rules["groups"]:
        assert group["name"] and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, rule
            assert rule["alert"] not in names, f"duplicate alert {rule['alert']}"
            names.add(rule["alert"])
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}
            assert rule["annotations"]["summary"]
            if "for" in rule:
                assert DURATION.match(rule["for"]), rule["for"]
            check_promql(rule["expr"])
            count += 1
    assert count >= 10
    # the metric families each have an alert
    text = (DEPLOY / "prometheus" / "alerts.yaml").read_text()
    for metric in ("xgrader_queue_length", "xgrader_sandbox_failures_total", "xgrader_infra_failures_total",
                   "xgrader_queue_client_errors_total", "xgrader_relogins_total", "xgrader_grade_seconds_bucket"):
        assert metric in text


def test_grafana_dashboard():
    dash = json.loads((DEPLOY / "grafana" / "dashboard.json").read_text())
    assert dash["uid"] and dash["title"] and isinstance(dash["schemaVersion"], int)
    variables = {v["name"] for v in dash["templating"]["list"]}
    ids, used = set(), set()
    for panel in dash["panels"]:
        assert panel["id"] not in ids
        ids.add(panel["id"])
        assert panel["title"] and panel["type"] in {"timeseries", "stat", "table", "gauge", "bargauge"}
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"} and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["targets"]
        for target in panel["targets"]:
            check_promql(target["expr"])
            used.update(name for name, _selector in METRIC.findall(target["expr"]))
            for var in re.findall(r"\$(\w+)", target["expr"]):
                assert var in variables or var.startswith("__"), var
    # every exported metric family is on the dashboard
    families = {n.removesuffix("_total").removesuffix("_bucket").removesuffix("_sum").removesuffix("_count")
                for n in exported()}
    shown = {n.removesuffix("_total").removesuffix("_bucket").removesuffix("_sum").removesuffix("_count")
             for n in used}
    assert families - shown == set(), families - shown


# -- compose -------------------------------------------------------------------------
def check_compose(path: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("check-jsonschema") or str(Path(sys.executable).parent / "check-jsonschema")
    return subprocess.run([exe, "--builtin-schema", "vendor.compose-spec", str(path)],
                          capture_output=True, text=True, timeout=120)


def test_compose_file_matches_compose_spec(tmp_path):
    result = check_compose(DEPLOY / "compose.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    broken = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    broken["services"]["grader"]["deploy"]["replicas"] = {"n": 2}
    (tmp_path / "compose.yaml").write_text(yaml.safe_dump(broken))
    assert check_compose(tmp_path / "compose.yaml").returncode != 0


def test_compose_wiring(monkeypatch, tmp_path):
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    queue, grader = services["queue"], services["grader"]
    assert isinstance(grader["deploy"]["replicas"], int) and grader["deploy"]["replicas"] >= 2
    assert grader["deploy"]["mode"] == "replicated"   # podman-compose counts replicas only then
    assert any(v["target"] == "/run/engine.sock" for v in grader["volumes"])
    env = grader["environment"]
    assert env["XGRADER_SANDBOX"] == "docker" and env["XGRADER_DOCKER_URL"] == "unix:///run/engine.sock"
    assert "queue" in env["XGRADER_QUEUE_URL"] and "18040" in env["XGRADER_QUEUE_URL"]
    assert queue["command"][:3] == ["xgrader", "queue", "serve"]
    assert f"127.0.0.1:{env['XGRADER_METRICS_PORT']}/healthz" in " ".join(grader["healthcheck"]["test"])
    (tmp_path / "pw").write_text("x")
    for key, value in env.items():
        if key.startswith("XGRADER_"):
            assert key.removeprefix("XGRADER_").lower().split("__")[0] in Settings.model_fields, key
        monkeypatch.setenv(key, interpolate(value).replace("/run/secrets/queue_password", str(tmp_path / "pw")))
    settings = Settings()
    assert settings.metrics_port == int(env["XGRADER_METRICS_PORT"])
    assert grader["secrets"] == ["queue_password"] and "queue_password" in compose["secrets"]


VARIABLE = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?:(:?[-?+])([^}]*))?\}")


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's ${VAR:-default}, from env or the default."""
    env = env or {}
    return VARIABLE.sub(lambda m: env.get(m.group(1)) or m.group(3) or "", value)


def test_compose_needs_no_environment_and_documents_every_variable():
    """Every ${VAR} has a default (no ${VAR:?}: `down` must work with no
    environment) and is in compose.env.example, the documented env file."""
    text = (DEPLOY / "compose.yaml").read_text()
    uses = VARIABLE.findall(text)
    assert uses and all(op == ":-" for _, op, _ in uses), [u for u in uses if u[1] != ":-"]
    documented = {line.split("=", 1)[0] for line in (DEPLOY / "compose.env.example").read_text().splitlines()
                  if "=" in line and not line.startswith("#")}
    assert {name for name, _, _ in uses} == documented
    defaults = {}
    for name, _, default in uses:
        assert defaults.setdefault(name, default) == default, f"{name} has two defaults"
    example = dict(line.split("=", 1) for line in (DEPLOY / "compose.env.example").read_text().splitlines()
                   if "=" in line and not line.startswith("#"))
    assert example == defaults   # the example says what you get without it


def test_compose_keeps_passwords_in_files_and_the_socket_never_made():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    # Secrets are files (podman-compose refuses environment secrets); no password in any environment.
    assert all(set(spec) == {"file"} for spec in compose["secrets"].values())
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            assert "PASSWORD" not in key or key.endswith("_FILE"), (name, key)
            assert "USERS" not in key, (name, key)
    queue = services["queue"]
    files = [queue["command"][i + 1] for i, arg in enumerate(queue["command"]) if arg == "--user-file"]
    assert sorted(f.split(":", 1)[0] for f in files) == ["lms", "xgrader"]
    assert {f.split(":", 1)[1] for f in files} == {f"/run/secrets/{s}" for s in queue["secrets"]}
    assert "--user" not in queue["command"]
    # The engine socket: long syntax, never created when missing (Docker and podman-compose >= 1.6
    # would otherwise make a directory there).
    for name in ("grader", "push"):
        (sock,) = [v for v in services[name]["volumes"] if v["target"] == "/run/engine.sock"]
        assert sock["type"] == "bind" and sock["bind"]["create_host_path"] is False
        jobs = [v for v in services[name]["volumes"] if v["target"] == services[name]["environment"]["TMPDIR"]]
        assert len(jobs) == 1 and jobs[0]["source"] == jobs[0]["target"]   # the same path on the host
    # The bundled queue's lease is the one the graders check their job timeout against.
    lease = queue["command"][queue["command"].index("--lease-timeout") + 1]
    assert services["grader"]["environment"]["XGRADER_QUEUE_LEASE_S"] == lease
    assert float(lease) > Settings().job_timeout_s
    # Restart policies.
    assert all(services[name]["restart"] == "unless-stopped" for name in ("queue", "grader", "push"))
    assert "restart_policy" not in services["grader"]["deploy"]   # swarm-only; `restart` is what compose uses


@pytest.mark.docker
def test_podman_compose_refuses_a_missing_socket_and_downs_without_environment(tmp_path):
    """A missing ENGINE_SOCKET stops `up` and is not created as a directory;
    `down` works with no environment at all."""
    project = f"xgrader-t{os.getpid()}"
    missing = tmp_path / "missing.sock"
    base = [sys.executable, "-m", "podman_compose", "-p", project, "-f", str(DEPLOY / "compose.yaml")]
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")}
    try:
        up = subprocess.run([*base, "up", "-d", "--no-deps", "grader"], env={**env, "ENGINE_SOCKET": str(missing)},
                            capture_output=True, text=True, timeout=120)
        assert up.returncode != 0 and f"bind source path does not exist: {missing}" in up.stdout + up.stderr
        assert not missing.exists()
        assert subprocess.run(["podman", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}"],
                              capture_output=True, text=True, timeout=60).stdout.strip() == ""
    finally:
        down = subprocess.run([*base, "down", "-v"], env=env, capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    networks = subprocess.run(["podman", "network", "ls", "-q", "--filter", f"label=com.docker.compose.project={project}"],
                              capture_output=True, text=True, timeout=60)
    assert networks.stdout.strip() == ""


# -- systemd -------------------------------------------------------------------------
@pytest.fixture
def unit(tmp_path) -> Path:
    exe = shutil.which("xgrader") or str(Path(sys.executable).parent / "xgrader")
    text = (DEPLOY / "systemd" / "xgrader.service").read_text().replace("/usr/local/bin/xgrader", exe)
    path = tmp_path / "xgrader.service"
    path.write_text(text)
    return path


def test_systemd_unit_verifies_and_is_hardened(unit):
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is part of systemd (Debian 12 base)"
    r = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([tool, "security", "--offline=yes", str(unit)], capture_output=True, text=True, timeout=60)
    score = float(re.search(r"exposure level for \S+: ([\d.]+)", r.stdout).group(1))
    assert score <= 5.0, r.stdout[-3000:]
    text = unit.read_text()
    for line in ("Restart=on-failure", "NoNewPrivileges=yes", "ProtectSystem=strict", "KillMode=mixed",
                 "Delegate=yes", "CapabilityBoundingSet=\n"):
        assert line in text
    # the drain fits in the stop timeout
    stop = int(re.search(r"TimeoutStopSec=(\d+)s", text).group(1))
    assert stop > Settings().shutdown_grace_s


def test_operator_guide_lists_every_setting():
    text = (DEPLOY.parent / "docs" / "operators.md").read_text()
    missing = [f"XGRADER_{name.upper()}" for name in Settings.model_fields
               if f"XGRADER_{name.upper()}" not in text]
    assert missing == [], f"docs/operators.md does not document {missing}"


def test_compose_push_service_uses_the_push_command():
    push = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["push"]
    assert push["command"][:2] == ["xgrader", "serve-push"] and push["profiles"] == ["push"]
    port = push["command"][push["command"].index("--port") + 1]
    assert f"127.0.0.1:{port}/readyz" in " ".join(push["healthcheck"]["test"])
    for key in push["environment"]:
        if key.startswith("XGRADER_"):
            assert key.removeprefix("XGRADER_").lower().split("__")[0] in Settings.model_fields, key
