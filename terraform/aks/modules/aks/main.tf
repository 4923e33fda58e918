# AKS: what a virtual node needs on AKS. Plain HCL: it reads nothing from Azure and creates nothing there.

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
