# EKS: an IAM role with no permission policy at all, and the route that maps it to system:node:<node_name>
# for the cluster's authentication mode. The aws-auth part (which needs the kubernetes provider) is the
# module aws_auth, called by the root with this module's outputs.

terraform {
  required_version = ">= 1.5"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.33.0, < 7.0.0"
    }
  }
}

variable "cluster_name" {
  description = "Name of the EKS cluster."
  type        = string
}

variable "role_name" {
  description = "Name of the IAM role the runtime runs as."
  type        = string
  default     = "k8sgpu-node"
}

variable "node_name" {
  description = "The virtual node's name."
  type        = string
}

variable "trust_policy_json" {
  description = "The role's assume-role policy (module eks_trust)."
  type        = string
}

variable "access_entry_type" {
  description = "Type of the access entry made in API authentication mode. HYBRID_LINUX (default) is the one type that maps the role to system:node:<session name>: STANDARD refuses system: usernames and the group system:nodes, EC2_LINUX maps only sessions named after an EC2 instance. \"none\": no access entry (you map the role yourself)."
  type        = string
  default     = "HYBRID_LINUX"
  validation {
    condition     = contains(["HYBRID_LINUX", "none"], var.access_entry_type)
    error_message = "access_entry_type: HYBRID_LINUX (maps the role's session <node_name> to system:node:<node_name>) or \"none\"; STANDARD cannot carry system:node:* users nor the group system:nodes, and EC2_LINUX maps only sessions named after an EC2 instance id."
  }
}

variable "tags" {
  description = "Tags of the IAM role."
  type        = map(string)
  default     = {}
}

data "aws_eks_cluster" "this" {
  name = var.cluster_name
}

locals {
  # A cluster created before access entries existed has no access_config: that is CONFIG_MAP.
  authentication_mode = coalesce(try(data.aws_eks_cluster.this.access_config[0].authentication_mode, null), "CONFIG_MAP")
}

resource "aws_iam_role" "node" {
  name               = var.role_name
  path               = "/"
  description        = "k8sgpu virtual node ${var.node_name} on ${var.cluster_name}: identity only, no permissions"
  assume_role_policy = var.trust_policy_json
  tags               = var.tags
}

# API mode has no aws-auth. STANDARD entries refuse system: usernames and EC2_LINUX takes none (its user is
# system:node:{{EC2PrivateDNSName}}, which only an EC2 instance's session resolves), so the entry is
# HYBRID_LINUX, whose user is system:node:{{SessionName}}: the runtime assumes the role with the session
# name <node_name>. Limits in modules/eks/README.md.
resource "aws_eks_access_entry" "node" {
  count         = local.authentication_mode == "API" && var.access_entry_type != "none" ? 1 : 0
  cluster_name  = var.cluster_name
  principal_arn = aws_iam_role.node.arn
  type          = var.access_entry_type
  tags          = var.tags
}

output "role_arn" {
  description = "ARN of the runtime's IAM role."
  value       = aws_iam_role.node.arn
}

output "authentication_mode" {
  description = "The cluster's authentication mode (CONFIG_MAP when the cluster does not say)."
  value       = local.authentication_mode
}

output "aws_auth_enabled" {
  description = "Whether the aws-auth ConfigMap maps the role (CONFIG_MAP, API_AND_CONFIG_MAP)."
  value       = contains(["CONFIG_MAP", "API_AND_CONFIG_MAP"], local.authentication_mode)
}

output "node_username" {
  description = "The Kubernetes user of the node."
  value       = "system:node:${var.node_name}"
}

output "cluster_endpoint" {
  description = "HTTPS URL of the cluster's API."
  value       = data.aws_eks_cluster.this.endpoint
}

output "cluster_ca_certificate" {
  description = "PEM of the cluster's CA."
  value       = base64decode(data.aws_eks_cluster.this.certificate_authority[0].data)
}
