"""`k8sgpu doctor --cloud eks` against moto, with what moto lacks answered at the SDK's HTTP boundary.

No Kubernetes here: the ConfigMap modes' aws-auth route is proven on the dev ground (tests/e2e/test_doctor_eks.py).
The doctor runs through the CLI entry: `main([...], aws_session=...)`, or as a subprocess with AWS_ENDPOINT_URL.

Answered by moto_server 5.2.5 on loopback (its real HTTP API): IAM GetRole, ListAttachedRolePolicies,
ListRolePolicies; EKS DescribeCluster (status, version, platform version, endpoint, resourcesVpcConfig) and its
ResourceNotFoundException for a missing cluster. moto has no `accessConfig` in DescribeCluster (it accepts the
parameter on CreateCluster and drops it) and no access entries (404 for DescribeAccessEntry, checked in
`test_moto_still_lacks_access_config_and_access_entries`); LocalStack's EKS answers 501 outside its paid tier. So
no emulator covers the modes API and API_AND_CONFIG_MAP: for those, a botocore `before-send` handler
(tests/conftest.py RecordedEks) adds `accessConfig.authenticationMode` to moto's DescribeCluster JSON and answers
DescribeAccessEntry itself in the EKS REST API's shape (200 with `accessEntry`, or 404 ResourceNotFoundException).
Every test asserts which calls went where.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import urllib.request

import boto3
import pytest
import urllib3
import yaml
from botocore.awsrequest import AWSResponse

from k8sgpu.cli.doctor import FAIL, OK, WARN
from k8sgpu.cli.doctor_eks import aws_auth_mapping
from k8sgpu.cli.main import main

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's account
CLUSTER = "gpu-eks"
ROLE = "k8sgpu-node"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/{ROLE}"
NODE = "k8s.gpu"
TRUST = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}, "Action": "sts:AssumeRole",
     "Condition": {"StringEquals": {"sts:RoleSessionName": NODE}}}]}
CHECKS = ["eks-cluster", "eks-authentication-mode", "eks-identity-mapping", "eks-role", "eks-endpoint",
          "eks-csr-signer"]
KEY, SECRET = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def aws(moto: str, service: str):
    return boto3.client(service, region_name=REGION, endpoint_url=moto, aws_access_key_id=KEY,
                        aws_secret_access_key=SECRET)


@pytest.fixture
def moto(moto_endpoint) -> str:
    """moto emptied, then the node's role (no policy) and an ACTIVE cluster with a public endpoint open to all."""
    urllib.request.urlopen(urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST")).close()
    aws(moto_endpoint, "iam").create_role(RoleName=ROLE, AssumeRolePolicyDocument=json.dumps(TRUST))
    create_cluster(moto_endpoint, CLUSTER)
    return moto_endpoint


def create_cluster(moto: str, name: str, **vpc) -> None:
    aws(moto, "eks").create_cluster(
        name=name, version="1.31", roleArn=f"arn:aws:iam::{ACCOUNT}:role/eks-cluster",
        resourcesVpcConfig={"subnetIds": ["subnet-0a1b2c3d"], "endpointPublicAccess": True,
                            "endpointPrivateAccess": False, "publicAccessCidrs": ["0.0.0.0/0"], **vpc})


def doctor(recorded, *args: str, capsys) -> tuple[int, dict]:
    code = main(["doctor", "--cloud", "eks", "--eks-cluster", CLUSTER, "--eks-role-arn", ROLE_ARN, "--region",
                 REGION, "-o", "json", *args], aws_session=recorded.session)
    findings = json.loads(capsys.readouterr().out)
    assert [f["check"] for f in findings] == CHECKS
    return code, {f["check"]: f for f in findings}


def statuses(found: dict) -> dict:
    return {check: f["status"] for check, f in found.items()}


def test_moto_still_lacks_access_config_and_access_entries(moto):
    """Why the recorded responses exist: if moto learns these, the tests should use it instead."""
    eks = aws(moto, "eks")
    eks.create_cluster(name="api-mode", roleArn=f"arn:aws:iam::{ACCOUNT}:role/eks-cluster",
                       resourcesVpcConfig={"subnetIds": ["subnet-0a1b2c3d"]},
                       accessConfig={"authenticationMode": "API"})
    assert "accessConfig" not in eks.describe_cluster(name="api-mode")["cluster"]
    with pytest.raises(eks.exceptions.ClientError) as caught:
        eks.describe_access_entry(clusterName="api-mode", principalArn=ROLE_ARN)
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert caught.value.response["Error"]["Code"] == "404"  # Flask's page, not EKS's ResourceNotFoundException


def test_a_config_map_cluster_as_moto_describes_it_needs_a_kubeconfig_for_aws_auth(moto, recorded_eks, capsys):
    recorded = recorded_eks(moto)
    code, found = doctor(recorded, capsys=capsys)
    assert code == 0
    assert statuses(found) == {"eks-cluster": OK, "eks-authentication-mode": OK, "eks-identity-mapping": "skip",
                               "eks-role": OK, "eks-endpoint": OK, "eks-csr-signer": OK}
    assert found["eks-cluster"]["evidence"] == (f"{CLUSTER} in {REGION}: status ACTIVE, Kubernetes 1.31, platform "
                                                "version eks.4")
    assert found["eks-authentication-mode"]["evidence"].startswith(
        "no accessConfig.authenticationMode in the cluster's description, which means CONFIG_MAP: only the aws-auth "
        "ConfigMap maps IAM principals")
    mapping = found["eks-identity-mapping"]
    assert "the aws-auth ConfigMap maps the role in mode CONFIG_MAP" in mapping["evidence"]
    assert "no --kubeconfig given" in mapping["evidence"]
    assert mapping["fix"] == (f"aws eks update-kubeconfig --name {CLUSTER} --region {REGION} --kubeconfig "
                              "eks.kubeconfig, then run doctor again with --kubeconfig eks.kubeconfig")
    role = found["eks-role"]["evidence"]
    assert role.startswith(f"{ROLE_ARN} exists; no permission policy (none is needed")
    assert f"its trust policy lets AWS arn:aws:iam::{ACCOUNT}:root assume it" in role
    assert role.endswith(f"the runtime assumes it as session {NODE}, i.e. "
                         f"arn:aws:sts::{ACCOUNT}:assumed-role/{ROLE}/{NODE}")
    assert found["eks-endpoint"]["evidence"].startswith("public endpoint https://")
    assert found["eks-endpoint"]["evidence"].endswith("open to any address (0.0.0.0/0)")
    signer = found["eks-csr-signer"]["evidence"]
    assert signer.startswith("EKS signs kubelet serving certificates with beta.eks.amazonaws.com/app-serving: give "
                             "k8sgpu-runtime --csr-signer aws")
    assert "`k8sgpu doctor --cloud generic --csr-signer aws`" in signer
    assert [f["fix"] for c, f in found.items() if c != "eks-identity-mapping"] == [""] * 5
    # No access entry is asked for in CONFIG_MAP mode; everything went to moto.
    assert recorded.seen == [("GetRole", "moto"), ("ListAttachedRolePolicies", "moto"),
                             ("ListRolePolicies", "moto"), ("DescribeCluster", "moto")]


def test_api_mode_with_a_hybrid_linux_entry_passes(moto, recorded_eks, capsys):
    recorded = recorded_eks(moto, "API", {ROLE_ARN: "HYBRID_LINUX"})
    code, found = doctor(recorded, capsys=capsys)
    assert code == 0
    assert found["eks-authentication-mode"]["evidence"].startswith(
        "authentication mode API: only access entries map IAM principals: the node's role needs an access entry of "
        "type HYBRID_LINUX")
    mapping = found["eks-identity-mapping"]
    assert mapping["status"] == OK and mapping["fix"] == ""
    assert mapping["evidence"].startswith(
        f"access entry of {ROLE_ARN}: type HYBRID_LINUX, username system:node:{{{{SessionName}}}}, groups (none); a "
        "HYBRID_LINUX entry maps the user system:node:{{SessionName}} in system:nodes, and the runtime's session is "
        f"{NODE}, so it is system:node:{NODE}")
    assert "the cluster has no remoteNetworkConfig" in mapping["evidence"]
    assert recorded.seen[-2:] == [("DescribeCluster", "moto + recorded accessConfig"),
                                  ("DescribeAccessEntry", "recorded")]


def test_api_mode_with_a_standard_entry_fails_with_why_and_fix(moto, recorded_eks, capsys):
    code, found = doctor(recorded_eks(moto, "API", {ROLE_ARN: "STANDARD"}), capsys=capsys)
    assert code == 1
    mapping = found["eks-identity-mapping"]
    assert mapping["status"] == FAIL
    assert mapping["evidence"] == (
        f"access entry of {ROLE_ARN}: type STANDARD, username arn:aws:sts::{ACCOUNT}:assumed-role/{ROLE}/"
        "{{SessionName}}, groups (none): STANDARD entries refuse usernames starting with system: and the group "
        f"system:nodes, so this one cannot make the role system:node:{NODE}")
    assert mapping["fix"] == (
        f"an entry's type cannot be changed: delete it (aws eks delete-access-entry --cluster-name {CLUSTER} "
        f"--principal-arn {ROLE_ARN} --region {REGION}) and create a HYBRID_LINUX one (aws eks create-access-entry "
        f"--cluster-name {CLUSTER} --principal-arn {ROLE_ARN} --type HYBRID_LINUX --region {REGION})")
    assert {c: s for c, s in statuses(found).items() if s != OK} == {"eks-identity-mapping": FAIL}


def test_api_mode_with_an_ec2_linux_entry_fails(moto, recorded_eks, capsys):
    code, found = doctor(recorded_eks(moto, "API", {ROLE_ARN: "EC2_LINUX"}), capsys=capsys)
    assert code == 1
    mapping = found["eks-identity-mapping"]
    assert mapping["status"] == FAIL
    assert ("an EC2_LINUX entry's user is system:node:{{EC2PrivateDNSName}}, which resolves only for a session "
            f"named after an EC2 instance id; the runtime's session is {NODE}") in mapping["evidence"]
    assert "create a HYBRID_LINUX one" in mapping["fix"]


def test_api_mode_without_an_entry_fails_with_the_fix(moto, recorded_eks, capsys):
    recorded = recorded_eks(moto, "API", {f"arn:aws:iam::{ACCOUNT}:role/someone-else": "STANDARD"})
    code, found = doctor(recorded, capsys=capsys)
    assert code == 1
    mapping = found["eks-identity-mapping"]
    assert mapping["status"] == FAIL
    assert mapping["evidence"] == (f"no access entry for {ROLE_ARN}: in mode API the role maps to no Kubernetes "
                                   "user, so EKS refuses the runtime's tokens")
    assert mapping["fix"] == (f"`make apply CLOUD=eks` creates a HYBRID_LINUX access entry for the role, or: aws eks "
                              f"create-access-entry --cluster-name {CLUSTER} --principal-arn {ROLE_ARN} --type "
                              f"HYBRID_LINUX --region {REGION}")
    assert ("DescribeAccessEntry", "recorded") in recorded.seen


def test_api_and_config_map_with_an_access_entry_needs_no_kubeconfig(moto, recorded_eks, capsys):
    code, found = doctor(recorded_eks(moto, "API_AND_CONFIG_MAP", {ROLE_ARN: "HYBRID_LINUX"}), capsys=capsys)
    assert code == 0
    assert "an access entry taking precedence over an aws-auth entry" in found["eks-authentication-mode"]["evidence"]
    assert found["eks-identity-mapping"]["status"] == OK
    assert found["eks-identity-mapping"]["evidence"].startswith(f"access entry of {ROLE_ARN}: type HYBRID_LINUX")


def test_api_and_config_map_a_standard_entry_shadows_aws_auth(moto, recorded_eks, capsys):
    code, found = doctor(recorded_eks(moto, "API_AND_CONFIG_MAP", {ROLE_ARN: "STANDARD"}), capsys=capsys)
    assert code == 1
    mapping = found["eks-identity-mapping"]
    assert mapping["evidence"].endswith("; it takes precedence over an aws-auth entry of the same role")
    assert mapping["fix"].endswith("--type HYBRID_LINUX --region us-east-1), or leave the role to its aws-auth entry")


def test_api_and_config_map_without_an_entry_or_kubeconfig_says_what_it_could_not_see(moto, recorded_eks, capsys):
    code, found = doctor(recorded_eks(moto, "API_AND_CONFIG_MAP"), capsys=capsys)
    assert code == 0
    mapping = found["eks-identity-mapping"]
    assert mapping["status"] == "skip"
    assert mapping["evidence"].startswith(f"no access entry for {ROLE_ARN}; the aws-auth ConfigMap maps the role in "
                                          "mode API_AND_CONFIG_MAP")
    assert mapping["fix"].startswith(f"aws eks update-kubeconfig --name {CLUSTER}")


def test_a_missing_cluster_fails_naming_the_flags_and_still_checks_the_role(moto, recorded_eks, capsys):
    recorded = recorded_eks(moto, "API")
    code = main(["doctor", "--cloud", "eks", "--eks-cluster", "nope", "--eks-role-arn", ROLE_ARN, "--region", REGION,
                 "-o", "json"], aws_session=recorded.session)
    found = {f["check"]: f for f in json.loads(capsys.readouterr().out)}
    assert code == 1
    assert statuses(found) == {"eks-cluster": FAIL, "eks-authentication-mode": "skip", "eks-identity-mapping": "skip",
                               "eks-role": OK, "eks-endpoint": "skip", "eks-csr-signer": OK}
    assert found["eks-cluster"]["evidence"] == (f"no EKS cluster nope in {REGION} (ResourceNotFoundException: No "
                                                "cluster found for name: nope.)")
    assert found["eks-cluster"]["fix"] == (f"check --eks-cluster and --region; `aws eks list-clusters --region "
                                           f"{REGION}` lists the clusters these credentials can see")
    # moto's own 404 came through the handler untouched.
    assert recorded.seen[-1] == ("DescribeCluster", "moto + recorded accessConfig")


def test_a_role_with_policies_warns_that_it_needs_none(moto, recorded_eks, capsys):
    iam = aws(moto, "iam")
    policy = iam.create_policy(PolicyName="s3-read", PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]}))["Policy"]["Arn"]
    iam.attach_role_policy(RoleName=ROLE, PolicyArn=policy)
    iam.put_role_policy(RoleName=ROLE, PolicyName="extra", PolicyDocument=json.dumps({"Version": "2012-10-17",
                        "Statement": [{"Effect": "Allow", "Action": "ec2:Describe*", "Resource": "*"}]}))
    code, found = doctor(recorded_eks(moto, "API", {ROLE_ARN: "HYBRID_LINUX"}), capsys=capsys)
    assert code == 0  # a warning does not block
    role = found["eks-role"]
    assert role["status"] == WARN
    assert role["evidence"].startswith(
        f"it has permission policies (attached: {policy}; inline: extra), yet it needs no permission: the runtime "
        "only presigns sts:GetCallerIdentity, which needs none")
    assert role["fix"] == (f"aws iam detach-role-policy --role-name {ROLE} --policy-arn {policy}; aws iam "
                           f"delete-role-policy --role-name {ROLE} --policy-name extra")


