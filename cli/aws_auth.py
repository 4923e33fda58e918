"""How EKS maps an IAM identity through the aws-auth ConfigMap, as aws-iam-authenticator does.

Shared by `k8sgpu doctor --cloud eks` (does the node's role map to its node?) and
the dev ground's EKS authenticator (who is this token's caller?).
"""

from __future__ import annotations

import re

import yaml

ASSUMED_ROLE = re.compile(r"^arn:(aws[a-z-]*):sts::(\d{12}):assumed-role/([^/]+)/(.+)$")
IAM_ARN = re.compile(r"^arn:(aws[a-z-]*):iam::(\d{12}):(role|user)/(?:.*/)?([^/]+)$")


class Unmapped(Exception):
    """aws-auth maps no Kubernetes user to this identity; the message says why."""


def canonical_arn(arn: str) -> tuple[str, str]:
    """(the ARN aws-auth names, the session name): an assumed role becomes its role without path."""
    if m := ASSUMED_ROLE.match(arn):
        partition, account, role, session = m.groups()
        return f"arn:{partition}:iam::{account}:role/{role}", session
    if m := IAM_ARN.match(arn):
        partition, account, kind, name = m.groups()
        return f"arn:{partition}:iam::{account}:{kind}/{name}", ""
    raise Unmapped(f"aws-auth cannot map the ARN {arn}")


def names(written, canonical: str) -> bool:
    """Whether an aws-auth entry's ARN names the canonical ARN: as aws-iam-authenticator, case-insensitive; an ARN
    written with a path never matches ("the role ARN cannot include a path", EKS's docs), since STS's answer carries
    none."""
    return str(written or "").lower() == canonical.lower()


def render_username(template: str, account: str, session: str, access_key: str) -> str:
    if "{{EC2PrivateDNSName}}" in template:
        raise Unmapped("{{EC2PrivateDNSName}} resolves only for an EC2 instance's session (it needs the EC2 API)")
    return (template.replace("{{AccountID}}", account)
            .replace("{{SessionNameRaw}}", session)
            .replace("{{SessionName}}", session.replace("@", "-"))
            .replace("{{AccessKeyID}}", access_key))


def identity_of(aws_auth: dict, arn: str, account: str, access_key: str) -> tuple[str, list[str]]:
    """Username and groups of a caller through aws-auth's data (mapRoles, mapUsers)."""
    canonical, session = canonical_arn(arn)
    section = "mapRoles" if ":role/" in canonical else "mapUsers"
    key = "rolearn" if section == "mapRoles" else "userarn"
    entries = yaml.safe_load((aws_auth.get("data") or {}).get(section) or "[]") or []
    for entry in entries:
        if names(entry.get(key), canonical):
            username = render_username(entry.get("username") or "", account, session, access_key)
            if not username:
                raise Unmapped(f"the aws-auth entry of {canonical} has no username")
            return username, list(entry.get("groups") or [])
    raise Unmapped(f"{canonical} is not mapped in kube-system/aws-auth {section}")
