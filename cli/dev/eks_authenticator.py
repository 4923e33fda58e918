"""The dev ground's EKS authenticator: a webhook token authenticator for the local kube-apiserver.

It checks `k8s-aws-v1.` tokens the way EKS's aws-iam-authenticator does: the
token is a presigned STS GetCallerIdentity URL for an STS host, with
`x-k8s-aws-id` among its signed headers, signed less than 15 minutes ago; the
authenticator performs the call itself, with the cluster's name in
`x-k8s-aws-id`, and maps the ARN STS answers with (an assumed role's session
folded into its role ARN, path dropped) through the aws-auth ConfigMap's
`mapRoles`/`mapUsers`, username templates included.

STS here is moto on loopback, which answers a presigned GET only when the
query's signature comes as an `Authorization` header, and which checks no
signature: on the ground a token for another cluster name would pass STS.
Access entries (authentication mode API) are not emulated.

`settings.json` beside it (re-read on change) shortens what tests need short:
`max_token_age_seconds` (EKS: 900) and `not_before` (epoch seconds; tokens
signed earlier are refused, which makes the apiserver answer 401).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import logging
import re
import ssl
import urllib.parse
import xml.etree.ElementTree as ET
from pathlib import Path

import aiohttp
from aiohttp import web

from k8sgpu.cli.aws_auth import Unmapped, canonical_arn, identity_of
from k8sgpu.runtime import errors
from k8sgpu.runtime.eks import CLUSTER_ID_HEADER, TOKEN_PREFIX, url_of
from k8sgpu.runtime.kube import Kube, api_client

log = logging.getLogger("eks-authenticator")

STS_HOST = re.compile(r"^sts(\.[a-z0-9-]+)?\.amazonaws\.com(\.cn)?$")
ALLOWED_PARAMS = {"action", "version", "x-amz-algorithm", "x-amz-credential", "x-amz-date", "x-amz-expires",
                  "x-amz-security-token", "x-amz-signature", "x-amz-signedheaders"}
MAX_TOKEN_AGE = 900


class Refused(Exception):
    """The token does not authenticate anyone; the message goes to kube-apiserver's log."""


