"""`k8sgpu usage`: GPU-hours (and cost) per namespace, pod, offering or GPU product, from Prometheus.

The runtime exports per pod (by UID) counters whose values are pure functions of the pod's own start and finish
times (runtime/usage.py). So a pod's usage in a window is its counter at the window's end less its counter at the
window's start (0 when it has no sample before the start): both read with `max_over_time(...[W])`, which also finds
the last value of a pod that ended inside the window and, since the counters never reset, the largest of the
identical values two replicas may export (deduplicated by UID).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import io
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from pathlib import Path

METRICS = {"gpu_seconds": "k8sgpu_pod_gpu_seconds_total", "cpu_core_seconds": "k8sgpu_pod_cpu_core_seconds_total",
           "memory_byte_seconds": "k8sgpu_pod_memory_byte_seconds_total"}
POD_LABELS = ("uid", "namespace", "pod", "runtime_class", "product", "mig_profile")
BY = ("namespace", "pod", "runtime-class", "product")
DEFAULT_PROMETHEUS = "http://127.0.0.1:9090"
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class UsageError(RuntimeError):
    """Prometheus could not answer the question; the message says what to do."""


# -- flags -------------------------------------------------------------------------------


def duration(text: str) -> float:
    """A Prometheus-style duration (30m, 24h, 7d, 1h30m) in seconds."""
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text or sum(float(n) for n, _ in parts) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration: give e.g. 30m, 24h, 7d or 1h30m")
    return sum(float(n) * _UNIT[u] for n, u in parts)


def timestamp(text: str) -> float:
    """An RFC 3339 time (2026-01-31T00:00:00Z) or Unix seconds."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time: give RFC 3339 (2026-01-31T00:00:00Z) or Unix "
                                         "seconds") from None
    if when.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} names no time zone: add Z or an offset (+02:00)")
    return when.timestamp()


def price(text: str) -> tuple[str, Decimal]:
    """CLASS=AMOUNT/h: what one GPU-hour of RuntimeClass CLASS costs."""
    name, sep, amount = text.partition("=")
    amount = amount.removesuffix("/h")
    try:
        value = Decimal(amount)
    except InvalidOperation:
        value = None
    if not sep or not name or value is None or not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not CLASS=AMOUNT/h (e.g. seeweb-nvidia-1xa6000=1.20/h: "
                                         "the price of one GPU-hour of that RuntimeClass)")
    return name, value


def default_prometheus(dev_root: str) -> str:
    """$K8SGPU_PROMETHEUS_URL, else the dev ground's Prometheus when a ground is up, else 127.0.0.1:9090."""
    if os.environ.get("K8SGPU_PROMETHEUS_URL"):
        return os.environ["K8SGPU_PROMETHEUS_URL"]
    from .dev.ground import State
    from .dev.prometheus import prometheus_url

    try:
        state = State.load(Path(dev_root) / "state.json")
    except Exception:  # noqa: BLE001 - an unreadable ground is no reason to refuse a URL given otherwise
        state = None
    return prometheus_url(state) if state is not None and prometheus_url(state) else DEFAULT_PROMETHEUS


# -- Prometheus ------------------------------------------------------------------------------


Query = Callable[[str, float], list[dict]]


def http_query(base: str, timeout: float = 10) -> Query:
    """An instant query against Prometheus' HTTP API (/api/v1/query): the result's vector."""
    def query(promql: str, at: float) -> list[dict]:
        url = f"{base.rstrip('/')}/api/v1/query?" + urllib.parse.urlencode({"query": promql, "time": f"{at:.3f}"})
        try:
            with urllib.request.urlopen(url, timeout=timeout) as answer:
                body = json.load(answer)
        except urllib.error.HTTPError as exc:
            try:
                why = json.load(exc).get("error", "")
            except ValueError:
                why = ""
            raise UsageError(f"Prometheus at {base} refused the query {promql!r}: HTTP {exc.code} {why}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise UsageError(f"cannot reach Prometheus at {base} ({reason}): give its URL with --prometheus "
                             "(or $K8SGPU_PROMETHEUS_URL); the dev ground's is in `k8sgpu dev status`") from None
        if body.get("status") != "success":
            raise UsageError(f"Prometheus at {base} answered {body.get('error') or body} to {promql!r}")
        return body["data"]["result"]

    return query


