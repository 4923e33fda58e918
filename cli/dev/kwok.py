"""kwok configuration for one GPU pool: pod stages, logs and exec simulation.

kwok runs `kubectl exec` commands as local processes and serves `kubectl logs`
from a file. Each pool gets its own kwok controller, so the GPUs a command sees
(through the environment of the exec) are those of the node the pod runs on.
"""

from __future__ import annotations

import datetime
import stat
from pathlib import Path

import yaml

from .catalog import GPUPool

# A pod carrying these annotations ends on its own: after RUN_FOR (a Go duration,
# default at once) its containers terminate with EXIT_CODE; 0 → Succeeded, else Failed.
EXIT_CODE_ANNOTATION = "sim.k8sgpu.dev/exit-code"
RUN_FOR_ANNOTATION = "sim.k8sgpu.dev/run-for"
# A pod carrying this annotation comes up as if its containers had restarted that often
# (restartCount and lastState set; `kubectl logs --previous` serves the pool's previous log).
RESTARTS_ANNOTATION = "sim.k8sgpu.dev/restarts"
# Port-forwarding to this port of any pod reaches a line echo (`sed -u 's/^/pong: /'`) on the kwok host.
ECHO_PORT = 7777
# What each container of a pod uses, as quantities (default 10m cpu and 64Mi memory); kwok serves it as
# the kubelet's resource metrics, which the provider's metrics-server reads.
USAGE_CPU_ANNOTATION = "sim.k8sgpu.dev/usage-cpu"
USAGE_MEMORY_ANNOTATION = "sim.k8sgpu.dev/usage-memory"
RESOURCE_METRICS_PATH = "/metrics/nodes/{nodeName}/metrics/resource"

_POD_READY = """\
{{ $now := Now }}
conditions:
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: Initialized
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: Ready
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: ContainersReady
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: PodScheduled
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  imageID: {{ printf "docker.io/%s@sha256:0000000000000000000000000000000000000000000000000000000000000000" .image | Quote }}
  containerID: {{ printf "containerd://%s" .name | Quote }}
  name: {{ .name | Quote }}
  ready: true
  started: true
  @RESTARTS@
  state:
    running:
      startedAt: {{ $now | Quote }}
{{ end }}
initContainerStatuses:
{{ range .spec.initContainers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: true
  restartCount: 0
  state:
    terminated:
      exitCode: 0
      finishedAt: {{ $now | Quote }}
      reason: Completed
      startedAt: {{ $now | Quote }}
{{ end }}
hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
podIP: {{ PodIPWith .spec.nodeName false ( or .metadata.uid "" ) ( or .metadata.name "" ) ( or .metadata.namespace "" ) | Quote }}
phase: Running
startTime: {{ $now | Quote }}
"""

_POD_END = """\
{{ $now := Now }}
{{ $code := index .metadata.annotations "@EXIT_CODE@" }}
conditions:
- lastTransitionTime: {{ $now | Quote }}
  status: "False"
  type: Ready
  reason: PodCompleted
- lastTransitionTime: {{ $now | Quote }}
  status: "False"
  type: ContainersReady
  reason: PodCompleted
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  imageID: {{ printf "docker.io/%s@sha256:0000000000000000000000000000000000000000000000000000000000000000" .image | Quote }}
  containerID: {{ printf "containerd://%s" .name | Quote }}
  name: {{ .name | Quote }}
  ready: false
  started: false
  restartCount: 0
  state:
    terminated:
      exitCode: {{ $code }}
      finishedAt: {{ $now | Quote }}
      reason: {{ if eq $code "0" }}Completed{{ else }}Error{{ end }}
      startedAt: {{ or $.status.startTime $now | Quote }}
{{ end }}
phase: {{ if eq $code "0" }}Succeeded{{ else }}Failed{{ end }}
""".replace("@EXIT_CODE@", EXIT_CODE_ANNOTATION)


_NO_RESTART = "restartCount: 0"
_RESTARTED = """restartCount: {{ index $.metadata.annotations "@RESTARTS_ANNOTATION@" }}
  lastState:
    terminated:
      exitCode: 1
      reason: Error
      startedAt: {{ $now | Quote }}
      finishedAt: {{ $now | Quote }}""".replace("@RESTARTS_ANNOTATION@", RESTARTS_ANNOTATION)