def test_a_node_name_too_long_for_a_session_name_fails(moto, recorded_eks, capsys):
    node = "gpu-" + "a" * 61 + ".example"  # 73 characters: a valid node name, not a session name
    code, found = doctor(recorded_eks(moto, "API", {ROLE_ARN: "HYBRID_LINUX"}), "--node-name", node, capsys=capsys)
    assert code == 1
    role = found["eks-role"]
    assert role["status"] == FAIL
    assert role["evidence"].startswith(f"the node name {node} (73 characters) cannot be the role session's name, "
                                       "which the runtime sets to it (STS: 2 to 64 of letters")
    assert role["fix"].startswith("choose a node name of at most 64 characters (--node-name and the root's node_name)")


def test_a_role_with_only_an_inline_policy_warns_too(moto, recorded_eks, capsys):
    aws(moto, "iam").put_role_policy(RoleName=ROLE, PolicyName="extra", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "ec2:Describe*", "Resource": "*"}]}))
    code, found = doctor(recorded_eks(moto), capsys=capsys)
    assert found["eks-role"]["status"] == WARN
    assert found["eks-role"]["evidence"].startswith("it has permission policies (attached: none; inline: extra)")
    assert found["eks-role"]["fix"] == f"aws iam delete-role-policy --role-name {ROLE} --policy-name extra"


