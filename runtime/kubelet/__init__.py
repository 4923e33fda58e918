"""The kubelet API of the virtual node: serving certificate, door, HTTPS endpoints."""
