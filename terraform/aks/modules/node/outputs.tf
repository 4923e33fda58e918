output "node_name" {
  description = "The virtual node's name."
  value       = var.node_name
}

output "namespace" {
  description = "Namespace of the runtime's objects."
  value       = var.namespace
  depends_on  = [kubectl_manifest.namespace]
}

output "tenant_namespace" {
  description = "Your namespace on the GPU provider."
  value       = var.tenant_namespace
}

output "csr_signer" {
  description = "Signer of the node's serving certificate, as --csr-signer takes it."
  value       = var.csr_signer
}

output "service_account" {
  description = "The runtime's ServiceAccount: it writes the leader election Lease and keeps the node's certificate (Secret node_credentials_secret); it cannot request certificates."
  value       = var.name
  depends_on  = [kubectl_manifest.service_account]
}

output "runtime_classes" {
  description = "Names of the GPU RuntimeClasses created."
  value       = sort(keys(kubectl_manifest.runtime_class))
}

output "bootstrap_token" {
  description = "Kubelet-style bootstrap token <id>.<secret> that obtains the node's first client certificate: valid until bootstrap_token_expiration, spent by the runtime once that certificate is stored (empty when bootstrap is false)."
  value       = var.bootstrap ? "${local.bootstrap_token.id}.${local.bootstrap_token.secret}" : ""
  sensitive   = true
  depends_on  = [kubectl_manifest.bootstrap_token, kubectl_manifest.bootstrap_binding, kubectl_manifest.bootstrap_spend_binding]
}

output "bootstrap_token_expiration" {
  description = "When bootstrap_token expires (RFC 3339; empty when bootstrap is false)."
  value       = local.bootstrap_token.expiration
}

output "node_credentials_secret" {
  description = "NAMESPACE/NAME of the Secret that keeps the node's client certificate and key, readable by the runtime's ServiceAccount alone (empty when bootstrap is false)."
  value       = var.bootstrap ? "${var.namespace}/${local.credentials_secret}" : ""
  depends_on  = [kubectl_manifest.node_credentials]
}
