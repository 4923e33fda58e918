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
  value       = local.cluster_endpoint
}

output "cluster_ca_certificate" {
  description = "PEM of the cluster's CA."
  value       = local.cluster_ca_certificate
}

output "bootstrap_token" {
  description = "Bootstrap token that obtains the node's first client certificate, once: the runtime spends it then; it expires at bootstrap_token_expiration."
  value       = module.node.bootstrap_token
  sensitive   = true
}

output "bootstrap_token_expiration" {
  description = "When bootstrap_token expires (RFC 3339)."
  value       = module.node.bootstrap_token_expiration
}
