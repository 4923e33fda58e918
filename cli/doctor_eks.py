"""`k8sgpu doctor --cloud eks`: what the EKS and IAM APIs say of a cluster and the node's role, before anything is
applied.

With boto3 (credentials from its usual chain): the cluster (DescribeCluster), its authentication mode and the route
that maps the node's IAM role to `system:node:<node>` — an access entry (DescribeAccessEntry) in the API modes, an
entry of the aws-auth ConfigMap in the ConfigMap modes, read with the Kubernetes API when `--kubeconfig` is given —
the role itself (IAM GetRole and its policies), where the cluster's API can be reached from, and the serving
certificate's signer. The runtime assumes the role with the node name as session name (runtime/eks.py); the mapping
is judged for exactly that session, through the same aws-auth matching as the dev ground's EKS authenticator.
"""

from __future__ import annotations

import fnmatch
import json
from typing import TYPE_CHECKING

import yaml
from botocore.exceptions import ClientError, NoCredentialsError, NoRegionError
from kubernetes import client as kube

from k8sgpu.cli.aws_auth import Unmapped, canonical_arn, identity_of, names
from k8sgpu.cli.doctor import FAIL, OK, SKIP, WARN, Finding, check_extra_rbac
from k8sgpu.runtime.certificates import signer_name
from k8sgpu.runtime.eks import ROLE_ARN, SESSION_NAME

if TYPE_CHECKING:
    import boto3

CHECKS = ("eks-cluster", "eks-authentication-mode", "eks-identity-mapping", "eks-role", "eks-endpoint",
          "eks-csr-signer")
CONFIG_MAP, API_AND_CONFIG_MAP, API = "CONFIG_MAP", "API_AND_CONFIG_MAP", "API"
NODE_GROUPS = ["system:bootstrappers", "system:nodes"]  # what module aws_auth writes
# AWS's answers to credentials it does not accept (EKS, IAM); anything else is about the resource asked for.
CREDENTIAL_ERRORS = {"UnrecognizedClientException", "InvalidClientTokenId", "ExpiredToken", "ExpiredTokenException",
                     "SignatureDoesNotMatch", "InvalidSignatureException", "AuthFailure"}


class AwsLoginError(Exception):
    """No AWS credentials or region were found, or AWS refused the credentials."""


def eks(session: boto3.Session, cluster: str, role_arn: str, node: str,
        kube_api: kube.ApiClient | None = None) -> list[Finding]:
    try:
        return _findings(session, cluster, role_arn, node, kube_api)
    except NoRegionError:
        raise AwsLoginError("no AWS region: give --region (or set AWS_REGION, or a region in the AWS profile)") \
            from None
    except NoCredentialsError:
        raise AwsLoginError("no AWS credentials found: set them as for any AWS tool (AWS_ACCESS_KEY_ID and "
                            "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, web identity, EKS Pod Identity, an instance "
                            "role)") from None
    except ClientError as exc:
        if _code(exc) in CREDENTIAL_ERRORS:
            raise AwsLoginError(f"AWS refused the credentials ({_aws_error(exc)}); check AWS_PROFILE or the "
                                "AWS_* variables") from None
        raise


def _findings(session: boto3.Session, name: str, role_arn: str, node: str,
              kube_api: kube.ApiClient | None) -> list[Finding]:
    eks_api, iam = session.client("eks"), session.client("iam")
    region = eks_api.meta.region_name
    role, principal = check_role(iam, role_arn, node)
    signer = check_csr_signer(node, kube_api)
    try:
        cluster = eks_api.describe_cluster(name=name)["cluster"]
    except ClientError as exc:
        if _code(exc) in CREDENTIAL_ERRORS:
            raise
        skipped = [Finding(check, SKIP, "the cluster could not be read") for check in CHECKS[1:3]]
        return [_unreadable(exc, name, region), *skipped, role, Finding(CHECKS[4], SKIP, "the cluster could not be "
                                                                                          "read"), signer]
    mode = (cluster.get("accessConfig") or {}).get("authenticationMode") or CONFIG_MAP
    if principal is None:
        mapping = Finding("eks-identity-mapping", SKIP, "the role's ARN is not valid (see eks-role)")
    else:
        mapping = check_identity_mapping(eks_api, cluster, mode, principal, node, kube_api, region)
    return [check_cluster(cluster, region), check_authentication_mode(cluster), mapping, role,
            check_endpoint(cluster, region), signer]


