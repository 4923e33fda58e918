"""The runtime's log lines: text for people (the default), or JSON lines for log pipelines (``--log-format json``).

A JSON line carries ``ts``, ``level``, ``logger`` and ``msg``; a line about a pod also carries
``pod: {namespace, name, uid}``, given at the log call with ``extra=about_pod(...)`` (klog's ``"pod"`` key, as
``klog.KObj`` writes it), and a line with an exception ``exc``, its traceback.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def about_pod(namespace: str, name: str, uid: str = "") -> dict:
    """``extra=`` of a log call about one pod."""
    pod = {"namespace": namespace, "name": name}
    if uid:
        pod["uid"] = uid
    return {"pod": pod}


class JSONFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        pod = getattr(record, "pod", None)
        if isinstance(pod, dict):
            line["pod"] = pod
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure(log_format: str, level: int) -> None:
    """The root logger of the process writes to stderr in ``log_format`` (text or json: `config.LOG_FORMATS`)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
