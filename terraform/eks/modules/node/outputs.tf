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
  description = "The runtime's ServiceAccount (its bootstrap identity on generic and AKS clusters)."
  value       = var.name
  depends_on  = [kubectl_manifest.service_account]
}

output "runtime_classes" {
  description = "Names of the GPU RuntimeClasses created."
  value       = sort(keys(kubectl_manifest.runtime_class))
}

output "bootstrap_token" {
  description = "Token of the ServiceAccount, to obtain the node's client certificate (empty when bootstrap is false)."
  value       = var.bootstrap ? lookup(data.kubernetes_secret.bootstrap_token[0].data, "token", "") : ""
  sensitive   = true
}
