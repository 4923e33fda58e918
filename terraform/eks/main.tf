# k8sgpu on EKS. Rendered by `k8sgpu render --cloud eks`; needs the aws provider, never azurerm.

provider "aws" {
  region = var.region
}

data "aws_eks_cluster" "this" {
  name = var.cluster_name
}

data "aws_eks_cluster_auth" "this" {
  name = var.cluster_name
}

provider "kubernetes" {
  host                   = data.aws_eks_cluster.this.endpoint
  cluster_ca_certificate = base64decode(data.aws_eks_cluster.this.certificate_authority[0].data)
  token                  = data.aws_eks_cluster_auth.this.token
}

provider "kubectl" {
  host                   = data.aws_eks_cluster.this.endpoint
  cluster_ca_certificate = base64decode(data.aws_eks_cluster.this.certificate_authority[0].data)
  token                  = data.aws_eks_cluster_auth.this.token
  load_config_file       = false
}

module "trust" {
  source       = "./modules/eks_trust"
  trust        = var.trust
  session_name = var.node_name
}

module "eks" {
  source            = "./modules/eks"
  cluster_name      = var.cluster_name
  role_name         = var.role_name
  node_name         = var.node_name
  trust_policy_json = module.trust.policy_json
  access_entry_type = var.access_entry_type
}

module "aws_auth" {
  source    = "./modules/aws_auth"
  enabled   = module.eks.aws_auth_enabled
  role_arn  = module.eks.role_arn
  node_name = var.node_name
}

module "node" {
  source                           = "./modules/node"
  node_name                        = var.node_name
  namespace                        = var.namespace
  tenant_namespace                 = var.tenant_namespace
  tenant_kubeconfig                = var.tenant_kubeconfig
  catalog                          = var.catalog
  default_runtime_class            = var.default_runtime_class
  image                            = var.image
  image_tag                        = var.image_tag
  wait_for_rollout                 = var.wait_for_rollout
  health_port                      = var.health_port
  resources                        = var.resources
  termination_grace_period_seconds = var.termination_grace_period_seconds
  replicas                         = var.replicas
  pod_monitor                      = var.pod_monitor
  serving_approval_policy          = var.serving_approval_policy
  csr_signer                       = "aws"
  # On EKS the IAM role is the node identity: no bootstrap token.
  bootstrap = false
  runtime_env = {
    K8SGPU_EKS_CLUSTER_NAME = var.cluster_name
    K8SGPU_EKS_ROLE_ARN     = module.eks.role_arn
    AWS_REGION              = var.region
  }
}
