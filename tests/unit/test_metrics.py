"""The runtime's Prometheus metrics: the names operators know, help text on every one, bounded labels, and what the
work queue and the pod controller count; the JSON log format and its flag."""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import subprocess
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from k8sgpu.runtime.admission import Resources
from k8sgpu.runtime.catalog import GPUClass, runtime_class_manifest
from k8sgpu.runtime.controllers.decide import Create
from k8sgpu.runtime.controllers.pods import PodController
from k8sgpu.runtime.logs import JSONFormatter, about_pod
from k8sgpu.runtime.metrics import Metrics
from k8sgpu.runtime.provider import RemotePod
from k8sgpu.runtime.reflector import DONE, RETRY, WorkQueue

# What the other parts of the project (the Grafana dashboard, the README) name.
EXPECTED = {
    "k8sgpu_build_info": set(), "workqueue_depth": {"name"}, "workqueue_adds_total": {"name"},
    "workqueue_retries_total": {"name"}, "workqueue_queue_duration_seconds": {"name"},
    "workqueue_work_duration_seconds": {"name"}, "workqueue_unfinished_work_seconds": {"name"},
    "workqueue_longest_running_processor_seconds": {"name"},
    "rest_client_requests_total": {"cluster", "verb", "code"},
    "rest_client_request_duration_seconds": {"cluster", "verb"},
    "k8sgpu_pod_sync_duration_seconds": {"action"}, "k8sgpu_node_pods": {"phase"},
    "k8sgpu_mirror_running_duration_seconds": set(), "k8sgpu_provider_reachable": set(),
    "leader_election_master_status": {"name"}, "k8sgpu_certificate_expiration_seconds": {"certificate"},
}
BOUNDED_LABELS = {"name", "cluster", "verb", "code", "action", "phase", "certificate", "le", "node", "version"}
CLASS = GPUClass.from_runtime_class(runtime_class_manifest(
    "rc", node_name="n.gpu", gpu_product="NVIDIA-RTX-A6000", gpu_count=0, cpu="1", memory="1Gi"))
POD = {"kind": "Pod", "metadata": {"namespace": "ns", "name": "p", "uid": "u1"},
       "spec": {"runtimeClassName": "rc", "containers": [{"name": "c", "image": "cuda"}]},
       "status": {"phase": "Pending"}}


class Answering:
    """A stand-in for the local cluster and the provider: every call succeeds and returns the pod."""

    name = "stand-in"

    def __getattr__(self, method):
        async def call(*args, **kwargs):
            return POD
        return call


def _series(metrics: Metrics) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) → value, of everything the registry exposes."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in metrics.registry.collect() for s in family.samples}


def _runtime_metrics() -> tuple[Metrics, PodController]:
    metrics = Metrics("n.gpu")
    controller = PodController(Answering(), Answering(), "n.gpu", workers=1, metrics=metrics)
    controller.pods.store["ns/p"] = POD
    return metrics, controller


def test_every_metric_has_help_text_the_known_name_and_bounded_labels():
    metrics, _ = _runtime_metrics()
    families = {f.name: f for f in metrics.registry.collect()}
    # prometheus_client names a counter's family without its _total, and the info metric without _info.
    exposed = {({"counter": f"{n}_total", "info": f"{n}_info"}.get(f.type, n)): f for n, f in families.items()}
    assert set(EXPECTED) <= set(exposed), set(EXPECTED) - set(exposed)
    for name, family in exposed.items():
        assert len(family.documentation) > 20, f"{name} has no help text"
        labels = {label for sample in family.samples for label in sample.labels}
        assert labels <= BOUNDED_LABELS, f"{name}: unbounded labels {labels - BOUNDED_LABELS}"
    text = metrics.exposition().decode()
    for name in EXPECTED:
        assert f"# HELP {name} " in text and f"# TYPE {name} " in text, name


def test_the_work_queue_counts_adds_retries_latencies_and_depth():
    async def scenario():
        metrics = Metrics("n.gpu")
        release = asyncio.Event()
        outcomes = {"a": [RETRY, DONE], "b": [DONE]}

        async def handler(key):
            await release.wait()
            return outcomes[key].pop(0)

        queue = WorkQueue(handler, workers=1, name="pods", base_delay=0.01, metrics=metrics.workqueue)
        queue.add("a")
        queue.add("a")  # waiting already: no add
        queue.add("b")
        waiting = _series(metrics)
        worker = asyncio.create_task(queue.run())
        await asyncio.sleep(0.05)  # "a" in work, blocked; "b" waiting
        busy = _series(metrics)
        release.set()
        for _ in range(100):
            if not outcomes["a"] and not outcomes["b"] and not len(queue):
                break
            await asyncio.sleep(0.01)
        worker.cancel()
        queue.close()
        return waiting, busy, _series(metrics)

    waiting, busy, done = asyncio.run(scenario())
    name = (("name", "pods"),)
    assert waiting[("workqueue_adds_total", name)] == 2
    assert waiting[("workqueue_depth", name)] == 2
    assert busy[("workqueue_depth", name)] == 1
    assert busy[("workqueue_unfinished_work_seconds", name)] >= 0.04
    assert busy[("workqueue_longest_running_processor_seconds", name)] >= 0.04
    # "a" retried once: added again by its backoff timer, synced twice.
    assert done[("workqueue_retries_total", name)] == 1
    assert done[("workqueue_adds_total", name)] == 3
    assert done[("workqueue_work_duration_seconds_count", name)] == 3
    assert done[("workqueue_queue_duration_seconds_count", name)] == 3
    assert done[("workqueue_depth", name)] == 0
    assert done[("workqueue_unfinished_work_seconds", name)] == 0