def test_a_missing_role_fails(moto, recorded_eks, capsys):
    aws(moto, "iam").delete_role(RoleName=ROLE)
    code, found = doctor(recorded_eks(moto, "API", {ROLE_ARN: "HYBRID_LINUX"}), capsys=capsys)
    assert code == 1
    assert found["eks-role"]["status"] == FAIL
    assert found["eks-role"]["evidence"].startswith(f"no IAM role {ROLE} in this account (NoSuchEntity:")
    assert found["eks-role"]["fix"].startswith("`make apply CLOUD=eks` creates it (variable role_name")


def test_a_role_with_a_path_is_looked_up_by_its_real_arn(moto, recorded_eks, capsys):
    iam = aws(moto, "iam")
    iam.delete_role(RoleName=ROLE)
    with_path = iam.create_role(RoleName=ROLE, Path="/gpu/", AssumeRolePolicyDocument=json.dumps(TRUST))["Role"]["Arn"]
    code, found = doctor(recorded_eks(moto, "API", {with_path: "HYBRID_LINUX"}), capsys=capsys)
    assert code == 0
    assert found["eks-role"]["status"] == WARN
    assert found["eks-role"]["evidence"].startswith(f"IAM's ARN of the role is {with_path}, not {ROLE_ARN}")
    assert found["eks-role"]["fix"] == f"give k8sgpu-runtime --eks-role-arn {with_path}"
    assert found["eks-identity-mapping"]["status"] == OK  # the access entry is the path's


