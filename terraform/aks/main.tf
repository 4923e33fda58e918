# k8sgpu on AKS. Rendered by `k8sgpu render --cloud aks`; needs the azurerm provider, never aws.

provider "azurerm" {
  features {}
}

module "aks" {
  source              = "./modules/aks"
  cluster_name        = var.cluster_name
  resource_group_name = var.resource_group_name
}

provider "kubernetes" {
  host                   = module.aks.cluster_endpoint
  cluster_ca_certificate = module.aks.cluster_ca_certificate
  client_certificate     = module.aks.client_certificate
  client_key             = module.aks.client_key
}

provider "kubectl" {
  host                   = module.aks.cluster_endpoint
  cluster_ca_certificate = module.aks.cluster_ca_certificate
  client_certificate     = module.aks.client_certificate
  client_key             = module.aks.client_key
  load_config_file       = false
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
  csr_signer                       = "kubernetes.io/kubelet-serving"
  bootstrap                        = true
  extra_tolerations                = module.aks.tolerations
}
