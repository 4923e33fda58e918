"""Controllers of the Kubernetes node protocol; provider-agnostic."""