@pytest.mark.parametrize("vpc, evidence, fix", [
    ({"endpointPublicAccess": False, "endpointPrivateAccess": True, "publicAccessCidrs": []},
     "public endpoint disabled: the API https://", "run them in the VPC or a network connected to it"),
    ({"publicAccessCidrs": ["203.0.113.0/24", "198.51.100.7/32"], "endpointPrivateAccess": True},
     "open only to 203.0.113.0/24, 198.51.100.7/32; a private endpoint in the cluster's VPC",
     f"--name {CLUSTER} --region {REGION} --resources-vpc-config "
     'publicAccessCidrs="203.0.113.0/24","198.51.100.7/32","<your IP>/32"'),
])
def test_a_restricted_endpoint_warns_where_to_run_from(moto, recorded_eks, capsys, vpc, evidence, fix):
    aws(moto, "eks").delete_cluster(name=CLUSTER)
    create_cluster(moto, CLUSTER, **vpc)
    code, found = doctor(recorded_eks(moto), capsys=capsys)
    endpoint = found["eks-endpoint"]
    assert code == 0 and endpoint["status"] == WARN
    assert evidence in endpoint["evidence"]
    assert "Terraform (`k8sgpu apply`), kubectl and a runtime started outside the cluster must reach it" in \
        endpoint["evidence"]
    assert fix in endpoint["fix"]


def cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "k8sgpu.cli.main", "doctor", "--cloud", "eks", *args],
                          capture_output=True, text=True, timeout=120, env=env)


def bare_env(**extra: str) -> dict:
    """No AWS configuration of this machine: no AWS_* variable, no profile files, no instance metadata."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "KUBECONFIG"}
    return {**env, "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
            "AWS_EC2_METADATA_DISABLED": "true", **extra}


def test_the_command_finds_credentials_and_endpoint_as_any_aws_tool(moto):
    env = bare_env(AWS_ENDPOINT_URL=moto, AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET, AWS_REGION=REGION)
    run = cli("--eks-cluster", CLUSTER, "--eks-role-arn", ROLE_ARN, "-o", "json", env=env)
    assert run.returncode == 0, run.stderr
    found = {f["check"]: f for f in json.loads(run.stdout)}
    assert found["eks-cluster"]["evidence"].startswith(f"{CLUSTER} in {REGION}: status ACTIVE")
    table = cli("--eks-cluster", "nope", "--eks-role-arn", ROLE_ARN, env=env)
    assert table.returncode == 1
    assert f"FAIL  eks-cluster             no EKS cluster nope in {REGION}" in table.stdout
    assert "SKIP  eks-authentication-mode the cluster could not be read" in table.stdout


@pytest.mark.parametrize("env, message", [
    ({"AWS_REGION": REGION}, "error: no AWS credentials found: set them as for any AWS tool (AWS_ACCESS_KEY_ID"),
    ({"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET}, "error: no AWS region: give --region (or set "
                                                                  "AWS_REGION"),
])
def test_no_credentials_or_region_is_one_line_naming_what_to_set(env, message):
    run = cli("--eks-cluster", CLUSTER, "--eks-role-arn", ROLE_ARN, env=bare_env(**env))
    assert run.returncode == 1
    assert run.stdout == ""
    assert run.stderr.startswith(message) and run.stderr.count("\n") == 1
    assert "Traceback" not in run.stderr


def test_refused_credentials_are_one_line(moto, recorded_eks, capsys):
    """AWS's answer to unknown keys (moto checks no key, so the calls are answered here); IAM is asked first."""
    recorded = recorded_eks(moto)
    recorded.before_send = refuse_credentials
    code = main(["doctor", "--cloud", "eks", "--eks-cluster", CLUSTER, "--eks-role-arn", ROLE_ARN, "--region", REGION],
                aws_session=recorded.session)
    err = capsys.readouterr().err
    assert code == 1
    assert err == ("error: AWS refused the credentials (InvalidClientTokenId: The security token included in the "
                   "request is invalid.); check AWS_PROFILE or the AWS_* variables\n")


