"""deploy/: the example manifests agree with the image (port, probes, user) and parse as Kubernetes YAML."""

from __future__ import annotations

from pathlib import Path

from conftest import require  # noqa: E402

from paritybundle.commands.container import dockerfile_text

yaml = require("yaml", reason="PyYAML reads the manifests (installed with uvicorn[standard])")

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def documents(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def containers():
    found = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        for doc in documents(path):
            spec = doc.get("spec", {})
            pod = spec.get("predictor") or spec.get("template", {}).get("spec", {})
            found += [(path.name, doc["kind"], c) for c in pod.get("containers", [])]
    return found


def test_every_manifest_parses_and_has_the_expected_kinds():
    kinds = sorted(doc["kind"] for path in DEPLOY.rglob("*.yaml") for doc in documents(path))
    assert kinds == ["Deployment", "InferenceService", "Job", "Service"]


def test_servers_listen_where_the_image_serves_and_probe_readiness_on_parity():
    port = int(next(line.split()[1] for line in dockerfile_text().splitlines() if line.startswith("EXPOSE")))
    user = int(
        next(line.split()[1] for line in dockerfile_text().splitlines() if line.startswith("USER")).split(":")[0]
    )
    servers = [(name, kind, c) for name, kind, c in containers() if kind in ("Deployment", "InferenceService")]
    assert len(servers) == 2
    for name, _kind, c in servers:
        assert c["ports"][0]["containerPort"] == port, name
        ready = c["readinessProbe"]["httpGet"]
        assert ready["path"] == "/v2/health/ready" and ready["port"] in (port, "http"), name
        assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live", name
    for name, _, c in containers():
        context = c["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] == user and context["readOnlyRootFilesystem"], (
            name
        )
    kserve = next(c for _, kind, c in servers if kind == "InferenceService")
    assert kserve["name"] == "kserve-container"


def test_the_post_deployment_job_checks_the_live_service():
    job = next(c for _, kind, c in containers() if kind == "Job")
    assert job["command"][:3] == ["bundle", "check", "/srv/bundle"] and "--url" in job["command"]
