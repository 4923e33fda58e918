# The IAM role's trust policy: who may assume the role the runtime runs as. No provider: plain HCL.

variable "trust" {
  description = "Who the runtime starts as: AWS account roots (account_ids), IAM roles (role_arns), EKS Pod Identity (eks_pod_identity)."
  type = object({
    account_ids      = optional(list(string), [])
    role_arns        = optional(list(string), [])
    eks_pod_identity = optional(bool, false)
  })
  validation {
    condition     = length(var.trust.account_ids) + length(var.trust.role_arns) > 0 || var.trust.eks_pod_identity
    error_message = "trust: empty trust principal; say who the runtime starts as: trust = { account_ids = [\"111122223333\"] }, trust = { role_arns = [\"arn:aws:iam::111122223333:role/ci\"] } or trust = { eks_pod_identity = true }."
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

variable "partition" {
  description = "AWS partition of the account roots (aws, aws-cn, aws-us-gov)."
  type        = string
  default     = "aws"
}

locals {
  aws_principals = concat([for a in var.trust.account_ids : "arn:${var.partition}:iam::${a}:root"], var.trust.role_arns)
  statements = concat(
    length(local.aws_principals) > 0 ? [{
      Effect    = "Allow"
      Principal = { AWS = local.aws_principals }
      Action    = "sts:AssumeRole"
    }] : [],
    var.trust.eks_pod_identity ? [{
      Effect    = "Allow"
      Principal = { Service = "pods.eks.amazonaws.com" }
      Action    = ["sts:AssumeRole", "sts:TagSession"]
    }] : [],
  )
}

output "policy_json" {
  description = "The assume-role policy document."
  value       = jsonencode({ Version = "2012-10-17", Statement = local.statements })
}