def _stage(name: str, selector: list[dict], nxt: dict, delay: dict | None = None) -> dict:
    spec: dict = {"resourceRef": {"apiGroup": "v1", "kind": "Pod"}, "selector": {"matchExpressions": selector}}
    if delay:
        spec["delay"] = delay
    spec["next"] = nxt
    return {"apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Stage", "metadata": {"name": name}, "spec": spec}


def pod_stages() -> list[dict]:
    alive = {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"}
    return [
        _stage(
            "pod-ready",
            [alive, {"key": ".status.podIP", "operator": "DoesNotExist"},
             {"key": f'.metadata.annotations["{RESTARTS_ANNOTATION}"]', "operator": "DoesNotExist"}],
            {"statusTemplate": _POD_READY.replace("@RESTARTS@", _NO_RESTART)},
        ),
        _stage(
            "pod-ready-restarted",
            [alive, {"key": ".status.podIP", "operator": "DoesNotExist"},
             {"key": f'.metadata.annotations["{RESTARTS_ANNOTATION}"]', "operator": "Exists"}],
            {"statusTemplate": _POD_READY.replace("@RESTARTS@", _RESTARTED)},
        ),
        _stage(
            "pod-end",
            [
                alive,
                {"key": ".status.phase", "operator": "In", "values": ["Running"]},
                {"key": f'.metadata.annotations["{EXIT_CODE_ANNOTATION}"]', "operator": "Exists"},
            ],
            {"statusTemplate": _POD_END},
            delay={
                "durationMilliseconds": 0,
                "durationFrom": {"expressionFrom": f'.metadata.annotations["{RUN_FOR_ANNOTATION}"]'},
            },
        ),
        _stage(
            "pod-delete",
            [{"key": ".metadata.deletionTimestamp", "operator": "Exists"}],
            {"finalizers": {"empty": True}, "delete": True},
        ),
    ]


def _usage(annotation: str, default: str) -> str:
    return (f'"{annotation}" in pod.metadata.annotations ? Quantity(pod.metadata.annotations["{annotation}"]) '
            f': Quantity("{default}")')


def resource_usage() -> dict:
    return {
        "apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "ClusterResourceUsage",
        "metadata": {"name": "usage-from-annotations"},
        "spec": {"usages": [{"usage": {"cpu": {"expression": _usage(USAGE_CPU_ANNOTATION, "10m")},
                                       "memory": {"expression": _usage(USAGE_MEMORY_ANNOTATION, "64Mi")}}}]},
    }


def resource_metrics() -> dict:
    """The kubelet's /metrics/resource families, computed by kwok from the usage above."""
    container = [{"name": "container", "value": "container.name"},
                 {"name": "namespace", "value": "pod.metadata.namespace"},
                 {"name": "pod", "value": "pod.metadata.name"}]
    pod = container[1:]
    families = [
        ("scrape_error", "node", "gauge", [], "0"),
        ("container_start_time_seconds", "container", "gauge", container, "pod.SinceSecond()"),
        ("container_cpu_usage_seconds_total", "container", "counter", container,
         'pod.CumulativeUsage("cpu", container.name)'),
        ("container_memory_working_set_bytes", "container", "gauge", container, 'pod.Usage("memory", container.name)'),
        ("pod_cpu_usage_seconds_total", "pod", "counter", pod, 'pod.CumulativeUsage("cpu")'),
        ("pod_memory_working_set_bytes", "pod", "gauge", pod, 'pod.Usage("memory")'),
        ("node_cpu_usage_seconds_total", "node", "counter", [], 'node.CumulativeUsage("cpu")'),
        ("node_memory_working_set_bytes", "node", "gauge", [], 'node.Usage("memory")'),
    ]
    return {
        "apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Metric", "metadata": {"name": "metrics-resource"},
        "spec": {"path": RESOURCE_METRICS_PATH, "metrics": [
            {"name": name, "dimension": dim, "kind": kind, "help": name, "value": value,
             **({"labels": labels} if labels else {})} for name, dim, kind, labels, value in families]},
    }


def nvidia_smi_output(pool: GPUPool) -> str:
    """What the stand-in prints, shaped like `nvidia-smi`'s table."""
    lines = [
        "+-----------------------------------------------------------------------------------------+",
        "| NVIDIA-SMI 550.54.15 (k8sgpu dev stand-in)  Driver Version: 550.54.15  CUDA Version: 12.4 |",
        "|-----------------------------------------+------------------------+----------------------+",
        "| GPU  Name                               | Bus-Id          Disp.A | Memory-Usage         |",
        "|=========================================+========================+======================|",
    ]
    for i in range(pool.gpus_per_node):
        lines.append(
            f"| {i:<3d}  {pool.gpu_product:<34s} | 00000000:{0x17 + i:02X}:00.0 Off |"
            f" {0:>6d}MiB / {pool.gpu_memory_mib:>6d}MiB |"
        )
    lines.append("+-----------------------------------------+------------------------+----------------------+")
    return "\n".join(lines) + "\n"


def cri_log_lines(lines: list[str], when: datetime.datetime | None = None) -> str:
    """Lines in the CRI container log format kwok serves (`<RFC3339Nano> stdout F <line>`)."""
    stamp = (when or datetime.datetime.now(datetime.UTC)).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")
    return "".join(f"{stamp} stdout F {line}\n" for line in lines)


def write_pool_files(pool: GPUPool, directory: Path) -> Path:
    """Write the pool's kwok config, its logs file and its `nvidia-smi` stand-in; returns the config."""
    bin_dir = directory / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    smi = bin_dir / "nvidia-smi"
    # The exec environment (set per pool below) says which GPUs this node has.
    smi.write_text(
        "#!/bin/sh\n"
        "# nvidia-smi stand-in of the k8sgpu dev ground: prints the GPUs of the kwok node.\n"
        'if [ "$1" = "-L" ]; then\n'
        '  i=0; while [ "$i" -lt "${K8SGPU_GPU_COUNT:-0}" ]; do\n'
        '    echo "GPU $i: ${K8SGPU_GPU_PRODUCT} (UUID: GPU-${K8SGPU_NODE_POOL}-$i)"; i=$((i+1)); done\n'
        "  exit 0\n"
        "fi\n"
        'cat "$K8SGPU_SMI_TABLE"\n'
    )
    smi.chmod(smi.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    table = directory / "nvidia-smi.txt"
    table.write_text(nvidia_smi_output(pool))
    logs = directory / "container.log"
    logs.write_text(cri_log_lines(
        [f"k8sgpu dev ground: container started on a {pool.gpu_product} node", *table.read_text().splitlines()]))
    previous = directory / "previous.log"
    previous.write_text(cri_log_lines([f"k8sgpu dev ground: the previous run on a {pool.gpu_product} node",
                                       "CUDA error: out of memory (simulated); exiting 1"]))
    workdir = directory / "rootfs"
    workdir.mkdir(exist_ok=True)
    docs: list[dict] = [
        {"apiVersion": "config.kwok.x-k8s.io/v1alpha1", "kind": "KwokConfiguration", "options": {}},
        *pod_stages(),
        {
            "apiVersion": "kwok.x-k8s.io/v1alpha1",
            "kind": "ClusterLogs",
            "metadata": {"name": f"pool-{pool.name}"},
            "spec": {"logs": [{"logsFile": str(logs), "previousLogsFile": str(previous), "follow": True}]},
        },
        resource_usage(),
        resource_metrics(),
        {
            "apiVersion": "kwok.x-k8s.io/v1alpha1",
            "kind": "ClusterPortForward",
            "metadata": {"name": f"pool-{pool.name}"},
            "spec": {"forwards": [{"ports": [ECHO_PORT], "command": ["sed", "-u", "s/^/pong: /"]}]},
        },
        {
            "apiVersion": "kwok.x-k8s.io/v1alpha1",
            "kind": "ClusterExec",
            "metadata": {"name": f"pool-{pool.name}"},
            "spec": {
                "execs": [
                    {
                        "local": {
                            "workDir": str(workdir),
                            "envs": [
                                {"name": "K8SGPU_GPU_PRODUCT", "value": pool.gpu_product},
                                {"name": "K8SGPU_GPU_COUNT", "value": str(pool.gpus_per_node)},
                                {"name": "K8SGPU_NODE_POOL", "value": pool.name},
                                {"name": "K8SGPU_SMI_TABLE", "value": str(table)},
                                {"name": "PATH", "value": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin"},
                            ],
                        }
                    }
                ]
            },
        },
    ]
    config = directory / "kwok.yaml"
    config.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return config