def test_a_work_queue_and_a_pod_controller_work_without_metrics():
    async def scenario():
        synced = []

        async def handler(key):
            synced.append(key)
            return DONE

        queue = WorkQueue(handler, workers=1)
        queue.add("k")
        await queue.process("k")
        controller = PodController(Answering(), Answering(), "n.gpu", workers=1)
        controller.pods.store["ns/p"] = POD
        return synced, await controller.execute("ns/p", POD, Create(CLASS, Resources()))

    assert asyncio.run(scenario()) == (["k"], DONE)


def test_mirror_create_to_running_is_observed_once_per_created_mirror_and_pods_count_by_phase():
    async def scenario():
        metrics, controller = _runtime_metrics()
        await controller.execute("ns/p", POD, Create(CLASS, Resources()))
        controller.pod_changed(RemotePod("ns", "p", "u1", {"phase": "Pending"}, mirror_name="m"))
        pending = _series(metrics)
        controller.pod_changed(RemotePod("ns", "p", "u1", {"phase": "Running"}, mirror_name="m"))
        controller.pod_changed(RemotePod("ns", "p", "u1", {"phase": "Running"}, mirror_name="m"))
        # A mirror this process did not create (found at start): no observation.
        controller.pod_changed(RemotePod("ns", "q", "u2", {"phase": "Running"}, mirror_name="m2"))
        controller.pods.store["ns/r"] = {"metadata": {"namespace": "ns", "name": "r", "uid": "u3"},
                                         "status": {"phase": "Running"}}
        await controller.sync("ns/p")
        return pending, _series(metrics)

    pending, after = asyncio.run(scenario())
    assert pending[("k8sgpu_mirror_running_duration_seconds_count", ())] == 0
    assert after[("k8sgpu_mirror_running_duration_seconds_count", ())] == 1
    assert after[("k8sgpu_node_pods", (("phase", "Pending"),))] == 1
    assert after[("k8sgpu_node_pods", (("phase", "Running"),))] == 1
    assert after[("k8sgpu_node_pods", (("phase", "Failed"),))] == 0
    assert sum(v for (name, _), v in after.items() if name == "k8sgpu_pod_sync_duration_seconds_count") == 1


def test_certificate_expiry_is_the_certificates_not_after():
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "system:node:n.gpu")])
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=3))
            .sign(key, hashes.SHA256()))
    metrics = Metrics("n.gpu")
    assert not any(n == "k8sgpu_certificate_expiration_seconds" for n, _ in _series(metrics))  # none yet: absent
    metrics.certificate_expires("serving", cert.public_bytes(Encoding.PEM))
    assert _series(metrics)[("k8sgpu_certificate_expiration_seconds", (("certificate", "serving"),))] == \
        (now + datetime.timedelta(days=3)).timestamp()


def _format(record_extra: dict | None = None, exc: bool = False) -> dict:
    record = logging.LogRecord("k8sgpu.runtime.controllers.pods", logging.INFO, __file__, 1, "%s: creating mirror",
                               ("ns/p",), None)
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            record.exc_info = sys.exc_info()
    for key, value in (record_extra or {}).items():
        setattr(record, key, value)
    return json.loads(JSONFormatter().format(record))


def test_json_log_lines_carry_the_pod_when_a_line_is_about_one():
    line = _format(about_pod("ns", "p", "u1"))
    assert line["msg"] == "ns/p: creating mirror" and line["level"] == "info"
    assert line["logger"] == "k8sgpu.runtime.controllers.pods"
    assert line["pod"] == {"namespace": "ns", "name": "p", "uid": "u1"}
    assert datetime.datetime.fromisoformat(line["ts"]).tzinfo is not None
    assert "pod" not in _format()
    assert "ValueError: boom" in _format(exc=True)["exc"]


def test_a_bad_log_format_exits_2_naming_the_flag():
    for args, env in ((["--log-format", "xml"], {}), ([], {"K8SGPU_LOG_FORMAT": "yaml"})):
        out = subprocess.run([sys.executable, "-m", "k8sgpu.runtime.main", "start", "--provider-kubeconfig", "k",
                              "--tenant-namespace", "t", *args], capture_output=True, text=True,
                             env={"PATH": "/usr/bin:/bin", **env})
        assert out.returncode == 2, out.stderr
        assert "--log-format" in out.stderr and "text or json" in out.stderr, out.stderr
