"""Every file under deploy/ is checked: configs validate, rules pass promtool, dashboards and alerts
query only metric names the router exports, manifests parse and agree with the config they carry.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from router.config import ConfigError, parse_config
from router.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
PROMETHEUS = DEPLOY / "prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
needs_promtool = pytest.mark.skipif(
    not Path(PROMTOOL).exists(), reason="promtool not installed (apt-get install prometheus)"
)
METRIC = re.compile(r"\bmodelrouter_[a-z_]+\b")


def manifests() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def only(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in manifests() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def configmap_config_text() -> str:
    cm = only("ConfigMap", "modelrouter-config")
    text = cm["data"]["config.yaml"]
    assert isinstance(text, str)
    return text


def exported_sample_names() -> set[str]:
    """Sample names of a live exposition after every Metrics verb ran once (what PromQL sees)."""
    m = Metrics()
    bound = m.bind("r", "b")
    bound.observe(200, 0.01)
    bound.observe(503, 0.2)
    bound.upstream_error("timeout")
    m.request_unmatched(404)
    m.set_share("r", "b", 0.5)
    m.set_backend_up("b", False)
    m.config_reload("success")
    m.config_reload("failure")
    m.decision("r", "b")
    m.feedback("r", "b")
    m.feedback_rejected("expired")
    m.set_reward("r", "b", 3.0, 0.75, 4)
    m.set_regret("r", 1.5)
    m.set_phase("r", "rolled_back")
    m.set_step("r", 2)
    m.set_p_value("r", "A", 0.03)
    m.set_prob_best("r", "A", 0.9)
    # Verbs that may be added later (SRM flag) are exercised when present.
    for verb, args in (("set_srm", ("r", True)),):
        fn = getattr(m, verb, None)
        if fn is not None:
            fn(*args)
    names: set[str] = set()
    for family in text_string_to_metric_families(m.render().decode()):
        names.update(s.name for s in family.samples)
    return names


# ---- the router's config ----------------------------------------------------------------------


def test_configmap_config_validates() -> None:
    try:
        cfg = parse_config(configmap_config_text(), "deploy/k8s/configmap.yaml:config.yaml")
    except ConfigError as e:
        pytest.fail("\n".join(e.errors))
    assert [r.name for r in cfg.routes] == ["image-classifier"]
    assert set(cfg.backends) == {"resnet50", "resnet101"}
    # Both listeners must be reachable from outside the pod.
    assert cfg.listen.host == "0.0.0.0" and cfg.admin.listen.host == "0.0.0.0"


@pytest.mark.parametrize("path", sorted((DEPLOY / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_validate(path: Path) -> None:
    try:
        parse_config(path.read_text(), str(path.relative_to(ROOT)))
    except ConfigError as e:
        pytest.fail("\n".join(e.errors))


# ---- Dockerfile -------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def test_dockerfile() -> None:
    ins = dockerfile_instructions()
    final = ins[max(i for i, (op, _) in enumerate(ins) if op == "FROM") :]
    ops = {op: rest for op, rest in final}
    assert ops["FROM"] == "python:3.11-slim"
    assert ops["USER"].split(":")[0] not in ("", "0", "root")
    assert json.loads(ops["ENTRYPOINT"]) == ["modelrouter"]
    assert json.loads(ops["CMD"]) == ["serve", "/etc/modelrouter/config.yaml"]
    assert set(ops["EXPOSE"].split()) == {"8080", "9901"}
    assert ops["STOPSIGNAL"] == "SIGTERM"
    # Everything the build copies from the context exists in the repository.
    for op, rest in ins:
        if op == "COPY" and not rest.startswith("--from"):
            for src in rest.split()[:-1]:
                assert (ROOT / src).exists(), f"Dockerfile copies missing {src}"


# ---- Kubernetes -------------------------------------------------------------------------------


def test_manifests_parse_and_have_kinds() -> None:
    docs = manifests()
    for d in docs:
        assert {"apiVersion", "kind"} <= d.keys(), d
        if d["kind"] != "Kustomization":
            assert d["metadata"]["name"]
    kinds = {d["kind"] for d in docs}
    assert {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget"} <= kinds
    kust = [d for d in docs if d["kind"] == "Kustomization"]
    if kust:
        listed = set(kust[0]["resources"])
        on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
        assert listed == on_disk


def test_deployment_mounts_config_and_probes_admin_port() -> None:
    dep = only("Deployment", "modelrouter")
    pod = dep["spec"]["template"]["spec"]
    (ctr,) = [c for c in pod["containers"] if c["name"] == "modelrouter"]
    # The config file the container runs is the one the ConfigMap carries.
    args = ctr.get("args", [])
    assert args[:1] == ["serve"]
    config_path = Path(args[1])
    mount = next(m for m in ctr["volumeMounts"] if Path(m["mountPath"]) == config_path.parent)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    cm_name = volume["configMap"]["name"]
    cm = only("ConfigMap", cm_name)
    items = {i["path"]: i["key"] for i in volume["configMap"].get("items", [])}
    assert items.get(config_path.name, config_path.name) in cm["data"]

    cfg = parse_config(configmap_config_text(), "configmap")
    ports = {p["name"]: p["containerPort"] for p in ctr["ports"]}
    assert ports["http"] == cfg.listen.port
    assert ports["admin"] == cfg.admin.listen.port
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = ctr[probe]["httpGet"]
        assert get["path"] == path
        assert get["port"] in ("admin", cfg.admin.listen.port)
    # Kubernetes must not SIGKILL during the router's 30 s drain (plus the preStop pause).
    pre_stop = ctr.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pause = int(pre_stop[-1]) if pre_stop[:1] == ["sleep"] else 0
    assert pod["terminationGracePeriodSeconds"] > 30 + pause
    # Secrets come from a Secret, under the env names the config reads.
    env = {e["name"]: e for e in ctr["env"]}
    assert "secretKeyRef" in env[cfg.admin.token_env]["valueFrom"]
    assert "secretKeyRef" in env[cfg.feedback.secret_env]["valueFrom"]
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_services_and_pdb_select_the_pods() -> None:
    dep = only("Deployment", "modelrouter")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    for svc in (only("Service", "modelrouter"), only("Service", "modelrouter-metrics")):
        assert svc["spec"]["selector"].items() <= labels.items()
    pdb = only("PodDisruptionBudget", "modelrouter")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] < dep["spec"]["replicas"]


def test_config_backends_are_services_in_the_manifests() -> None:
    cfg = parse_config(configmap_config_text(), "configmap")
    urls = [b.url for b in cfg.backends.values()]
    if cfg.state.url:
        urls.append(cfg.state.url)
    for url in urls:
        parts = urlsplit(url)
        svc = only("Service", str(parts.hostname))
        assert parts.port in {p["port"] for p in svc["spec"]["ports"]}, url
        dep = only("Deployment", svc["metadata"]["name"])
        assert (
            svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
        )
    for name in ("resnet50", "resnet101"):
        (ctr,) = only("Deployment", name)["spec"]["template"]["spec"]["containers"]
        assert ctr["image"].startswith("tensorflow/serving")
        assert f"--model_name={name}" in ctr["args"]


# ---- Prometheus and Grafana -------------------------------------------------------------------


@needs_promtool
def test_promtool_check_rules_and_config() -> None:
    for args in (
        ["check", "rules", str(PROMETHEUS / "alerts.yml")],
        ["check", "config", str(PROMETHEUS / "prometheus.yml")],
        ["test", "rules", str(PROMETHEUS / "alerts_test.yml")],
    ):
        r = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"promtool {' '.join(args)}:\n{r.stdout}\n{r.stderr}"


def test_alert_rules_cover_the_issue_and_use_exported_metrics() -> None:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    alerts = {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert {"RollbackHappened", "RegretRising", "SRMDetected", "BackendDown"} <= alerts.keys()
    exported = exported_sample_names()
    for name, expr in alerts.items():
        for metric in METRIC.findall(expr):
            assert metric in exported, (
                f"alert {name} uses {metric}, which the router does not export"
            )


def grafana_queries(node: Any) -> list[str]:
    """Every PromQL string in a dashboard: panel `expr`s and templating queries."""
    found: list[str] = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("expr", "definition") and isinstance(v, str):
                found.append(v)
            elif k == "query" and isinstance(v, str | dict):
                found += [v] if isinstance(v, str) else grafana_queries({"expr": v.get("query")})
            else:
                found += grafana_queries(v)
    elif isinstance(node, list):
        for v in node:
            found += grafana_queries(v)
    return found


def test_grafana_dashboard_uses_only_exported_metrics() -> None:
    dash = json.loads((DEPLOY / "grafana" / "modelrouter.json").read_text())
    assert dash["schemaVersion"] >= 36
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", []) if t.get("expr")]
    assert len(exprs) >= 10
    exported = exported_sample_names()
    used = {m for q in grafana_queries(dash) for m in METRIC.findall(q)}
    missing = sorted(used - exported)
    assert not missing, f"dashboard queries metrics the router does not export: {missing}"
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for word in ("request rate", "p99", "share", "reward", "regret", "phase", "upstream errors"):
        assert word in titles, word
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


# ---- issue 13: the image runs the compiled data plane, examples start, replicas on Redis ----


def test_dockerfile_builds_the_compiled_data_plane() -> None:
    ins = dockerfile_instructions()
    stages = [i for i, (op, _) in enumerate(ins) if op == "FROM"]
    build, final = ins[stages[0] : stages[-1]], ins[stages[-1] :]
    copied = {src for op, rest in build if op == "COPY" for src in rest.split()[:-1]}
    # setup.py is what compiles router/dataplane/ with mypyc, and mypyc needs a C compiler
    assert {"setup.py", "pyproject.toml", "router", "policies"} <= copied
    runs = " ".join(rest for op, rest in build if op == "RUN")
    assert re.search(r"apt-get install [^&]*\bgcc\b", runs), runs
    assert "pip wheel" in runs
    # the runtime stage refuses to become an image with the pure-Python data plane
    checks = [rest for op, rest in final if op == "RUN" and "router.dataplane" in rest]
    assert checks and ".py" in checks[0] and "sys.exit" in checks[0]
    setup = (ROOT / "setup.py").read_text()
    assert 'glob.glob("router/dataplane/*.py")' in setup


def test_image_tag_is_the_same_everywhere() -> None:
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    tag = f"modelrouter:{version}"
    (ctr,) = [
        c
        for c in only("Deployment", "modelrouter")["spec"]["template"]["spec"]["containers"]
        if c["name"] == "modelrouter"
    ]
    assert ctr["image"] == tag
    readme = (ROOT / "README.md").read_text()
    built = re.findall(r"docker build -f deploy/Dockerfile -t (\S+) \.", readme)
    assert built and set(built) == {tag}, built
    ran = re.findall(r"^\s*-v \S+:/etc/modelrouter/config.yaml (\S+)$", readme, re.M)
    assert ran and set(ran) == {tag}, ran
    assert f"-t {tag} ." in (DEPLOY / "Dockerfile").read_text()


@pytest.mark.parametrize("path", sorted((DEPLOY / "examples").glob("*.yaml")), ids=lambda p: p.name)
async def test_every_example_starts_as_the_image_runs_it(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The image mounts the config read-only at /etc/modelrouter and sets MODELROUTER_STATE_DIR
    to its writable volume: every example opens its store there and starts its engines."""
    from router.app import close_runtime, open_runtime
    from router.store.health import MonitoredStore
    from router.store.sqlite import SqliteStore

    env = {
        op: rest for op, rest in dockerfile_instructions() if op == "ENV" and "STATE_DIR" in rest
    }
    (line,) = env.values()
    state_dir = line.split("=", 1)[1]
    assert state_dir == "/var/lib/modelrouter"
    etc, var = tmp_path / "etc", tmp_path / "var"
    etc.mkdir()
    var.mkdir()
    config = etc / "config.yaml"
    config.write_text(path.read_text())
    monkeypatch.setenv("MODELROUTER_STATE_DIR", str(var))
    cfg = parse_config(config.read_text(), str(config))
    if cfg.state.store != "sqlite":
        pytest.skip(f"{path.name} uses store {cfg.state.store}")
    rt = await open_runtime(cfg, config_path=config)
    try:
        assert isinstance(rt.store, MonitoredStore)  # the store `serve` opens is watched
        store = rt.store.inner
        assert isinstance(store, SqliteStore)
        assert store.path.parent == var  # not next to the read-only config
        assert store.path.exists()
        assert [p.name for p in etc.iterdir()] == ["config.yaml"]
        assert {r.name for r in rt.routes} == {r.name for r in cfg.routes}
    finally:
        await close_runtime(rt)


def test_two_replicas_share_redis_and_each_pod_admin_is_reachable() -> None:
    dep = only("Deployment", "modelrouter")
    assert dep["spec"]["replicas"] >= 2
    cfg = parse_config(configmap_config_text(), "configmap")
    # replicas coordinate through one Redis: learned sums, rollout state, audit, feedback log
    assert cfg.state.store == "redis"
    # every pod is reachable on its own: a headless Service with the admin port, and the
    # README shows kubectl port-forward to one pod
    headless = only("Service", "modelrouter-metrics")
    assert headless["spec"]["clusterIP"] == "None"
    assert cfg.admin.listen.port in {p["port"] for p in headless["spec"]["ports"]}
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"kubectl port-forward pod/\S+ 9901:9901", readme)
    # the root filesystem is read-only, so --workers needs a writable /tmp for its metrics
    pod = dep["spec"]["template"]["spec"]
    (ctr,) = [c for c in pod["containers"] if c["name"] == "modelrouter"]
    if ctr["securityContext"].get("readOnlyRootFilesystem"):
        assert "/tmp" in {m["mountPath"] for m in ctr["volumeMounts"]}
