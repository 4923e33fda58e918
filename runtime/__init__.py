"""The k8sgpu runtime: the virtual node `k8s.gpu`, backed by a remote GPU provider."""

__version__ = "0.1.0"