def check_presigned(url: str, allowed_hosts: set[str], max_age: float, not_before: float,
                    now: datetime.datetime) -> dict[str, str]:
    """The query of a token's URL if it is a GetCallerIdentity presigned for STS within its life."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" and parts.netloc not in allowed_hosts:
        raise Refused(f"token URL scheme {parts.scheme!r} is not https")
    if not (STS_HOST.match(parts.hostname or "") or parts.netloc in allowed_hosts):
        raise Refused(f"token URL host {parts.netloc!r} is not an STS endpoint")
    if parts.path not in ("", "/"):
        raise Refused(f"token URL path {parts.path!r} is not /")
    query = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    unknown = {k for k in query if k.lower() not in ALLOWED_PARAMS}
    if unknown:
        raise Refused(f"token URL has parameters STS presigning does not make: {sorted(unknown)}")
    if query.get("Action") != "GetCallerIdentity":
        raise Refused(f"token URL action is {query.get('Action')!r}, not GetCallerIdentity")
    signed = query.get("X-Amz-SignedHeaders", "").split(";")
    if CLUSTER_ID_HEADER not in signed:
        raise Refused(f"{CLUSTER_ID_HEADER} is not among the signed headers {signed}")
    try:
        expires = int(query.get("X-Amz-Expires", ""))
        signed_at = datetime.datetime.strptime(query.get("X-Amz-Date", ""), "%Y%m%dT%H%M%SZ").replace(
            tzinfo=datetime.UTC)
    except ValueError:
        raise Refused("token URL lacks a valid X-Amz-Expires or X-Amz-Date") from None
    if not 0 < expires <= MAX_TOKEN_AGE:
        raise Refused(f"X-Amz-Expires {expires} is out of range (1-{MAX_TOKEN_AGE})")
    age = (now - signed_at).total_seconds()
    if age > max_age:
        raise Refused(f"token expired: signed {age:.0f}s ago, accepted for {max_age:.0f}s")
    if age < -300:
        raise Refused("token signed in the future")
    if signed_at.timestamp() < not_before:
        raise Refused("token signed before tokens were revoked (settings not_before)")
    return query


class Authenticator:
    def __init__(self, cluster: str, sts_endpoint: str, aws_auth: Kube, settings: Path,
                 session: aiohttp.ClientSession):
        self.cluster, self.sts_endpoint, self.aws_auth = cluster, sts_endpoint.rstrip("/"), aws_auth
        self.session = session
        self.allowed_hosts = {urllib.parse.urlsplit(self.sts_endpoint).netloc}
        self.settings_file = settings
        self._settings: tuple[float, dict] = (-1.0, {})

    def settings(self) -> dict:
        try:
            mtime = self.settings_file.stat().st_mtime
        except FileNotFoundError:
            return {}
        if mtime != self._settings[0]:
            self._settings = (mtime, json.loads(self.settings_file.read_text() or "{}"))
        return self._settings[1]

    async def caller(self, query: dict[str, str]) -> tuple[str, str, str]:
        """(ARN, account, user id) that STS answers the presigned call with."""
        headers = {
            "Authorization": f"AWS4-HMAC-SHA256 Credential={query['X-Amz-Credential']}, "
                             f"SignedHeaders={query['X-Amz-SignedHeaders']}, Signature={query['X-Amz-Signature']}",
            "X-Amz-Date": query["X-Amz-Date"], CLUSTER_ID_HEADER: self.cluster}
        if query.get("X-Amz-Security-Token"):
            headers["X-Amz-Security-Token"] = query["X-Amz-Security-Token"]
        async with self.session.get(f"{self.sts_endpoint}/", params={"Action": "GetCallerIdentity",
                                                                     "Version": "2011-06-15"},
                                    headers=headers, timeout=aiohttp.ClientTimeout(total=10)) as resp:
            body = await resp.text()
        if resp.status != 200:
            raise Refused(f"STS refused the token ({resp.status}): {body[:200]}")
        ns = {"sts": "https://sts.amazonaws.com/doc/2011-06-15/"}
        result = ET.fromstring(body).find("sts:GetCallerIdentityResult", ns)
        if result is None:
            raise Refused(f"STS answered without a GetCallerIdentityResult: {body[:200]}")
        return (result.findtext("sts:Arn", "", ns), result.findtext("sts:Account", "", ns),
                result.findtext("sts:UserId", "", ns))

    async def review(self, token: str) -> dict:
        if not token.startswith(TOKEN_PREFIX):
            raise Refused("not a k8s-aws-v1. token")
        try:
            url = url_of(token)
        except ValueError:
            raise Refused("token is not base64url") from None
        settings = self.settings()
        query = check_presigned(url, self.allowed_hosts, float(settings.get("max_token_age_seconds", MAX_TOKEN_AGE)),
                                float(settings.get("not_before", 0)), datetime.datetime.now(datetime.UTC))
        arn, account, user_id = await self.caller(query)
        access_key = query["X-Amz-Credential"].split("/", 1)[0]
        try:
            aws_auth = await self.aws_auth.get("ConfigMap", "kube-system", "aws-auth")
        except errors.NotFound:
            raise Refused("kube-system/aws-auth does not exist") from None
        try:
            username, groups = identity_of(aws_auth, arn, account, access_key)
        except Unmapped as exc:
            raise Refused(str(exc)) from None
        canonical, session = canonical_arn(arn)
        log.info("accepted token signed %s with access key %s: %s as %s %s", query["X-Amz-Date"], access_key, arn,
                 username, groups)
        return {"username": username, "uid": f"aws-iam-authenticator:{account}:{user_id}", "groups": groups,
                "extra": {"arn": [arn], "canonicalArn": [canonical], "sessionName": [session],
                          "accessKeyId": [access_key], "principalId": [user_id]}}

    async def handle(self, request: web.Request) -> web.Response:
        review = await request.json()
        token = (review.get("spec") or {}).get("token", "")
        try:
            user = await self.review(token)
            status = {"authenticated": True, "user": user}
        except Refused as exc:
            log.info("refused a token: %s", exc)
            status = {"authenticated": False, "error": str(exc)}
        except (aiohttp.ClientError, TimeoutError, errors.KubeError) as exc:
            log.warning("cannot review a token: %r", exc)
            return web.json_response({**review, "status": {"authenticated": False, "error": repr(exc)}},
                                     status=500)
        return web.json_response({"apiVersion": review.get("apiVersion", "authentication.k8s.io/v1"),
                                  "kind": "TokenReview", "status": status})


async def serve(args: argparse.Namespace) -> None:
    aws_auth = Kube(await api_client(args.kubeconfig), "local")
    authenticator = Authenticator(args.cluster, args.sts_endpoint, aws_auth, Path(args.settings),
                                  aiohttp.ClientSession())
    app = web.Application()
    app.router.add_post("/authenticate", authenticator.handle)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(args.tls_cert_file, args.tls_private_key_file)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, port = args.listen.rsplit(":", 1)
    await web.TCPSite(runner, host, int(port), ssl_context=tls).start()
    log.info("EKS authenticator for cluster %s on https://%s, STS at %s", args.cluster, args.listen,
             args.sts_endpoint)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await authenticator.session.close()
        await aws_auth.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m k8sgpu.cli.dev.eks_authenticator",
                                     description="The dev ground's webhook token authenticator for EKS tokens.")
    parser.add_argument("--listen", required=True, help="host:port")
    parser.add_argument("--cluster", required=True, help="cluster name expected in x-k8s-aws-id")
    parser.add_argument("--sts-endpoint", required=True, help="URL of STS (moto on loopback)")
    parser.add_argument("--kubeconfig", required=True, help="reads kube-system/aws-auth with it")
    parser.add_argument("--settings", required=True, help="JSON: max_token_age_seconds, not_before")
    parser.add_argument("--tls-cert-file", required=True)
    parser.add_argument("--tls-private-key-file", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
