# Read by `k8sgpu-runtime start --terraform-outputs` (the JSON of `terraform output -json`).

output "node_name" {
  description = "The virtual node's name."
  value       = module.node.node_name
}

output "namespace" {
  description = "Namespace of the runtime's objects."
  value       = module.node.namespace
}

output "tenant_namespace" {
  description = "Your namespace on the GPU provider."
  value       = module.node.tenant_namespace
}

output "csr_signer" {
  description = "Signer of the node's serving certificate (--csr-signer)."
  value       = module.node.csr_signer
}

output "runtime_classes" {
  description = "The GPU RuntimeClasses created."
  value       = module.node.runtime_classes
}


output "cluster_endpoint" {
  description = "HTTPS URL of the cluster's API."
  value       = module.eks.cluster_endpoint
}

output "cluster_ca_certificate" {
  description = "PEM of the cluster's CA."
  value       = module.eks.cluster_ca_certificate
}

output "role_arn" {
  description = "ARN of the IAM role the runtime assumes (session name = node_name)."
  value       = module.eks.role_arn
}

output "node_username" {
  description = "The Kubernetes user the role maps to."
  value       = module.eks.node_username
}

output "eks_cluster_name" {
  description = "Name of the EKS cluster (the x-k8s-aws-id of the runtime's token)."
  value       = var.cluster_name
}

output "region" {
  description = "AWS region of the cluster."
  value       = var.region
}

output "authentication_mode" {
  description = "The cluster's authentication mode, which chose the identity mapping."
  value       = module.eks.authentication_mode
}
