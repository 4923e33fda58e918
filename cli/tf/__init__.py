"""Terraform for k8sgpu: rendering the roots, the providers the tests build, and running Terraform."""
