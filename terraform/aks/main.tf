# k8sgpu on AKS. Rendered by `k8sgpu render --cloud aks`. Terraform logs in with the caller's kubeconfig (kubelogin
# on Entra ID clusters): no client certificate or key of the cluster ever enters the state, and no azurerm is needed.

# The cluster as the caller's kubeconfig reaches it: Terraform's providers log in with it (its exec plugins, such as
# kubelogin, included), and the runtime gets its endpoint and CA as outputs. None of the caller's credentials enters
# the state.
locals {
  kubeconfig       = yamldecode(file(var.kubeconfig_path))
  context_name     = var.kube_context != "" ? var.kube_context : local.kubeconfig["current-context"]
  context          = one([for c in local.kubeconfig.contexts : c.context if c.name == local.context_name])
  cluster          = one([for c in local.kubeconfig.clusters : c.cluster if c.name == local.context.cluster])
  cluster_endpoint = var.cluster_endpoint != "" ? var.cluster_endpoint : local.cluster.server
  cluster_ca_certificate = var.cluster_ca_certificate != "" ? var.cluster_ca_certificate : try(
    base64decode(local.cluster["certificate-authority-data"]),
    file(local.cluster["certificate-authority"]),
    "",
  )
}

provider "kubernetes" {
  config_path    = var.kubeconfig_path
  config_context = local.context_name
}

provider "kubectl" {
  config_path      = var.kubeconfig_path
  config_context   = local.context_name
  load_config_file = true
}

module "aks" {
  source = "./modules/aks"
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
  csr_signer                       = "kubernetes.io/kubelet-serving"
  bootstrap                        = true
  bootstrap_token_ttl              = var.bootstrap_token_ttl
  extra_tolerations                = module.aks.tolerations
}
