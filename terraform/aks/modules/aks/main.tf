# AKS: what the runtime needs to know of the cluster, read from Azure. Creates nothing in Azure.

terraform {
  required_version = ">= 1.5"
  required_providers {
    azurerm = {
      source  = "hashicorp/azurerm"
      version = ">= 3.0.0, < 6.0.0"
    }
  }
}

variable "cluster_name" {
  description = "Name of the AKS cluster."
  type        = string
}

variable "resource_group_name" {
  description = "Resource group of the AKS cluster."
  type        = string
}

data "azurerm_kubernetes_cluster" "this" {
  name                = var.cluster_name
  resource_group_name = var.resource_group_name
}

locals {
  # Clusters with Entra ID integration give user credentials without certificates; the admin ones carry them.
  kube_config = length(data.azurerm_kubernetes_cluster.this.kube_admin_config) > 0 ? data.azurerm_kubernetes_cluster.this.kube_admin_config[0] : data.azurerm_kubernetes_cluster.this.kube_config[0]
}

output "cluster_endpoint" {
  description = "HTTPS URL of the cluster's API."
  value       = local.kube_config.host
}

output "cluster_ca_certificate" {
  description = "PEM of the cluster's CA."
  value       = base64decode(local.kube_config.cluster_ca_certificate)
}

output "client_certificate" {
  description = "PEM of the client certificate Terraform uses for the in-cluster objects."
  value       = base64decode(local.kube_config.client_certificate)
  sensitive   = true
}

output "client_key" {
  description = "PEM of the client key Terraform uses for the in-cluster objects."
  value       = base64decode(local.kube_config.client_key)
  sensitive   = true
}

output "network_plugin" {
  description = "The cluster's network plugin (kubenet, azure, none)."
  value       = data.azurerm_kubernetes_cluster.this.network_profile[0].network_plugin
}

output "tolerations" {
  description = "Tolerations the GPU RuntimeClasses carry on AKS: the virtual node has no CNI, so it gets the node.kubernetes.io/network-unavailable taint."
  value = [{
    key      = "node.kubernetes.io/network-unavailable"
    operator = "Exists"
    effect   = "NoSchedule"
  }]
}

output "node_labels" {
  description = "Labels the runtime sets on its node on AKS (documentation: the runtime sets them itself)."
  value       = { "kubernetes.azure.com/managed" = "false" }
}
