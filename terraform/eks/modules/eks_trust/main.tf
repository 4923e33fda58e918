# The IAM role's trust policy: who may assume the role the runtime runs as. No provider: plain HCL.

variable "trust" {
  description = "Who the runtime starts as: AWS account roots (account_ids), IAM roles (role_arns): with EKS Pod Identity or IRSA, the role they give the runtime's ServiceAccount."
  type = object({
    account_ids = optional(list(string), [])
    role_arns   = optional(list(string), [])
  })
  validation {
    condition     = length(var.trust.account_ids) + length(var.trust.role_arns) > 0
    error_message = "trust: empty trust principal; say who the runtime starts as: trust = { account_ids = [\"111122223333\"] } or trust = { role_arns = [\"arn:aws:iam::111122223333:role/ci\"] } (with EKS Pod Identity or IRSA: the role they give the runtime's ServiceAccount)."
  }
  validation {
    condition     = alltrue([for a in var.trust.account_ids : can(regex("^[0-9]{12}$", a))])
    error_message = "trust.account_ids: each is a 12-digit AWS account id as a string, e.g. \"111122223333\"."
  }
  validation {
    condition     = alltrue([for r in var.trust.role_arns : can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:role/.+$", r))])
    error_message = "trust.role_arns: each is an IAM role ARN, e.g. \"arn:aws:iam::111122223333:role/ci\"."
  }
}

variable "session_name" {
  description = "The only role session name allowed: the node name (the access entry HYBRID_LINUX maps the session name to system:node:<session name>)."
  type        = string
  validation {
    condition     = can(regex("^[\\w+=,.@-]{2,64}$", var.session_name))
    error_message = "session_name: the node name must be a valid STS role session name: 2 to 64 of letters, digits and +=,.@_-."
  }
}

variable "partition" {
  description = "AWS partition of the account roots (aws, aws-cn, aws-us-gov)."
  type        = string
  default     = "aws"
}

locals {
  aws_principals = concat([for a in var.trust.account_ids : "arn:${var.partition}:iam::${a}:root"], var.trust.role_arns)
  # Whoever may assume the role may do so only as the node: a session named otherwise would be another
  # system:node:<name> through the HYBRID_LINUX access entry.
  statements = [{
    Effect    = "Allow"
    Principal = { AWS = local.aws_principals }
    Action    = "sts:AssumeRole"
    Condition = { StringEquals = { "sts:RoleSessionName" = var.session_name } }
  }]
}

output "policy_json" {
  description = "The assume-role policy document."
  value       = jsonencode({ Version = "2012-10-17", Statement = local.statements })
}
