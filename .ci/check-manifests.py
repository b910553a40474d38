"""Checks the deployment properties that schema validation cannot see (run in .venv/ci-tools).

kubernetes-validate proves the manifests are well-formed; this proves they say what the service
needs: gRPC health probes, a restrictive security context, credentials from a Secret, caller
authentication with tokens from a Secret, the metrics port, a grace period longer than the drain,
a gRPC-named Service port, and a PodDisruptionBudget that selects the pods.
"""

import sys
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
SERVICE = "streamexport.v1.ExportService"
DRAIN_SECONDS = 20  # the service's default --shutdown-grace
problems = []


def check(condition, message):
    if not condition:
        problems.append(message)


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys without a word; Kubernetes tools differ. A key
    written twice (two `volumes:` lists, say) is always a mistake: report it."""


def unique_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            problems.append(f"line {key_node.start_mark.line + 1}: the key {key!r} appears twice in one mapping")
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, unique_mapping)


def load(name):
    return yaml.load((DEPLOY / name).read_text(), Loader=UniqueKeyLoader)


deployment, service, pdb = load("deployment.yaml"), load("service.yaml"), load("pdb.yaml")
pod = deployment["spec"]["template"]["spec"]
labels = deployment["spec"]["template"]["metadata"]["labels"]
(container,) = pod["containers"]

for kind in ("readinessProbe", "livenessProbe"):
    grpc = container.get(kind, {}).get("grpc", {})
    check(grpc.get("port") == 50051 and grpc.get("service") == SERVICE, f"{kind} is not gRPC health on 50051/{SERVICE}")

security = container.get("securityContext", {})
check(security.get("runAsNonRoot") is True, "container: runAsNonRoot")
check(isinstance(security.get("runAsUser"), int) and security["runAsUser"] > 0, "container: numeric non-root runAsUser")
check(security.get("readOnlyRootFilesystem") is True, "container: readOnlyRootFilesystem")
check(security.get("allowPrivilegeEscalation") is False, "container: allowPrivilegeEscalation false")
check(security.get("capabilities", {}).get("drop") == ["ALL"], "container: capabilities drop ALL")
check(
    security.get("seccompProfile", {}).get("type") == "RuntimeDefault"
    or pod.get("securityContext", {}).get("seccompProfile", {}).get("type") == "RuntimeDefault",
    "seccomp RuntimeDefault",
)

resources = container.get("resources", {})
for part in ("requests", "limits"):
    check({"cpu", "memory"} <= set(resources.get(part, {})), f"resources.{part} needs cpu and memory")

env = {item["name"]: item for item in container.get("env", [])}
for name in ("STREAM_API_KEY", "STREAM_API_SECRET"):
    check("secretKeyRef" in env.get(name, {}).get("valueFrom", {}), f"{name} must come from a secretKeyRef")

# Caller authentication: the tokens file lies in a volume mounted from a Secret.
tokens_file = env.get("STREAM_EXPORT_AUTH_TOKENS_FILE", {}).get("value", "")
secret_volumes = {v["name"] for v in pod.get("volumes", []) if "secret" in v}
check(
    any(
        m["name"] in secret_volumes and tokens_file.startswith(m["mountPath"].rstrip("/") + "/")
        for m in container.get("volumeMounts", [])
    ),
    "STREAM_EXPORT_AUTH_TOKENS_FILE must name a file in a volume mounted from a Secret",
)

# Metrics: served, on a named container port, at the address the Deployment gives.
metrics = env.get("STREAM_EXPORT_METRICS_LISTEN", {}).get("value", "")
metrics_port = next((p["containerPort"] for p in container.get("ports", []) if p.get("name") == "metrics"), None)
check(
    metrics_port is not None and metrics.endswith(f":{metrics_port}"),
    "STREAM_EXPORT_METRICS_LISTEN must be set, on the container port named metrics",
)

pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
grace = pod.get("terminationGracePeriodSeconds", 30)
check(grace > pre_stop + DRAIN_SECONDS, f"terminationGracePeriodSeconds {grace} <= preStop {pre_stop} + drain {DRAIN_SECONDS}")

ports = service["spec"]["ports"]
check(
    any(p.get("name") == "grpc" and p.get("appProtocol") == "grpc" and p.get("port") == 50051 for p in ports),
    "Service needs port 50051 named grpc with appProtocol grpc",
)
for name, selector in (("Service", service["spec"]["selector"]), ("PDB", pdb["spec"]["selector"]["matchLabels"])):
    check(selector.items() <= labels.items(), f"{name} selector {selector} does not select the pods")
check(deployment["spec"]["replicas"] >= 2, "at least 2 replicas, or the PDB blocks every drain")

if problems:
    sys.exit("deploy/ manifests:\n  " + "\n  ".join(problems))
print("deploy/ manifests: probes, security context, secrets, caller tokens, metrics, grace period, Service and PDB as required")