def refuse_credentials(request, event_name: str, **kwargs) -> AWSResponse:
    """IAM's (query protocol, XML) and EKS's (REST-JSON) answer to an access key they do not know."""
    message = "The security token included in the request is invalid."
    if event_name.startswith("before-send.iam."):
        body = (f'<ErrorResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/"><Error><Type>Sender</Type>'
                f"<Code>InvalidClientTokenId</Code><Message>{message}</Message></Error>"
                "<RequestId>4c3b2a10-0f1e-4d2c-8b7a-69584736251a</RequestId></ErrorResponse>").encode()
        headers = {"Content-Type": "text/xml"}
    else:
        body = json.dumps({"message": message}).encode()
        headers = {"x-amzn-ErrorType": "UnrecognizedClientException", "Content-Type": "application/json"}
    raw = urllib3.HTTPResponse(body=io.BytesIO(body), headers=headers, status=403, preload_content=False)
    return AWSResponse(request.url, 403, headers, raw)


@pytest.mark.parametrize("missing", ["--eks-cluster", "--eks-role-arn"])
def test_a_missing_flag_is_a_usage_error_naming_it(missing, capsys, recorded_eks):
    args = {"--eks-cluster": CLUSTER, "--eks-role-arn": ROLE_ARN}
    args.pop(missing)
    with pytest.raises(SystemExit) as exited:
        main(["doctor", "--cloud", "eks", *[x for kv in args.items() for x in kv]],
             aws_session=recorded_eks("http://127.0.0.1:9").session)
    assert exited.value.code == 2
    assert f"--cloud eks needs {missing}" in capsys.readouterr().err


# The aws-auth judgement on ConfigMap data, as module aws_auth writes it and as others write it by hand.

OURS = {"rolearn": ROLE_ARN, "username": f"system:node:{NODE}", "groups": ["system:bootstrappers", "system:nodes"]}
NODE_GROUP = {"rolearn": f"arn:aws:iam::{ACCOUNT}:role/eks-node-group", "username": "system:node:{{EC2PrivateDNSName}}",
              "groups": ["system:bootstrappers", "system:nodes"]}


def judged(*entries: dict, role_arn: str = ROLE_ARN, node: str = NODE):
    return aws_auth_mapping({"mapRoles": yaml.safe_dump(list(entries))}, role_arn, node)


def test_aws_auth_entry_of_the_module_maps_the_node():
    found = judged(NODE_GROUP, OURS)
    assert found.status == OK and found.fix == ""
    assert found.evidence == (f"kube-system/aws-auth mapRoles maps {ROLE_ARN} (username system:node:{NODE}) for "
                              f"session {NODE} to system:node:{NODE} in system:bootstrappers, system:nodes")


