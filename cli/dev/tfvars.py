"""Variables of terraform/generic for the dev ground: `k8sgpu dev tfvars` → `make apply CLOUD=generic`."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import yaml

from .ground import State


def inline_kubeconfig(path: str) -> str:
    """The kubeconfig with its certificate files written inline (a Secret cannot point at files)."""
    kc = yaml.safe_load(Path(path).read_text())
    for entry, section, keys in (("clusters", "cluster", ("certificate-authority",)),
                                 ("users", "user", ("client-certificate", "client-key"))):
        for item in kc.get(entry) or []:
            body = item.get(section) or {}
            for key in keys:
                if key in body:
                    body[f"{key}-data"] = base64.b64encode(Path(body.pop(key)).read_bytes()).decode()
    return yaml.safe_dump(kc, sort_keys=False)


def generic_tfvars(state: State) -> dict:
    from k8sgpu.runtime.catalog import DEMO_DEFAULT_RUNTIME_CLASS

    return {
        "kubeconfig_path": state.local.kubeconfig,
        "tenant_namespace": state.tenant_namespace,
        "tenant_kubeconfig": inline_kubeconfig(state.tenant_kubeconfig),
        # A pod pinned to the node with nodeName and no runtimeClassName runs on the smallest offering.
        "default_runtime_class": DEMO_DEFAULT_RUNTIME_CLASS,
        # With its worker node the ground runs the Deployment's pod, from the image imported there; without
        # one, no node can (k8s.gpu is tainted), so Terraform must not wait for the rollout.
        "wait_for_rollout": bool(state.worker),
    }


def write_generic_tfvars(state: State) -> Path:
    path = Path(state.root) / "generic.tfvars.json"
    path.touch(mode=0o600)
    path.write_text(json.dumps(generic_tfvars(state), indent=2) + "\n")
    return path
