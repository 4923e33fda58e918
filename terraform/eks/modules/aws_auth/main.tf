# The node's identity mapping through the aws-auth ConfigMap (modes CONFIG_MAP and API_AND_CONFIG_MAP).
# Other tools own other mapRoles entries: this module reads the ConfigMap, replaces or adds only the entry of its
# role ARN, and writes back only the mapRoles key (server-side apply, taking the field over from whoever wrote it
# last). It never deletes the ConfigMap: on destroy the entry stays (remove it by hand if you must).

terraform {
  required_version = ">= 1.5"
  required_providers {
    kubectl = {
      source  = "gavinbunney/kubectl"
      version = ">= 1.19.0, < 2.0.0"
    }
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = ">= 1.13.4, < 3.0.0"
    }
  }
}

variable "enabled" {
  description = "Whether to write the mapping (true in CONFIG_MAP and API_AND_CONFIG_MAP modes)."
  type        = bool
}

variable "role_arn" {
  description = "ARN of the runtime's IAM role, without path (aws-auth matches the ARN without path)."
  type        = string
  validation {
    condition     = can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:role/[^/]+$", var.role_arn))
    error_message = "role_arn must be an IAM role ARN without path, e.g. \"arn:aws:iam::111122223333:role/k8sgpu-node\"."
  }
}

variable "node_name" {
  description = "The virtual node's name; the mapped user is system:node:<node_name>."
  type        = string
}

data "kubernetes_config_map" "aws_auth" {
  count = var.enabled ? 1 : 0
  metadata {
    name      = "aws-auth"
    namespace = "kube-system"
  }
}

locals {
  username = "system:node:${var.node_name}"
  raw      = var.enabled ? try(data.kubernetes_config_map.aws_auth[0].data["mapRoles"], "") : ""
  readable = trimspace(local.raw) == "" || can([for e in yamldecode(local.raw) : e])
  existing = try([for e in yamldecode(local.raw) : e], [])
  ours = {
    rolearn  = var.role_arn
    username = local.username
    groups   = ["system:bootstrappers", "system:nodes"]
  }
  # Every entry of others as it was, in its order; ours takes the place of the first entry of its role ARN (others
  # of that ARN are dropped) or comes last. Entries pass through JSON text so that entries of any shape mix.
  our_index = try(index([for e in local.existing : try(e.rolearn, "")], var.role_arn), -1)
  entries = [
    for i, e in local.existing : i == local.our_index ? jsonencode(local.ours) : jsonencode(e)
    if i == local.our_index || try(e.rolearn, "") != var.role_arn
  ]
  map_roles = jsondecode("[${join(",", concat(local.entries, local.our_index >= 0 ? [] : [jsonencode(local.ours)]))}]")
}

resource "kubectl_manifest" "aws_auth" {
  count = var.enabled ? 1 : 0
  yaml_body = yamlencode({
    apiVersion = "v1"
    kind       = "ConfigMap"
    metadata   = { name = "aws-auth", namespace = "kube-system" }
    data       = { mapRoles = yamlencode(local.map_roles) }
  })
  server_side_apply = true
  force_conflicts   = true
  apply_only        = true
  lifecycle {
    precondition {
      condition     = local.readable
      error_message = "kube-system/aws-auth mapRoles is not a YAML list; fix it by hand (kubectl -n kube-system edit configmap aws-auth) so that the entries of others are not lost."
    }
  }
}

output "username" {
  description = "The Kubernetes user the role maps to."
  value       = local.username
}

output "map_roles" {
  description = "The mapRoles written (empty when disabled)."
  value       = var.enabled ? local.map_roles : []
}