def test_aws_auth_session_name_template_gives_the_node_and_a_role_path_is_dropped():
    found = judged({**OURS, "username": "system:node:{{SessionName}}"}, role_arn=f"arn:aws:iam::{ACCOUNT}:role/gpu/"
                                                                               f"{ROLE}")
    assert found.status == OK
    assert f"(username system:node:{{{{SessionName}}}}) for session {NODE} to system:node:{NODE}" in found.evidence


@pytest.mark.parametrize("entries, evidence, fix", [
    ([NODE_GROUP], f"kube-system/aws-auth mapRoles has no entry for {ROLE_ARN} (1 entries of other roles)",
     "add the role's entry"),
    ([{**OURS, "rolearn": f"arn:aws:iam::{ACCOUNT}:role/gpu/{ROLE}"}],
     f"kube-system/aws-auth mapRoles names the role as arn:aws:iam::{ACCOUNT}:role/gpu/{ROLE}, with a path: aws-auth "
     f"matches role ARNs without path ({ROLE_ARN}), so that entry maps nothing", f"write the entry's rolearn as "
                                                                                 f"{ROLE_ARN}"),
    ([{**OURS, "username": "system:node:{{EC2PrivateDNSName}}"}],
     f"kube-system/aws-auth maps {ROLE_ARN} to system:node:{{{{EC2PrivateDNSName}}}}, which resolves only for a "
     f"session named after an EC2 instance id; the runtime's session is {NODE}",
     f"set the entry's username to system:node:{NODE}"),
    ([{**OURS, "username": "system:node:other.gpu"}],
     f"kube-system/aws-auth mapRoles maps {ROLE_ARN} (username system:node:other.gpu) for session {NODE} to "
     "system:node:other.gpu in system:bootstrappers, system:nodes, not system:node:k8s.gpu",
     f"set the entry's username to system:node:{NODE}"),
    ([{**OURS, "groups": ["system:bootstrappers"]}],
     f"kube-system/aws-auth mapRoles maps {ROLE_ARN} (username system:node:{NODE}) for session {NODE} to "
     f"system:node:{NODE} in system:bootstrappers: without system:nodes the Node authorizer does not authorize it "
     "as a node", "set the entry's groups to system:bootstrappers, system:nodes"),
    ([{"rolearn": ROLE_ARN}], f"kube-system/aws-auth: the aws-auth entry of {ROLE_ARN} has no username",
     f"set the entry's username to system:node:{NODE}"),
])
def test_aws_auth_entries_that_do_not_make_the_node(entries, evidence, fix):
    found = judged(*entries)
    assert (found.status, found.evidence, found.fix) == (FAIL, evidence, fix)


def test_aws_auth_map_roles_that_is_not_a_list():
    found = aws_auth_mapping({"mapRoles": "rolearn: x\n"}, ROLE_ARN, NODE)
    assert (found.status, found.evidence) == (FAIL, "kube-system/aws-auth mapRoles is not a YAML list")


def test_a_trust_policy_without_the_session_name_condition_warns_that_any_node_could_be_had(moto, recorded_eks,
                                                                                             capsys):
    iam = aws(moto, "iam")
    iam.update_assume_role_policy(RoleName=ROLE, PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}, "Action": "sts:AssumeRole"}]}))
    code, found = doctor(recorded_eks(moto, "API", {ROLE_ARN: "HYBRID_LINUX"}), capsys=capsys)
    role = found["eks-role"]
    assert role["status"] == WARN
    assert role["evidence"].startswith(f"its trust policy lets AWS arn:aws:iam::{ACCOUNT}:root assume it with any "
                                       "session name: through an access entry of type HYBRID_LINUX")
    assert f'"sts:RoleSessionName": "{NODE}"' in role["fix"] and "module eks_trust" in role["fix"]


def test_a_trust_policy_for_another_session_name_fails(moto, recorded_eks, capsys):
    code, found = doctor(recorded_eks(moto, "API", {ROLE_ARN: "HYBRID_LINUX"}), "--node-name", "other.gpu",
                         capsys=capsys)
    assert code == 1
    role = found["eks-role"]
    assert role["status"] == FAIL
    assert role["evidence"].startswith(f"its trust policy lets AWS arn:aws:iam::{ACCOUNT}:root assume it only as "
                                       f"session {NODE}, and the runtime's session is the node name other.gpu")
