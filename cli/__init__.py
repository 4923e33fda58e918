"""The `k8sgpu` command."""
