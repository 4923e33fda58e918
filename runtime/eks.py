"""EKS login: the node proves who it is with an IAM role, as `aws eks get-token` and aws-iam-authenticator do.

The runtime assumes the node's IAM role with the node name as session name
(an access entry of type HYBRID_LINUX maps `system:node:{{SessionName}}`; an
aws-auth entry names the user itself), then presigns STS GetCallerIdentity for
that role with the header `x-k8s-aws-id: <cluster>` signed. The bearer token is
`k8s-aws-v1.` + the URL in unpadded base64url; EKS calls the URL and maps the
role it answers for. A token is good for 15 minutes after signing, so a new one
is signed before 14 and at once after a 401. botocore's refreshable credentials
renew the role's session before it ends. The source credentials are boto3's
usual chain (environment, profile, web identity, EKS Pod Identity); no
credential or token is ever logged.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import time

import botocore.session
from botocore.auth import SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import AssumeRoleCredentialFetcher, DeferredRefreshableCredentials
from botocore.exceptions import BotoCoreError, ClientError

log = logging.getLogger(__name__)

TOKEN_PREFIX = "k8s-aws-v1."
CLUSTER_ID_HEADER = "x-k8s-aws-id"
PRESIGN_EXPIRES = 60  # what `aws eks get-token` signs; EKS accepts the token for 15 minutes after signing anyway
ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+$")
SESSION_NAME = re.compile(r"^[\w+=,.@-]{2,64}$")
# botocore's names of credentials that are themselves a role's session (web identity/IRSA, EKS Pod Identity and
# ECS, an instance profile, SSO, a profile's role_arn): assuming the node's role from them is role chaining.
ROLE_SOURCES = {"assume-role", "assume-role-with-web-identity", "container-role", "iam-role", "sso"}
MAX_CHAINED_SESSION = 3600


class EksLoginError(Exception):
    """The IAM role could not be assumed or no credentials were found; says what to set."""


def token_for(url: str) -> str:
    return TOKEN_PREFIX + base64.urlsafe_b64encode(url.encode()).decode().rstrip("=")


def url_of(token: str) -> str:
    body = token.removeprefix(TOKEN_PREFIX)
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()


class EksToken:
    """Bearer tokens of one EKS cluster for an assumed role; plugs into a client's refresh hook."""

    def __init__(self, cluster: str, role_arn: str, session_name: str, region: str = "", *,
                 lifetime: float = 900, role_session_seconds: int = 3600,
                 session: botocore.session.Session | None = None):
        self.cluster, self.role_arn, self.session_name = cluster, role_arn, session_name
        self.lifetime = lifetime
        self._session = session or botocore.session.Session()
        if region:
            self._session.set_config_variable("region", region)
        self.region = self._session.get_config_variable("region") or ""
        if not self.region:
            raise EksLoginError("no AWS region: give --region (or AWS_REGION, or a profile with a region)")
        source = self._session.get_credentials()
        if source is None:
            raise EksLoginError("no AWS credentials found to assume the node's role with: set them as for any "
                                "AWS tool (AWS_* environment, AWS_PROFILE, web identity, EKS Pod Identity)")
        if source.method in ROLE_SOURCES and role_session_seconds > MAX_CHAINED_SESSION:
            raise EksLoginError(
                f"local.eks_role_session_seconds {role_session_seconds}: the runtime's own credentials are a role's "
                f"({source.method}), and a role assumed from a role's session lasts at most {MAX_CHAINED_SESSION} s "
                f"(role chaining): set it to {MAX_CHAINED_SESSION} or less in the config file")
        fetcher = AssumeRoleCredentialFetcher(
            self._session.create_client, source, role_arn,
            extra_args={"RoleSessionName": session_name, "DurationSeconds": role_session_seconds})
        self._credentials = DeferredRefreshableCredentials(fetcher.fetch_credentials, "assume-role")
        # The STS endpoint the way botocore resolves it: regional, or AWS_ENDPOINT_URL(_STS) where set.
        self.sts_endpoint = self._session.create_client("sts", region_name=self.region).meta.endpoint_url
        self._token = ""
        self._signed_at = 0.0
        self._lock = asyncio.Lock()

    def presign(self) -> str:
        """A new token: GetCallerIdentity presigned with the role's current credentials (blocking I/O when
        the role's session must be renewed)."""
        try:
            frozen = self._credentials.get_frozen_credentials()
        except (BotoCoreError, ClientError) as exc:
            raise EksLoginError(f"cannot assume {self.role_arn} as session {self.session_name}: {exc}; its "
                                "trust policy must name the identity the runtime starts as") from None
        request = AWSRequest(method="GET", url=self.sts_endpoint.rstrip("/") + "/",
                             params={"Action": "GetCallerIdentity", "Version": "2011-06-15"},
                             headers={CLUSTER_ID_HEADER: self.cluster})
        SigV4QueryAuth(frozen, "sts", self.region, expires=PRESIGN_EXPIRES).add_auth(request)
        return token_for(request.prepare().url)

    def cluster_endpoint(self) -> tuple[str, bytes]:
        """The cluster's API endpoint and CA (PEM) from eks:DescribeCluster, as `aws eks update-kubeconfig` reads
        them; asked with the source credentials, since the node's role has no permission at all."""
        try:
            eks = self._session.create_client("eks", region_name=self.region)
            cluster = eks.describe_cluster(name=self.cluster)["cluster"]
        except (BotoCoreError, ClientError) as exc:
            raise EksLoginError(f"cannot read the endpoint of EKS cluster {self.cluster} ({exc}): give "
                                "--terraform-outputs with cluster_endpoint and cluster_ca_certificate, or allow "
                                "eks:DescribeCluster to the runtime's own credentials") from None
        return cluster["endpoint"], base64.b64decode(cluster["certificateAuthority"]["data"])

    @property
    def renew_after(self) -> float:
        return self.lifetime * 14 / 15  # 14 of EKS's 15 minutes

    def _due(self) -> str:
        """Why a new token is needed now, or "" while the current one is fresh."""
        if not self._token:
            return "first login"
        return "due" if time.monotonic() - self._signed_at >= self.renew_after else ""

    async def current(self) -> str:
        if self._due():
            async with self._lock:
                if reason := self._due():  # unless another caller signed one while we waited for the lock
                    await self._sign(reason)
        return self._token

    async def _sign(self, reason: str) -> None:
        self._token = await asyncio.to_thread(self.presign)
        self._signed_at = time.monotonic()
        log.info("EKS token for %s signed as %s (session %s, %s)", self.cluster, self.role_arn,
                 self.session_name, reason)

    async def refresh_hook(self, configuration) -> None:
        """kubernetes_asyncio's `refresh_api_key_hook`: runs before each request's headers are built."""
        configuration.api_key["BearerToken"] = await self.current()
        configuration.api_key_prefix["BearerToken"] = "Bearer"

    async def unauthorized(self, authorization: str) -> None:
        """The cluster answered 401 to a request sent with ``authorization``: the token expired or was refused;
        sign a new one now, once for every request that failed with the same token."""
        used = authorization.removeprefix("Bearer ") or self._token
        async with self._lock:
            if self._token == used:  # not yet replaced by another request that failed with it
                await self._sign("after a 401")
