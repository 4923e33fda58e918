"""EKS tokens as the runtime signs them and as the dev ground's authenticator checks them (no network: the
presigning is local; the STS call and the mapping through aws-auth run in tests/e2e/test_eks_login.py)."""

from __future__ import annotations

import base64
import datetime
import urllib.parse

import boto3
import botocore.session
import pytest
import yaml

from k8sgpu.cli.aws_auth import Unmapped, canonical_arn, identity_of
from k8sgpu.cli.dev.eks_authenticator import Refused, check_presigned
from k8sgpu.runtime.eks import EksLoginError, EksToken, token_for, url_of

ROLE = "arn:aws:iam::123456789012:role/k8sgpu-node"


@pytest.fixture
def aws(monkeypatch):
    """A botocore session with static source credentials and no endpoint override."""
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_STS", "AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    return botocore.session.Session()


class StaticRole:
    """Stands for the assumed role's refreshable credentials: what presigning reads."""

    def get_frozen_credentials(self):
        from botocore.credentials import ReadOnlyCredentials
        return ReadOnlyCredentials("ASIAEXAMPLEROLEKEY00", "secret", "session-token")


def test_token_is_a_presigned_get_caller_identity_for_the_regional_sts(aws):
    token = EksToken("prod", ROLE, "k8s.gpu", "eu-west-1", session=aws)
    token._credentials = StaticRole()
    value = token.presign()
    assert value.startswith("k8s-aws-v1.") and "=" not in value
    url = urllib.parse.urlsplit(url_of(value))
    query = dict(urllib.parse.parse_qsl(url.query))
    assert (url.scheme, url.netloc, url.path) == ("https", "sts.eu-west-1.amazonaws.com", "/")
    assert query["Action"] == "GetCallerIdentity" and query["Version"] == "2011-06-15"
    assert query["X-Amz-SignedHeaders"] == "host;x-k8s-aws-id"
    assert int(query["X-Amz-Expires"]) <= 900
    assert query["X-Amz-Credential"].startswith("ASIAEXAMPLEROLEKEY00/")
    assert query["X-Amz-Security-Token"] == "session-token"
    # The ground's authenticator takes it as EKS would, within its life, and not after.
    signed = datetime.datetime.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.UTC)
    assert check_presigned(url_of(value), set(), 900, 0, signed + datetime.timedelta(minutes=14))["Action"]
    with pytest.raises(Refused, match="expired"):
        check_presigned(url_of(value), set(), 900, 0, signed + datetime.timedelta(minutes=16))
    with pytest.raises(Refused, match="revoked"):
        check_presigned(url_of(value), set(), 900, signed.timestamp() + 1, signed)


def test_token_round_trips_without_padding():
    for url in ("https://sts.amazonaws.com/?a=1", "https://sts.amazonaws.com/?ab=12", "https://x/?abc=123"):
        assert url_of(token_for(url)) == url


def test_no_region_and_no_credentials_say_what_to_set(aws, monkeypatch):
    with pytest.raises(EksLoginError, match="--region"):
        EksToken("prod", ROLE, "k8s.gpu", "", session=aws)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(EksLoginError, match="no AWS credentials"):
        EksToken("prod", ROLE, "k8s.gpu", "eu-west-1", session=botocore.session.Session())


def _url(**overrides) -> str:
    query = {"Action": "GetCallerIdentity", "Version": "2011-06-15", "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
             "X-Amz-Credential": "ASIAX/20261127/us-east-1/sts/aws4_request", "X-Amz-Date": "20261127T010000Z",
             "X-Amz-Expires": "60", "X-Amz-SignedHeaders": "host;x-k8s-aws-id", "X-Amz-Signature": "ab"}
    host = overrides.pop("host", "sts.us-east-1.amazonaws.com")
    query.update(overrides)
    return f"https://{host}/?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})


NOW = datetime.datetime(2026, 11, 27, 1, 5, tzinfo=datetime.UTC)


@pytest.mark.parametrize("url, reason", [
    (_url(host="evil.example.com"), "not an STS endpoint"),
    (_url(host="sts.amazonaws.com.evil.example"), "not an STS endpoint"),
    (_url(Action="AssumeRole"), "not GetCallerIdentity"),
    (_url(**{"X-Amz-SignedHeaders": "host"}), "x-k8s-aws-id is not among the signed headers"),
    (_url(**{"X-Amz-Expires": "3600"}), "out of range"),
    (_url(**{"X-Amz-Date": "20261127T003000Z"}), "expired"),
    (_url(**{"X-Amz-Date": None}), "X-Amz-Date"),
    (_url(Extra="1"), "parameters STS presigning does not make"),
])
def test_the_authenticator_refuses_what_eks_refuses(url, reason):
    with pytest.raises(Refused, match=reason):
        check_presigned(url, set(), 900, 0, NOW)


