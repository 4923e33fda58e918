"""Terraform providers built with Go from the module proxy into a filesystem mirror, cached by version.

The module proxy serves few provider versions (checked 2026-11-26): of hashicorp/kubernetes only
v1.13.4 (2021, plugin SDK v1, protocol 5, which Terraform 1.15 still loads); of gavinbunney/kubectl
v1.19.0 (2025); of hashicorp/aws only v1.60.0 (2019, protocol 4, which no Terraform >= 0.12 loads);
of hashicorp/azurerm none. The generic and AKS roots need only the first two (the AKS root logs in
with the caller's kubeconfig); the EKS root is checked without the aws provider (see the README).

The mirror uses Terraform's unpacked layout, HOSTNAME/NAMESPACE/TYPE/VERSION/OS_ARCH/binary, and
`cli_config()` writes a CLI configuration that installs these providers from it and nothing else
from the network.
"""

from __future__ import annotations

import dataclasses
import os
import platform
from pathlib import Path

from ..dev.binaries import Progress, _build, _go_module, cache_root


@dataclasses.dataclass(frozen=True)
class ProviderSource:
    namespace: str
    type: str
    version: str  # without the leading v
    module: str
    package: str
    replaces: tuple[str, ...] = ()
    # Modules that appear only in the requirement graph of the provider's go.mod (its tests and tools), that
    # the module proxy no longer serves and that no package of the provider imports: an empty module stands in
    # for each, so that Go can load the graph. A package that did import one would fail the build.
    unserved: tuple[str, ...] = ()
    # The Go module version, where it is not v<version> (a pseudo-version of a branch).
    go_version: str = ""

    @property
    def address(self) -> str:
        return f"registry.terraform.io/{self.namespace}/{self.type}"


KUBERNETES = ProviderSource(
    namespace="hashicorp", type="kubernetes", version="1.13.4",
    module="github.com/hashicorp/terraform-provider-kubernetes",
    package="github.com/hashicorp/terraform-provider-kubernetes",
    # The provider's own go.mod `replace` lines (go build ignores them in a dependency, so ours repeats them),
    # less the two that point into its vendor folder.
    replaces=(
        "github.com/go-openapi/spec => github.com/go-openapi/spec v0.19.5",
        "k8s.io/cli-runtime => k8s.io/cli-runtime v0.19.1",
        "k8s.io/client-go => k8s.io/client-go v0.19.1",
        "github.com/Azure/go-autorest/autorest => github.com/tombuildsstuff/go-autorest/autorest "
        "v0.10.1-0.20200416184303-d4e299a3c04a",
        "github.com/moby/term => github.com/moby/term v0.0.0-20200507123241-dbdd9cc6608d",
        "golang.org/x/sys => golang.org/x/sys v0.0.0-20200826173525-f9321e4c35a6",
    ),
    unserved=("vbom.ml/util",),
)

KUBECTL = ProviderSource(
    namespace="gavinbunney", type="kubectl", version="1.19.0",
    module="github.com/gavinbunney/terraform-provider-kubectl",
    package="github.com/gavinbunney/terraform-provider-kubectl",
)

PROVIDERS: tuple[ProviderSource, ...] = (KUBERNETES, KUBECTL)


def _os_arch() -> str:
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)
    return f"{platform.system().lower()}_{arch}"


def mirror_root() -> Path:
    return cache_root() / "terraform" / "mirror"


def provider_dir(p: ProviderSource) -> Path:
    return mirror_root() / "registry.terraform.io" / p.namespace / p.type / p.version / _os_arch()


def binary_name(p: ProviderSource) -> str:
    return f"terraform-provider-{p.type}_v{p.version}"


def build_provider(p: ProviderSource, progress: Progress = print) -> Path:
    out_dir = provider_dir(p)
    binary = out_dir / binary_name(p)
    if os.access(binary, os.X_OK):
        return binary
    work = cache_root() / "src" / f"terraform-provider-{p.type}-v{p.version}"
    replaces = [f"\t{r}" for r in p.replaces]
    for module in p.unserved:
        stub = work / "unserved" / module.replace("/", "_")
        stub.mkdir(parents=True, exist_ok=True)
        (stub / "go.mod").write_text(f"module {module}\n")
        replaces.append(f"\t{module} => ./unserved/{module.replace('/', '_')}")
    _go_module(work, f"terraform-provider-{p.type}", f"{p.module} {p.go_version or 'v' + p.version}", replaces)
    _build(out_dir, {binary_name(p): p.package}, work, f"v{p.version}", progress)
    return binary


def ensure_providers(progress: Progress = print) -> Path:
    """Build what the mirror lacks; return the CLI configuration file."""
    for p in PROVIDERS:
        build_provider(p, progress)
    return cli_config()


def mirrored() -> list[ProviderSource]:
    return list(PROVIDERS)


def cli_config() -> Path:
    """A Terraform CLI configuration: the mirrored providers from the mirror, every other one from its registry."""
    path = cache_root() / "terraform" / "terraformrc"
    addresses = ", ".join(f'"{p.address}"' for p in mirrored())
    text = (
        "# Written by k8sgpu: providers built from source by `k8sgpu dev providers`.\n"
        "provider_installation {\n"
        "  filesystem_mirror {\n"
        f"    path    = \"{mirror_root()}\"\n"
        f"    include = [{addresses}]\n"
        "  }\n"
        "  direct {\n"
        f"    exclude = [{addresses}]\n"
        "  }\n"
        "}\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


def mirror_complete() -> bool:
    return all(os.access(provider_dir(p) / binary_name(p), os.X_OK) for p in PROVIDERS)