@dataclasses.dataclass
class PodUse:
    uid: str
    namespace: str
    pod: str
    runtime_class: str
    product: str
    mig_profile: str
    gpu_seconds: float = 0.0
    cpu_core_seconds: float = 0.0
    memory_byte_seconds: float = 0.0


def _by_uid(result: list[dict]) -> dict[str, tuple[dict, float]]:
    return {s["metric"].get("uid", ""): (s["metric"], float(s["value"][1])) for s in result}


def pod_usage(query: Query, start: float, end: float) -> list[PodUse]:
    """Each pod's use in [start, end]: its counters at the end less at the start."""
    window = f"{max(int(round(end - start)), 1)}s"
    grouping = ", ".join(POD_LABELS)
    # A range over one metric name each: over a name pattern, two metrics' series of the same labels would collide.
    seen = " or ".join(f"count(last_over_time({name}[{window}]))" for name in ("k8sgpu_build_info", *METRICS.values()))
    present = query(seen, end) or query(seen, start)
    if not present:
        raise UsageError("Prometheus has no k8sgpu series in that window: is it scraping the runtime's health port "
                         "(/metrics)? See README, GPU accounting")
    pods: dict[str, PodUse] = {}
    for field, metric in METRICS.items():
        at = f"max by ({grouping}) (max_over_time({metric}[{window}]))"
        before, after = _by_uid(query(at, start)), _by_uid(query(at, end))
        for uid, (labels, value) in after.items():
            earlier = before.get(uid, (labels, 0.0))[1]
            pod = pods.get(uid)
            if pod is None:
                pod = pods[uid] = PodUse(**{k: labels.get(k, "") for k in POD_LABELS})
            setattr(pod, field, max(value - earlier, 0.0))
    return sorted(pods.values(), key=lambda p: (p.namespace, p.pod, p.uid))


# -- the report ---------------------------------------------------------------------------------


def _key(pod: PodUse, by: str) -> str:
    if by == "pod":
        return f"{pod.namespace}/{pod.pod}"
    if by == "runtime-class":
        return pod.runtime_class or "(unknown)"
    if by == "product":
        return f"{pod.product}/{pod.mig_profile}" if pod.mig_profile else (pod.product or "(unknown)")
    return pod.namespace


def report(pods: list[PodUse], by: str, prices: dict[str, Decimal], start: float, end: float) -> dict:
    rows: dict[str, dict] = {}
    unpriced = sorted({p.runtime_class for p in pods if prices and p.runtime_class not in prices})
    for pod in pods:
        row = rows.setdefault(_key(pod, by), {by: _key(pod, by), "pods": 0, "gpu_seconds": 0.0,
                                              "cpu_core_seconds": 0.0, "memory_byte_seconds": 0.0})
        row["pods"] += 1
        for field in METRICS:
            row[field] += getattr(pod, field)
        if prices:
            amount = Decimal(repr(pod.gpu_seconds)) / 3600 * prices.get(pod.runtime_class, Decimal(0))
            row["cost"] = row.get("cost", Decimal(0)) + amount
    out_rows = []
    for row in sorted(rows.values(), key=lambda r: r[by]):
        row["gpu_hours"] = row["gpu_seconds"] / 3600
        if "cost" in row:
            row["cost"] = float(round(row["cost"], 4))
        out_rows.append(row)
    total = {"pods": len(pods), "gpu_seconds": sum(p.gpu_seconds for p in pods)}
    total["gpu_hours"] = total["gpu_seconds"] / 3600
    if prices:
        total["cost"] = round(sum(r.get("cost", 0.0) for r in out_rows), 4)
    return {"from": _rfc3339(start), "to": _rfc3339(end), "by": by, "rows": out_rows, "total": total,
            **({"unpriced_runtime_classes": unpriced} if prices else {})}


