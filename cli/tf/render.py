"""`k8sgpu render`: Jinja2 templates under modules/ → complete root configurations under terraform/<cloud>.

Jinja does only what Terraform cannot: which providers a root requires and configures, its backend, which
modules it calls, the defaults from the user's values, and the runtime's RBAC rules taken from
k8sgpu.runtime.rbac. Everything Terraform can express (for_each over the catalog, validation) stays in HCL.
Each root carries rendered copies of its modules, so a GitOps pipeline can `terraform apply` the folder as is.
Output is deterministic: the same templates and values give the same bytes, formatted by `terraform fmt`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .runner import CLOUDS, embedded_terraform

# What each cloud's root carries: rendered module folder name → template folder under modules/.
ROOT_MODULES: dict[str, dict[str, str]] = {
    "generic": {"node": "node"},
    "eks": {"node": "node", "eks": "eks", "eks_trust": "eks_trust", "aws_auth": "aws_auth"},
    "aks": {"node": "node", "aks": "aks"},
}

# Provider versions the roots accept. The kubernetes and kubectl ranges include the versions built from source
# for the tests (1.13.4 and 1.19.0, see cli/tf/providers.py); aws from 5.33.0 has aws_eks_access_entry.
PROVIDER_VERSIONS = {
    "kubernetes": ">= 1.13.4, < 3.0.0",
    "kubectl": ">= 1.19.0, < 2.0.0",
    "aws": ">= 5.33.0, < 7.0.0",
}

DEFAULT_VALUES: dict[str, Any] = {
    "node_name": "k8s.gpu",
    "namespace": "k8sgpu",
    "image": "k8sgpu-runtime",
    "image_tag": "0.1.0",
    "default_runtime_class": "",
}

_QUANTITY_CPU = re.compile(r"^([0-9]+m|[0-9]+(\.[0-9]+)?)$")
_QUANTITY_MEMORY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
_RC_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_ACCOUNT = re.compile(r"^[0-9]{12}$")
_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/.+$")


class RenderError(ValueError):
    """Bad values or templates; the message names the field and says what to write instead."""


def template_root() -> Path:
    return Path(str(resources.files("k8sgpu.modules")))


def demo_catalog_values() -> dict[str, dict]:
    """The demo catalog (k8sgpu.runtime.catalog.demo_catalog: the guide's three offerings, a MIG one) as values."""
    from k8sgpu.runtime.catalog import (
        GPU_COUNT,
        GPU_HANDLER,
        GPU_MIG_PROFILE,
        GPU_PRODUCT,
        LIMIT_CPU,
        LIMIT_MEMORY,
        demo_catalog,
    )

    out = {}
    for rc in demo_catalog():
        ann = rc["metadata"]["annotations"]
        out[rc["metadata"]["name"]] = {"gpu_product": ann[GPU_PRODUCT], "gpu_count": int(ann[GPU_COUNT]),
                                       "cpu": ann[LIMIT_CPU], "memory": ann[LIMIT_MEMORY],
                                       "handler": ann[GPU_HANDLER]}
        if ann.get(GPU_MIG_PROFILE):
            out[rc["metadata"]["name"]]["mig_profile"] = ann[GPU_MIG_PROFILE]
    return out


# ---------------------------------------------------------------------------------------------- values

_TOP = {"node_name", "namespace", "tenant_namespace", "image", "image_tag", "catalog", "default_runtime_class",
        "backend", "eks", "aks"}
_CATALOG_FIELDS = {"gpu_product", "gpu_count", "cpu", "memory", "handler", "default_limits", "mig_profile"}
_MIG_PROFILE = re.compile(r"^[1-8]g\.[0-9]+gb(\+me)?$")
_EKS = {"cluster_name", "region", "role_name", "trust"}
_TRUST = {"account_ids", "role_arns"}
_AKS = {"cluster_name"}


def load_values(path: str | None) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if path:
        try:
            values = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise RenderError(f"--values {path}: cannot read it ({exc.strerror})") from None
        except yaml.YAMLError as exc:
            raise RenderError(f"--values {path}: not valid YAML: {exc}") from None
    check_values(values)
    merged = {**DEFAULT_VALUES, "catalog": demo_catalog_values(), **values}
    return merged


def _unknown(where: str, data: dict, known: set[str]) -> None:
    extra = sorted(set(data) - known)
    if extra:
        raise RenderError(f"{where}{extra[0]}: unknown key; known keys: {', '.join(sorted(known))}")


def _mapping(where: str, value: Any) -> dict:
    if not isinstance(value, dict):
        raise RenderError(f"{where}: must be a mapping (key: value lines), not {type(value).__name__}")
    return value


def _string(where: str, value: Any, example: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise RenderError(f"{where}: must be a non-empty string, e.g. {where.rsplit('.', 1)[-1]}: {example}")


def check_values(values: Any) -> None:
    """Refuse a values file whose structure is wrong, naming the field and saying what to write instead."""
    values = _mapping("values", values)
    _unknown("", values, _TOP)
    for key, example in (("node_name", "k8s.gpu"), ("namespace", "k8sgpu"), ("tenant_namespace", "tenant-demo"),
                         ("image", "registry.example.com/k8sgpu-runtime"), ("image_tag", "0.1.0")):
        if key in values:
            _string(key, values[key], example)
    if "catalog" in values:
        catalog = _mapping("catalog", values["catalog"])
        if not catalog:
            raise RenderError("catalog: empty; give at least one offering, e.g. catalog: {seeweb-nvidia-1xa6000: "
                              "{gpu_product: NVIDIA-RTX-A6000, gpu_count: 1, cpu: 8000m, memory: 32861620Ki}}")
        for name, entry in catalog.items():
            where = f"catalog.{name}"
            if not isinstance(name, str) or not _RC_NAME.match(name) or len(name) > 63:
                raise RenderError(f"{where}: not a RuntimeClass name of at most 63 characters (it is also the "
                                  "node's extended resource k8s.gpu/<name>); use lower-case letters, digits, '-' "
                                  "and '.', e.g. seeweb-nvidia-1xa6000")
            entry = _mapping(where, entry)
            _unknown(f"{where}.", entry, _CATALOG_FIELDS)
            missing = sorted({"gpu_product", "gpu_count", "cpu", "memory"} - set(entry))
            if missing:
                raise RenderError(f"{where}.{missing[0]}: missing; an entry needs gpu_product, gpu_count, cpu and "
                                  "memory, e.g. {gpu_product: NVIDIA-RTX-A6000, gpu_count: 1, cpu: 8000m, "
                                  "memory: 32861620Ki}")
            _string(f"{where}.gpu_product", entry["gpu_product"], "NVIDIA-RTX-A6000")
            count = entry["gpu_count"]
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise RenderError(f"{where}.gpu_count: {count!r} is not a whole number >= 0; write e.g. gpu_count: 1")
            if not isinstance(entry["cpu"], str | int) or not _QUANTITY_CPU.match(str(entry["cpu"])):
                raise RenderError(f"{where}.cpu: {entry['cpu']!r} is not a CPU quantity; write e.g. cpu: 8000m "
                                  "or cpu: \"8\"")
            if not isinstance(entry["memory"], str) or not _QUANTITY_MEMORY.match(entry["memory"]):
                raise RenderError(f"{where}.memory: {entry['memory']!r} is not a memory quantity; write e.g. "
                                  "memory: 32861620Ki or memory: 32Gi")
            if "handler" in entry:
                _string(f"{where}.handler", entry["handler"], "nvidia")
            if "default_limits" in entry and not isinstance(entry["default_limits"], bool):
                raise RenderError(f"{where}.default_limits: must be true or false")
            if "mig_profile" in entry and (not isinstance(entry["mig_profile"], str)
                                           or not _MIG_PROFILE.match(entry["mig_profile"])):
                raise RenderError(f"{where}.mig_profile: {entry['mig_profile']!r} is not a MIG profile as the NVIDIA "
                                  "GPU operator names them; write e.g. mig_profile: 1g.10gb")
    if "default_runtime_class" in values:
        default = values["default_runtime_class"]
        offered = values.get("catalog") or demo_catalog_values()
        if not isinstance(default, str) or (default and default not in offered):
            raise RenderError(f"default_runtime_class: {default!r} is not an entry of the catalog; give one of "
                              f"{', '.join(sorted(offered))}, or \"\" for none")
    if "backend" in values:
        backend = _mapping("backend", values["backend"])
        _unknown("backend.", backend, {"type", "config"})
        _string("backend.type", backend.get("type"), "s3")
        if not re.fullmatch(r"[a-z0-9_]+", backend["type"]):
            raise RenderError(f"backend.type: {backend['type']!r} is not a Terraform backend type, "
                              "e.g. s3, azurerm, gcs")
        for key, value in _mapping("backend.config", backend.get("config", {})).items():
            if not re.fullmatch(r"[a-z_][a-z0-9_]*", str(key)) or not isinstance(value, str | int | bool):
                raise RenderError(f"backend.config.{key}: give plain settings (name: string, number or bool), "
                                  "e.g. bucket: my-state")
    if "eks" in values:
        eks = _mapping("eks", values["eks"])
        _unknown("eks.", eks, _EKS)
        for key, example in (("cluster_name", "my-cluster"), ("region", "eu-west-1"), ("role_name", "k8sgpu-node")):
            if key in eks:
                _string(f"eks.{key}", eks[key], example)
        if "trust" in eks:
            trust = _mapping("eks.trust", eks["trust"])
            if "eks_pod_identity" in trust:
                raise RenderError("eks.trust.eks_pod_identity: removed: EKS Pod Identity names its own role sessions, "
                                  "while the role may only be assumed as the node (sts:RoleSessionName); put the role "
                                  "your Pod Identity association (or IRSA) gives the runtime's ServiceAccount in "
                                  "role_arns, and the runtime assumes the node's role from it")
            _unknown("eks.trust.", trust, _TRUST)
            accounts, roles = trust.get("account_ids", []), trust.get("role_arns", [])
            if not isinstance(accounts, list) or not all(isinstance(a, str) and _ACCOUNT.match(a) for a in accounts):
                raise RenderError("eks.trust.account_ids: a list of 12-digit account ids as strings, "
                                  "e.g. account_ids: [\"111122223333\"]")
            if not isinstance(roles, list) or not all(isinstance(r, str) and _ROLE_ARN.match(r) for r in roles):
                raise RenderError("eks.trust.role_arns: a list of IAM role ARNs, "
                                  "e.g. role_arns: [\"arn:aws:iam::111122223333:role/ci\"]")
            if not accounts and not roles:
                raise RenderError("eks.trust: empty trust principal; say who the runtime starts as: "
                                  "account_ids: [\"111122223333\"] or role_arns: "
                                  "[\"arn:aws:iam::111122223333:role/ci\"]")
    if "aks" in values:
        aks = _mapping("aks", values["aks"])
        if "resource_group_name" in aks:
            raise RenderError("aks.resource_group_name: removed: the AKS root no longer reads the cluster from Azure; "
                              "it logs in with your kubeconfig (variables kubeconfig_path, kube_context; "
                              "aks.cluster_name is the default context, as `az aks get-credentials` names it)")
        _unknown("aks.", aks, _AKS)
        if "cluster_name" in aks:
            _string("aks.cluster_name", aks["cluster_name"], "my-aks")


# ---------------------------------------------------------------------------------------------- HCL

def hcl(value: Any, expressions: dict[str, str] | None = None, indent: int = 0) -> str:
    """A Python value as an HCL expression. Strings listed in ``expressions`` become those HCL expressions
    (a signer name in a rule → the module's variable)."""
    expressions = expressions or {}
    pad, inner = "  " * indent, "  " * (indent + 1)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, str):
        if value in expressions:
            return expressions[value]
        return json.dumps(value).replace("${", "$${").replace("%{", "%%{")
    if isinstance(value, list | tuple):
        if not value:
            return "[]"
        if all(isinstance(v, str | int | float | bool) for v in value):
            return "[" + ", ".join(hcl(v, expressions) for v in value) + "]"
        items = [f"{inner}{hcl(v, expressions, indent + 1)}," for v in value]
        return "[\n" + "\n".join(items) + f"\n{pad}]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        lines = []
        for k, v in value.items():
            key = k if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", k) else json.dumps(k)
            lines.append(f"{inner}{key} = {hcl(v, expressions, indent + 1)}")
        return "{\n" + "\n".join(lines) + f"\n{pad}}}"
    raise RenderError(f"cannot write {type(value).__name__} {value!r} as HCL")


_SIGNER = "<serving signer>"
_NODE = "<node name>"


def node_rules_hcl() -> str:
    """The runtime's rules beyond its node identity (k8sgpu.runtime.rbac.extra_rules, whose default is
    EXTRA_RULES) in HCL, with the serving signer as the module's `local.csr_signer_name`, so the same rules serve
    kubernetes.io/kubelet-serving and EKS's beta.eks.amazonaws.com/app-serving."""
    from k8sgpu.runtime import rbac

    rules = rbac.extra_rules(_SIGNER, _NODE)
    if rbac.extra_rules() != rbac.EXTRA_RULES:
        raise RenderError("k8sgpu.runtime.rbac: EXTRA_RULES differs from extra_rules(); render needs them equal")
    return hcl(rules, {_SIGNER: "local.csr_signer_name", _NODE: "var.node_name"}, indent=1)


def election_rules_hcl() -> str:
    """The ServiceAccount's leader election rules (k8sgpu.runtime.rbac.election_rules, whose default is
    ELECTION_RULES) in HCL, for the Lease named after the module's node."""
    from k8sgpu.runtime import rbac

    if rbac.election_rules() != rbac.ELECTION_RULES:
        raise RenderError("k8sgpu.runtime.rbac: ELECTION_RULES differs from election_rules(); render needs them equal")
    return hcl(rbac.election_rules(_NODE), {_NODE: "var.node_name"}, indent=1)


_NAME = "<module name>"


def serving_policy_hcl() -> list[str]:
    """The ValidatingAdmissionPolicy and its binding that bound the node's approval to its own serving CSR
    (k8sgpu.runtime.rbac.serving_approval_policy) in HCL, for the module's node, signer and name."""
    from k8sgpu.runtime import rbac

    out = []
    for manifest in rbac.serving_approval_policy(_NODE, _SIGNER, _NAME):
        text = hcl(manifest, indent=1)
        for placeholder, expression in ((_NODE, "var.node_name"), (_SIGNER, "local.csr_signer_name"),
                                        (_NAME, "var.name")):
            text = text.replace(placeholder, "${" + expression + "}")
        out.append(text)
    return out


# ---------------------------------------------------------------------------------------------- rendering

def _environment():
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(template_root())), undefined=jinja2.StrictUndefined,
                              keep_trailing_newline=True, autoescape=False)