def test_the_global_and_regional_sts_hosts_pass():
    for host in ("sts.amazonaws.com", "sts.eu-central-1.amazonaws.com", "sts.cn-north-1.amazonaws.com.cn"):
        assert check_presigned(_url(host=host), set(), 900, 0, NOW)["Action"] == "GetCallerIdentity"


AWS_AUTH = {"data": {"mapRoles": yaml.safe_dump([
    {"rolearn": "arn:aws:iam::123456789012:role/eks-node-group", "username": "system:node:{{EC2PrivateDNSName}}",
     "groups": ["system:bootstrappers", "system:nodes"]},
    {"rolearn": "arn:aws:iam::123456789012:role/gpu/with-path", "username": "system:node:{{SessionName}}",
     "groups": ["system:nodes"]},
    {"rolearn": "arn:aws:iam::123456789012:role/k8sgpu-node", "username": "system:node:{{SessionName}}",
     "groups": ["system:bootstrappers", "system:nodes"]},
    {"rolearn": "arn:aws:iam::123456789012:role/ops", "username": "ops:{{AccountID}}:{{SessionNameRaw}}",
     "groups": ["ops"]}]),
    "mapUsers": yaml.safe_dump([{"userarn": "arn:aws:iam::123456789012:user/admin", "username": "admin",
                                 "groups": ["system:masters"]}])}}


def test_aws_auth_maps_an_assumed_role_by_its_role_arn_without_path():
    """STS names the role without its path, so aws-auth entries must too."""
    assert canonical_arn("arn:aws:sts::123456789012:assumed-role/k8sgpu-node/k8s.gpu") == (ROLE, "k8s.gpu")
    assert identity_of(AWS_AUTH, "arn:aws:sts::123456789012:assumed-role/k8sgpu-node/k8s.gpu", "123456789012",
                       "ASIAX") == ("system:node:k8s.gpu", ["system:bootstrappers", "system:nodes"])
    assert identity_of(AWS_AUTH, "arn:aws:sts::123456789012:assumed-role/ops/jane@example.com", "123456789012",
                       "ASIAX") == ("ops:123456789012:jane@example.com", ["ops"])
    assert identity_of(AWS_AUTH, "arn:aws:iam::123456789012:user/admin", "123456789012", "AKIAX")[0] == "admin"
    with pytest.raises(Unmapped, match="not mapped"):
        identity_of(AWS_AUTH, "arn:aws:sts::123456789012:assumed-role/other/k8s.gpu", "123456789012", "ASIAX")
    with pytest.raises(Unmapped, match="not mapped"):  # an entry written with the role's path never matches
        identity_of(AWS_AUTH, "arn:aws:sts::123456789012:assumed-role/with-path/k8s.gpu", "123456789012", "ASIAX")
    with pytest.raises(Unmapped, match="EC2"):
        identity_of(AWS_AUTH, "arn:aws:sts::123456789012:assumed-role/eks-node-group/i-0abc", "123456789012", "A")


def test_outside_a_pod_without_outputs_the_endpoint_comes_from_describe_cluster(aws, moto_endpoint, monkeypatch):
    """moto (on loopback) answers DescribeCluster with an endpoint and a CA of its own making; the runtime's source
    credentials ask, not the node's role."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    eks = boto3.client("eks", region_name="eu-west-1", endpoint_url=moto_endpoint)
    eks.create_cluster(name="gpu-prod", roleArn="arn:aws:iam::123456789012:role/eks", resourcesVpcConfig={})
    described = eks.describe_cluster(name="gpu-prod")["cluster"]
    token = EksToken("gpu-prod", ROLE, "k8s.gpu", "eu-west-1", session=botocore.session.Session())
    assert token.cluster_endpoint() == (described["endpoint"],
                                        base64.b64decode(described["certificateAuthority"]["data"]))
    with pytest.raises(EksLoginError, match="cluster_endpoint and cluster_ca_certificate"):
        EksToken("absent", ROLE, "k8s.gpu", "eu-west-1", session=botocore.session.Session()).cluster_endpoint()


def test_a_role_session_longer_than_role_chaining_allows_is_refused_naming_the_setting(aws, monkeypatch, tmp_path):
    # Web identity (IRSA) source credentials are a role's session: the node's role assumed from them is chained.
    token_file = tmp_path / "token"
    token_file.write_text("eyJhbGciOiJSUzI1NiJ9.e30.sig")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/irsa")
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token_file))
    with pytest.raises(EksLoginError, match=r"local.eks_role_session_seconds 7200: .*assume-role-with-web-identity"):
        EksToken("prod", ROLE, "k8s.gpu", "eu-west-1", session=botocore.session.Session(),
                 role_session_seconds=7200)
    assert EksToken("prod", ROLE, "k8s.gpu", "eu-west-1", session=botocore.session.Session(),
                    role_session_seconds=3600).role_arn == ROLE


def test_an_access_key_may_assume_the_role_for_up_to_twelve_hours(aws):
    assert EksToken("prod", ROLE, "k8s.gpu", "eu-west-1", session=aws, role_session_seconds=43200).role_arn == ROLE