def _rfc3339(at: float) -> str:
    return datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def render(result: dict, output: str) -> str:
    if output == "json":
        return json.dumps(result, indent=2)
    by, priced = result["by"], "cost" in result["total"]
    head = [by.upper(), "PODS", "GPU-HOURS", "GPU-SECONDS", "CPU-CORE-HOURS", "MEMORY-GIB-HOURS"]
    head += ["COST"] if priced else []
    lines = [[r[by], str(r["pods"]), f"{r['gpu_hours']:.4f}", f"{r['gpu_seconds']:.1f}",
              f"{r['cpu_core_seconds'] / 3600:.4f}", f"{r['memory_byte_seconds'] / 3600 / 2**30:.4f}"]
             + ([f"{r.get('cost', 0.0):.2f}"] if priced else []) for r in result["rows"]]
    if output == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([h.lower() for h in head])
        writer.writerows(lines)
        return out.getvalue().rstrip("\n")
    total = result["total"]
    footer = ["TOTAL", str(total["pods"]), f"{total['gpu_hours']:.4f}", f"{total['gpu_seconds']:.1f}", "", ""]
    footer += [f"{total['cost']:.2f}"] if priced else []
    table = [head, *lines, footer]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    text = [f"GPU usage from {result['from']} to {result['to']}"]
    text += ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths, strict=True))) for row in table]
    if result.get("unpriced_runtime_classes"):
        text.append("no --price for (counted at 0): " + ", ".join(result["unpriced_runtime_classes"]))
    return "\n".join(text)


def window(args: argparse.Namespace, now: float) -> tuple[float, float]:
    if args.since is not None:
        return now - args.since, now
    end = args.to if args.to is not None else now
    start = args.from_ if args.from_ is not None else end - 86400
    return start, end


def cmd_usage(args: argparse.Namespace) -> int:
    if args.since is not None and (args.from_ is not None or args.to is not None):
        args.parser.error("argument --since: not with --from/--to (give one window)")
    start, end = window(args, time.time())
    if end <= start:
        args.parser.error("argument --from: must be before --to")
    url = args.prometheus or default_prometheus(args.dev_root)
    prices = dict(args.price)
    print(render(report(pod_usage(http_query(url), start, end), args.by, prices, start, end), args.output))
    return 0


def add_parser(nouns, dev_root: str) -> None:
    usage = nouns.add_parser(
        "usage", help="GPU-hours (and cost) per namespace, pod, RuntimeClass or GPU product, from Prometheus",
        description="GPU-hours, CPU core-hours and memory GiB-hours that pods on k8s.gpu were allocated while "
                    "their copies ran on the provider, in a window (default: the last 24 h), from the runtime's "
                    "counters in Prometheus (k8sgpu_pod_gpu_seconds_total and its siblings); with --price, what "
                    "they cost. Exit 1 when Prometheus cannot be reached or holds no k8sgpu series; 2 on a bad flag.")
    usage.add_argument("--prometheus", metavar="URL",
                       help="Prometheus' base URL (default: $K8SGPU_PROMETHEUS_URL, else the dev ground's when it is "
                            f"up, else {DEFAULT_PROMETHEUS})")
    usage.add_argument("--since", type=duration, metavar="DURATION",
                       help="the window ends now and is this long: 30m, 24h, 7d, 1h30m (default 24h)")
    usage.add_argument("--from", dest="from_", type=timestamp, metavar="T",
                       help="the window's start: RFC 3339 (2026-01-31T00:00:00Z) or Unix seconds (default: 24 h "
                            "before --to)")
    usage.add_argument("--to", type=timestamp, metavar="T", help="the window's end (default: now)")
    usage.add_argument("--by", choices=BY, default="namespace",
                       help="one row per namespace (default), pod (namespace/name), runtime-class or product "
                            "(GPU product, /MIG profile for slices)")
    usage.add_argument("--price", type=price, action="append", default=[], metavar="CLASS=AMOUNT/h",
                       help="what one GPU-hour of RuntimeClass CLASS costs (repeatable); adds a COST column, pods "
                            "of classes without a price count 0")
    usage.add_argument("--output", "-o", choices=("table", "json", "csv"), default="table")
    usage.set_defaults(func=cmd_usage, parser=usage, dev_root=dev_root)
