"""Fixtures every e2e module shares: the CoreV1 API of each of the ground's clusters, as its admin."""

from __future__ import annotations

import pytest
from kubernetes import client

from .helpers import api


@pytest.fixture(scope="module")
def local(ground):
    return client.CoreV1Api(api(ground.local.kubeconfig))


@pytest.fixture(scope="module")
def provider(ground):
    return client.CoreV1Api(api(ground.provider.kubeconfig))
