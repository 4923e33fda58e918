"""The provider's load-balancer controller on the dev ground (a stand-in of the GPU cloud's own).

It publishes every Service of type LoadBalancer in a tenant namespace at
`<service uid>-<tenant>.<provider domain>`, as the original provider does, by
writing that hostname into the Service's status.
"""

from __future__ import annotations

import argparse
import logging
import sys

from kubernetes import client, config, watch

PROVIDER_DOMAIN = "gpu.k8sgpu.test"

log = logging.getLogger("k8sgpu-dev-lb")


def hostname(service: client.V1Service, domain: str) -> str:
    return f"{service.metadata.uid}-{service.metadata.namespace}.{domain}"


def run(kubeconfig: str, domain: str) -> None:
    api = client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))
    resource_version = ""
    while True:
        if not resource_version:
            listing = api.list_service_for_all_namespaces(label_selector="k8sgpu.io/node")
            for service in listing.items:
                publish(api, service, domain)
            resource_version = listing.metadata.resource_version
        try:
            for event in watch.Watch().stream(api.list_service_for_all_namespaces, label_selector="k8sgpu.io/node",
                                              resource_version=resource_version, timeout_seconds=300):
                service = event["object"]
                resource_version = service.metadata.resource_version
                if event["type"] in ("ADDED", "MODIFIED"):
                    publish(api, service, domain)
        except client.ApiException as exc:
            if exc.status == 410:
                resource_version = ""
            else:
                raise


def publish(api: client.CoreV1Api, service: client.V1Service, domain: str) -> None:
    if service.spec.type != "LoadBalancer":
        return
    wanted = hostname(service, domain)
    current = (service.status.load_balancer.ingress or []) if service.status.load_balancer else []
    if [i.hostname for i in current] == [wanted]:
        return
    api.patch_namespaced_service_status(service.metadata.name, service.metadata.namespace,
                                        {"status": {"loadBalancer": {"ingress": [{"hostname": wanted}]}}})
    log.info("published %s/%s at %s", service.metadata.namespace, service.metadata.name, wanted)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--domain", default=PROVIDER_DOMAIN)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    run(args.kubeconfig, args.domain)
    return 0


if __name__ == "__main__":
    sys.exit(main())