def _code(exc: ClientError) -> str:
    return exc.response.get("Error", {}).get("Code", "")


def _aws_error(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    return f"{error.get('Code', '?')}: {error.get('Message', '')}".rstrip(": ")


def _unreadable(exc: ClientError, name: str, region: str) -> Finding:
    if _code(exc) == "ResourceNotFoundException":
        return Finding("eks-cluster", FAIL, f"no EKS cluster {name} in {region} ({_aws_error(exc)})",
                       f"check --eks-cluster and --region; `aws eks list-clusters --region {region}` lists the "
                       "clusters these credentials can see")
    if _code(exc) in ("AccessDeniedException", "AccessDenied"):
        return Finding("eks-cluster", FAIL, f"may not read the cluster {name} ({_aws_error(exc)})",
                       "allow eks:DescribeCluster and eks:DescribeAccessEntry on the cluster to the identity that "
                       "runs doctor")
    return Finding("eks-cluster", FAIL, f"reading the cluster {name} failed ({_aws_error(exc)})",
                   "run again; with --debug the full error is shown")


def check_cluster(cluster: dict, region: str) -> Finding:
    status = cluster.get("status", "UNKNOWN")
    evidence = (f"{cluster['name']} in {region}: status {status}, Kubernetes {cluster.get('version', '?')}, "
                f"platform version {cluster.get('platformVersion', '?')}")
    if status == "ACTIVE":
        return Finding("eks-cluster", OK, evidence)
    if status in ("FAILED", "DELETING"):
        return Finding("eks-cluster", FAIL, evidence, "the cluster cannot take a node: use an ACTIVE cluster")
    return Finding("eks-cluster", WARN, evidence + " (an operation is running)",
                   f"wait until `aws eks describe-cluster --name {cluster['name']} --region {region} "
                   "--query cluster.status` says ACTIVE")


def check_authentication_mode(cluster: dict) -> Finding:
    reported = (cluster.get("accessConfig") or {}).get("authenticationMode")
    said = (f"authentication mode {reported}" if reported else
            "no accessConfig.authenticationMode in the cluster's description, which means CONFIG_MAP")
    routes = {
        CONFIG_MAP: "only the aws-auth ConfigMap maps IAM principals: the node's role needs a mapRoles entry "
                    "(the EKS root writes it, module aws_auth)",
        API_AND_CONFIG_MAP: "access entries and the aws-auth ConfigMap both map IAM principals, an access entry "
                            "taking precedence over an aws-auth entry of the same role: the node's role needs an "
                            "access entry of type HYBRID_LINUX or an aws-auth entry (the EKS root writes the "
                            "aws-auth entry, module aws_auth)",
        API: "only access entries map IAM principals: the node's role needs an access entry of type HYBRID_LINUX "
             "(the EKS root creates it)",
    }
    mode = reported or CONFIG_MAP
    if mode not in routes:
        return Finding("eks-authentication-mode", WARN, f"{said}, which doctor does not know",
                       "check how this mode maps IAM roles before installing")
    return Finding("eks-authentication-mode", OK, f"{said}: {routes[mode]}")


def _session_arn(role_arn: str, node: str) -> str:
    """The STS identity the runtime has: the role assumed with the node name as session name."""
    canonical, _ = canonical_arn(role_arn)
    partition, account = canonical.split(":")[1], canonical.split(":")[4]
    return f"arn:{partition}:sts::{account}:assumed-role/{canonical.rsplit('/', 1)[1]}/{node}"


def check_identity_mapping(eks_api, cluster: dict, mode: str, principal: str, node: str,
                           kube_api: kube.ApiClient | None, region: str) -> Finding:
    name = cluster["name"]
    prefix = ""
    if mode in (API, API_AND_CONFIG_MAP):
        try:
            entry = eks_api.describe_access_entry(clusterName=name, principalArn=principal)["accessEntry"]
        except ClientError as exc:
            if _code(exc) != "ResourceNotFoundException":
                return Finding("eks-identity-mapping", FAIL, f"cannot read the access entry of {principal} "
                                                             f"({_aws_error(exc)})",
                               "allow eks:DescribeAccessEntry on the cluster to the identity that runs doctor")
            entry = None
        if entry is not None:
            return judge_access_entry(entry, cluster, mode, node, region)
        create = (f"aws eks create-access-entry --cluster-name {name} --principal-arn {principal} "
                  f"--type HYBRID_LINUX --region {region}")
        if mode == API:
            return Finding("eks-identity-mapping", FAIL,
                           f"no access entry for {principal}: in mode API the role maps to no Kubernetes user, so "
                           "EKS refuses the runtime's tokens",
                           f"`make apply CLOUD=eks` creates a HYBRID_LINUX access entry for the role, or: {create}")
        prefix = f"no access entry for {principal}; "
    if kube_api is None:
        return Finding("eks-identity-mapping", SKIP,
                       f"{prefix}the aws-auth ConfigMap maps the role in mode {mode}, and reading it needs the "
                       "cluster's Kubernetes API: no --kubeconfig given",
                       f"aws eks update-kubeconfig --name {name} --region {region} --kubeconfig eks.kubeconfig, "
                       "then run doctor again with --kubeconfig eks.kubeconfig")
    try:
        aws_auth = kube.CoreV1Api(kube_api).read_namespaced_config_map("aws-auth", "kube-system")
    except kube.ApiException as exc:
        if exc.status == 404:
            return Finding("eks-identity-mapping", FAIL, f"{prefix}kube-system/aws-auth does not exist, so nothing "
                                                         "maps the role",
                           _aws_auth_fix(mode, principal, node, name, region))
        if exc.status == 403:
            return Finding("eks-identity-mapping", FAIL, f"{prefix}may not read kube-system/aws-auth "
                                                         f"({exc.status} {exc.reason})",
                           "give a kubeconfig whose user may get ConfigMaps in kube-system (a cluster admin)")
        raise
    finding = aws_auth_mapping(aws_auth.data or {}, principal, node)
    read_from = kube_api.configuration.host
    endpoint = cluster.get("endpoint", "")
    where = f"read from {read_from}" + ("" if read_from.rstrip("/").lower() == endpoint.rstrip("/").lower() else
                                        f", not the cluster's endpoint {endpoint}: check that --kubeconfig is this "
                                        "cluster's")
    fix = finding.fix and _aws_auth_fix(mode, principal, node, name, region, finding.fix)
    return Finding("eks-identity-mapping", finding.status, f"{prefix}{finding.evidence} ({where})", fix)


def _aws_auth_fix(mode: str, principal: str, node: str, name: str, region: str, what: str = "") -> str:
    canonical, _ = canonical_arn(principal)
    entry = f"{{rolearn: {canonical}, username: system:node:{node}, groups: [{', '.join(NODE_GROUPS)}]}}"
    fix = (f"{what + '; ' if what else ''}`make apply CLOUD=eks` writes the role's aws-auth entry (module aws_auth), "
           f"or add it by hand to kube-system/aws-auth mapRoles: {entry}")
    if mode == API_AND_CONFIG_MAP:
        fix += (f"; or create an access entry instead: aws eks create-access-entry --cluster-name {name} "
                f"--principal-arn {principal} --type HYBRID_LINUX --region {region}")
    return fix


def judge_access_entry(entry: dict, cluster: dict, mode: str, node: str, region: str) -> Finding:
    kind, principal = entry.get("type", "STANDARD"), entry["principalArn"]
    groups = entry.get("kubernetesGroups") or []
    described = (f"access entry of {principal}: type {kind}, username {entry.get('username') or '(none)'}, groups "
                 f"{', '.join(groups) or '(none)'}")
    if kind == "HYBRID_LINUX":
        evidence = (f"{described}; a HYBRID_LINUX entry maps the user system:node:{{{{SessionName}}}} in "
                    f"system:nodes, and the runtime's session is {node}, so it is system:node:{node}")
        if not cluster.get("remoteNetworkConfig"):
            evidence += ("; note: EKS documents HYBRID_LINUX for EKS Hybrid Nodes, and the cluster has no "
                         "remoteNetworkConfig — such an entry is unverified on a cluster without one "
                         "(modules/eks/README.md)")
        return Finding("eks-identity-mapping", OK, evidence)
    why = {
        "STANDARD": "STANDARD entries refuse usernames starting with system: and the group system:nodes, so this "
                    f"one cannot make the role system:node:{node}",
        "EC2_LINUX": "an EC2_LINUX entry's user is system:node:{{EC2PrivateDNSName}}, which resolves only for a "
                     f"session named after an EC2 instance id; the runtime's session is {node}",
    }.get(kind, f"a {kind} entry is for another kind of node and does not map the session {node} to "
                f"system:node:{node}")
    if mode == API_AND_CONFIG_MAP:
        why += "; it takes precedence over an aws-auth entry of the same role"
    name = cluster["name"]
    return Finding("eks-identity-mapping", FAIL, f"{described}: {why}",
                   "an entry's type cannot be changed: delete it (aws eks delete-access-entry --cluster-name "
                   f"{name} --principal-arn {principal} --region {region}) and create a HYBRID_LINUX one (aws eks "
                   f"create-access-entry --cluster-name {name} --principal-arn {principal} --type HYBRID_LINUX "
                   f"--region {region})" + (", or leave the role to its aws-auth entry" if mode == API_AND_CONFIG_MAP
                                            else ""))


def aws_auth_mapping(data: dict, role_arn: str, node: str) -> Finding:
    """Whether aws-auth's data maps the runtime's session of ``role_arn`` to system:node:<node> in system:nodes.

    The fix, where there is one, says only what is wrong with the entry; the caller adds how to write it."""
    canonical, _ = canonical_arn(role_arn)
    try:
        entries = yaml.safe_load(data.get("mapRoles") or "[]") or []
    except yaml.YAMLError as exc:
        entries = exc
    if not isinstance(entries, list):
        return Finding("eks-identity-mapping", FAIL, "kube-system/aws-auth mapRoles is not a YAML list",
                       "repair it by hand (kubectl -n kube-system edit configmap aws-auth), keeping others' entries")
    ours = [e for e in entries if isinstance(e, dict) and names(e.get("rolearn"), canonical)]
    if not ours:
        with_path = [e["rolearn"] for e in entries if isinstance(e, dict) and _names_role(e.get("rolearn"), canonical)]
        if with_path:
            return Finding("eks-identity-mapping", FAIL,
                           f"kube-system/aws-auth mapRoles names the role as {with_path[0]}, with a path: aws-auth "
                           f"matches role ARNs without path ({canonical}), so that entry maps nothing",
                           f"write the entry's rolearn as {canonical}")
        return Finding("eks-identity-mapping", FAIL,
                       f"kube-system/aws-auth mapRoles has no entry for {canonical} ({len(entries)} entries of "
                       "other roles)", "add the role's entry")
    template = str(ours[0].get("username") or "")
    if "{{EC2PrivateDNSName}}" in template:
        return Finding("eks-identity-mapping", FAIL,
                       f"kube-system/aws-auth maps {canonical} to {template}, which resolves only for a session "
                       f"named after an EC2 instance id; the runtime's session is {node}",
                       f"set the entry's username to system:node:{node}")
    account = canonical.split(":")[4]
    try:
        username, groups = identity_of({"data": {"mapRoles": yaml.safe_dump(ours)}}, _session_arn(role_arn, node),
                                       account, "")
    except Unmapped as exc:
        return Finding("eks-identity-mapping", FAIL, f"kube-system/aws-auth: {exc}",
                       f"set the entry's username to system:node:{node}")
    mapped = f"kube-system/aws-auth mapRoles maps {canonical} (username {template}) for session {node} to " \
             f"{username} in {', '.join(groups) or 'no group'}"
    if username != f"system:node:{node}":
        return Finding("eks-identity-mapping", FAIL, f"{mapped}, not system:node:{node}",
                       f"set the entry's username to system:node:{node}")
    if "system:nodes" not in groups:
        return Finding("eks-identity-mapping", FAIL, f"{mapped}: without system:nodes the Node authorizer does "
                                                     "not authorize it as a node",
                       f"set the entry's groups to {', '.join(NODE_GROUPS)}")
    return Finding("eks-identity-mapping", OK, mapped)


def _names_role(named, canonical: str) -> bool:
    try:
        return canonical_arn(str(named or ""))[0] == canonical
    except Unmapped:
        return False


def _trusted(document) -> list[str]:
    """Principals an assume-role policy lets assume the role (Allow statements only)."""
    if isinstance(document, str):
        document = json.loads(document)
    statements = document.get("Statement") or []
    principals = []
    for statement in statements if isinstance(statements, list) else [statements]:
        if statement.get("Effect") != "Allow":
            continue
        principal = statement.get("Principal") or {}
        if principal == "*":
            principals.append("*")
            continue
        for kind, values in principal.items():
            principals += [f"{kind} {v}" for v in (values if isinstance(values, list) else [values])]
    return principals


def _session_names(statement: dict) -> list[str] | None:
    """The session names an Allow statement's condition on sts:RoleSessionName permits (None: any)."""
    for operator, tests in (statement.get("Condition") or {}).items():
        if operator not in ("StringEquals", "StringLike"):
            continue
        for key, values in (tests or {}).items():
            if key.lower() == "sts:rolesessionname":
                return values if isinstance(values, list) else [values]
    return None


def session_findings(document, node: str) -> tuple[list[str], list[str], list[str]]:
    """(blocking, warnings, fixes) of the trust policy's conditions on the role session name: every principal may
    assume the role only as session <node>, because the HYBRID_LINUX access entry makes the session name the user."""
    if isinstance(document, str):
        document = json.loads(document)
    statements = document.get("Statement") or []
    blocking, warnings, fixes = [], [], []
    for statement in statements if isinstance(statements, list) else [statements]:
        if statement.get("Effect") != "Allow":
            continue
        who = ", ".join(_trusted({"Statement": [statement]})) or "nobody"
        names = _session_names(statement)
        if names is None:
            warnings.append(f"its trust policy lets {who} assume it with any session name: through an access entry "
                            "of type HYBRID_LINUX (user system:node:{{SessionName}}) they could act as any node")
            fixes.append(f"condition that statement on \"StringEquals\": {{\"sts:RoleSessionName\": \"{node}\"}} "
                         "(`make apply CLOUD=eks` writes it: module eks_trust)")
        elif not any(fnmatch.fnmatchcase(node, name) for name in names):
            blocking.append(f"its trust policy lets {who} assume it only as session {', '.join(names)}, and the "
                            f"runtime's session is the node name {node}")
            fixes.append(f"allow sts:RoleSessionName {node} (`make apply CLOUD=eks` with node_name = \"{node}\")")
    return blocking, warnings, fixes


def check_role(iam, role_arn: str, node: str) -> tuple[Finding, str | None]:
    """The eks-role finding and the role's ARN as IAM has it (None when --eks-role-arn is no role ARN)."""
    if not ROLE_ARN.match(role_arn):
        return Finding("eks-role", FAIL, f"--eks-role-arn {role_arn} is not an IAM role ARN",
                       "give the role's ARN, e.g. arn:aws:iam::123456789012:role/k8sgpu-node (Terraform output "
                       "role_arn)"), None
    blocking, warnings, fixes = [], [], []
    if not SESSION_NAME.match(node):
        blocking.append(f"the node name {node} ({len(node)} characters) cannot be the role session's name, which "
                        "the runtime sets to it (STS: 2 to 64 of letters, digits and +=,.@_-)")
        fixes.append("choose a node name of at most 64 characters (--node-name and the root's node_name)")
    name = role_arn.rsplit("/", 1)[1]
    try:
        role = iam.get_role(RoleName=name)["Role"]
    except ClientError as exc:
        if _code(exc) in CREDENTIAL_ERRORS:
            raise
        if _code(exc) == "NoSuchEntity":
            blocking.insert(0, f"no IAM role {name} in this account ({_aws_error(exc)})")
            fixes.insert(0, "`make apply CLOUD=eks` creates it (variable role_name, default k8sgpu-node), or check "
                            "--eks-role-arn")
            return Finding("eks-role", FAIL, "; ".join(blocking), "; ".join(fixes)), role_arn
        warnings.append(f"may not read the role {name} ({_aws_error(exc)})")
        fixes.append("allow iam:GetRole, iam:ListAttachedRolePolicies and iam:ListRolePolicies on it to the "
                     "identity that runs doctor")
        status = FAIL if blocking else WARN
        return Finding("eks-role", status, "; ".join(blocking + warnings), "; ".join(fixes)), role_arn
    arn = role["Arn"]
    facts = [f"{arn} exists"]
    if arn != role_arn:
        warnings.append(f"IAM's ARN of the role is {arn}, not {role_arn}")
        fixes.append(f"give k8sgpu-runtime --eks-role-arn {arn}")
    attached = [p["PolicyArn"] for p in iam.get_paginator("list_attached_role_policies").paginate(
        RoleName=name).build_full_result().get("AttachedPolicies", [])]
    inline = iam.get_paginator("list_role_policies").paginate(RoleName=name).build_full_result().get(
        "PolicyNames", [])
    if attached or inline:
        warnings.append("it has permission policies (attached: " + (", ".join(attached) or "none") + "; inline: "
                        + (", ".join(inline) or "none") + "), yet it needs no permission: the runtime only presigns "
                        "sts:GetCallerIdentity, which needs none, and whoever may assume the role gets them too")
        fixes.append("; ".join([f"aws iam detach-role-policy --role-name {name} --policy-arn {p}" for p in attached]
                               + [f"aws iam delete-role-policy --role-name {name} --policy-name {p}" for p in inline]))
    else:
        facts.append("no permission policy (none is needed: the runtime only presigns sts:GetCallerIdentity)")
    document = role.get("AssumeRolePolicyDocument") or {}
    trusted = _trusted(document)
    if trusted:
        facts.append(f"its trust policy lets {', '.join(trusted)} assume it")
        session_blocking, session_warnings, session_fixes = session_findings(document, node)
        blocking += session_blocking
        warnings += session_warnings
        fixes += session_fixes
    else:
        blocking.append("its trust policy lets nobody assume it")
        fixes.append("name the identity the runtime starts as in the trust policy (the EKS root's variable trust, "
                     "module eks_trust)")
    if not blocking:
        facts.append(f"the runtime assumes it as session {node}, i.e. {_session_arn(arn, node)}")
    status = FAIL if blocking else WARN if warnings else OK
    return Finding("eks-role", status, "; ".join(blocking + warnings + facts), "; ".join(fixes)), arn


def check_endpoint(cluster: dict, region: str) -> Finding:
    vpc = cluster.get("resourcesVpcConfig") or {}
    public, private = vpc.get("endpointPublicAccess", True), vpc.get("endpointPrivateAccess", False)
    cidrs = vpc.get("publicAccessCidrs") or ["0.0.0.0/0"]
    endpoint, name = cluster.get("endpoint", "?"), cluster["name"]
    vpc_id = vpc.get("vpcId") or "(no id given)"
    reach = "Terraform (`k8sgpu apply`), kubectl and a runtime started outside the cluster must reach it"
    in_vpc = f"; a private endpoint in the cluster's VPC {vpc_id}" if private else ""
    if not public:
        return Finding("eks-endpoint", WARN,
                       f"public endpoint disabled: the API {endpoint} is reachable only from the cluster's VPC "
                       f"{vpc_id} and networks connected to it; {reach}",
                       "run them in the VPC or a network connected to it (peering, VPN, Direct Connect, a bastion), "
                       f"or open the public endpoint: aws eks update-cluster-config --name {name} --region {region} "
                       "--resources-vpc-config endpointPublicAccess=true,publicAccessCidrs=\"<your IP>/32\"")
    if cidrs != ["0.0.0.0/0"]:
        listed = ",".join(f'"{c}"' for c in cidrs)
        return Finding("eks-endpoint", WARN,
                       f"public endpoint {endpoint} open only to {', '.join(cidrs)}{in_vpc}; {reach}, from an "
                       "address in those ranges",
                       "run from an address in those ranges, or add yours: aws eks update-cluster-config --name "
                       f"{name} --region {region} --resources-vpc-config publicAccessCidrs={listed},\"<your IP>/32\"")
    return Finding("eks-endpoint", OK, f"public endpoint {endpoint} open to any address (0.0.0.0/0){in_vpc}")


def check_csr_signer(node: str, kube_api: kube.ApiClient | None) -> Finding:
    signer = signer_name("aws")
    fact = (f"EKS signs kubelet serving certificates with {signer}: give k8sgpu-runtime --csr-signer aws (the EKS "
            "root sets csr_signer = \"aws\"); EKS does not auto-approve them, so the runtime approves its own CSR "
            "with the node module's ClusterRole k8sgpu-runtime")
    if kube_api is None:
        return Finding("eks-csr-signer", OK, f"{fact}; with --kubeconfig doctor checks that rule too, and "
                                             "`k8sgpu doctor --cloud generic --csr-signer aws` sees the signer sign")
    rbac = check_extra_rbac(kube_api, node, signer)
    if rbac.status == FAIL:
        return Finding("eks-csr-signer", FAIL, f"{fact}; {rbac.evidence}",
                       "`make apply CLOUD=eks` applies the node module, which grants it (rules in the README)")
    return Finding("eks-csr-signer", OK, f"{fact}; {rbac.evidence}")