def _context(cloud: str, values: dict[str, Any]) -> dict[str, Any]:
    backend = values.get("backend")
    return {
        "cloud": cloud,
        "values": values,
        "hcl": hcl,
        "backend": backend,
        "node_rules": node_rules_hcl(),
        "election_rules": election_rules_hcl(),
        "serving_policy": serving_policy_hcl(),
        "image_tag": DEFAULT_VALUES["image_tag"],
        "kubernetes_version": PROVIDER_VERSIONS["kubernetes"],
        "kubectl_version": PROVIDER_VERSIONS["kubectl"],
        "aws_version": PROVIDER_VERSIONS["aws"],
        "eks": values.get("eks", {}),
        "aks": values.get("aks", {}),
    }


def _render_folder(env, template_dir: str, out: Path, context: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    src = template_root() / template_dir
    for path in sorted(src.iterdir()):
        if path.name.endswith(".j2"):
            text = env.get_template(f"{template_dir}/{path.name}").render(**context)
            (out / path.name.removesuffix(".j2")).write_text(text)
        elif path.name == "README.md":
            shutil.copyfile(path, out / path.name)


def render(cloud: str, out_dir: str | Path = "terraform", values_file: str | None = None,
           terraform: str | None = None) -> Path:
    """Write terraform/<cloud> afresh (its .terraform and state files are kept) and return its path."""
    if cloud not in CLOUDS:
        raise RenderError(f"--cloud {cloud!r}: unknown cloud; write one of {', '.join(CLOUDS)}")
    values = load_values(values_file)
    env = _environment()
    context = _context(cloud, values)
    target = Path(out_dir) / cloud
    with tempfile.TemporaryDirectory(prefix=f"k8sgpu-render-{cloud}-") as tmp:
        staged = Path(tmp) / cloud
        _render_folder(env, f"root/{cloud}", staged, context)
        for name, template_dir in ROOT_MODULES[cloud].items():
            _render_folder(env, template_dir, staged / "modules" / name, context)
        _fmt(staged, terraform or embedded_terraform())
        _replace_rendered(staged, target)
    return target


def _fmt(folder: Path, terraform: str) -> None:
    result = subprocess.run([terraform, "fmt", "-recursive", "-list=false", str(folder)], capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise RenderError(f"terraform fmt refused the rendered files (a template error):\n{result.stderr.strip()}")


def _replace_rendered(staged: Path, target: Path) -> None:
    """Replace the rendered files in target, keeping what Terraform keeps there (.terraform, state, lock file)."""
    keep = {".terraform", ".terraform.lock.hcl", "terraform.tfstate", "terraform.tfstate.backup"}
    if target.exists():
        for path in target.iterdir():
            if path.name in keep or path.name.endswith(".tfvars") or path.name.endswith(".tfvars.json"):
                continue
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(staged.iterdir()):
        dest = target / path.name
        shutil.copytree(path, dest) if path.is_dir() else shutil.copyfile(path, dest)


def rendered_files(folder: Path) -> dict[str, bytes]:
    """The files render writes, by path relative to the folder (what a committed folder is compared on)."""
    skip = {".terraform", ".terraform.lock.hcl", "terraform.tfstate", "terraform.tfstate.backup"}
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if rel.parts[0] in skip or path.is_dir() or path.name.endswith((".tfvars", ".tfvars.json")):
            continue
        out[str(rel)] = path.read_bytes()
    return out
