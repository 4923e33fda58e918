variable "cluster_name" {
  description = "Name of the EKS cluster."
  type        = string
}

variable "region" {
  description = "AWS region of the cluster."
  type        = string
}

variable "role_name" {
  description = "Name of the IAM role the runtime runs as (no permission policy)."
  type        = string
  default     = "k8sgpu-node"
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

variable "trust" {
  description = "Who may assume the role, only ever as session <node_name>: { account_ids = [...], role_arns = [...] }; at least one. With EKS Pod Identity or IRSA: the role they give the runtime's ServiceAccount."
  type = object({
    account_ids = optional(list(string), [])
    role_arns   = optional(list(string), [])
  })
}

# The virtual node and its catalog (module "node"; modules/node/README.md says more).

variable "node_name" {
  description = "Name of the virtual node."
  type        = string
  default     = "k8s.gpu"
}

variable "namespace" {
  description = "Namespace of the runtime's objects."
  type        = string
  default     = "k8sgpu"
}

variable "tenant_namespace" {
  description = "Your namespace on the GPU provider."
  type        = string
}

variable "tenant_kubeconfig" {
  description = "Text of the provider's tenant kubeconfig, self-contained (pass it with -var or TF_VAR_tenant_kubeconfig)."
  type        = string
  sensitive   = true
}

variable "catalog" {
  description = "GPU offerings: RuntimeClass name => { gpu_product, gpu_count, cpu, memory, handler, default_limits, mig_profile }."
  type = map(object({
    gpu_product    = string
    gpu_count      = number
    cpu            = string
    memory         = string
    handler        = optional(string, "nvidia")
    default_limits = optional(bool, true)
    mig_profile    = optional(string, "")
  }))
  default = {
    seeweb-nvidia-1xa6000 = {
      gpu_product = "NVIDIA-RTX-A6000"
      gpu_count   = 1
      cpu         = "8000m"
      memory      = "32861620Ki"
      handler     = "nvidia"
    }
    seeweb-nvidia-2xa6000 = {
      gpu_product = "NVIDIA-RTX-A6000"
      gpu_count   = 2
      cpu         = "16000m"
      memory      = "65723240Ki"
      handler     = "nvidia"
    }
    seeweb-nvidia-1xa100 = {
      gpu_product = "NVIDIA-A100-PCIE-80GB"
      gpu_count   = 1
      cpu         = "16000m"
      memory      = "131446480Ki"
      handler     = "nvidia"
    }
    "k8sgpu-nvidia-a100-mig-1g.10gb" = {
      gpu_product = "NVIDIA-A100-SXM4-80GB"
      gpu_count   = 1
      cpu         = "6"
      memory      = "24Gi"
      handler     = "nvidia"
      mig_profile = "1g.10gb"
    }
  }
}

variable "default_runtime_class" {
  description = "Catalog entry for pods bound to the node with no runtimeClassName; empty: such pods are refused."
  type        = string
  default     = ""
}

variable "image" {
  description = "Container image of the runtime, without tag."
  type        = string
  default     = "k8sgpu-runtime"
}

variable "image_tag" {
  description = "Tag of the runtime's image."
  type        = string
  default     = "0.1.0"
}

variable "wait_for_rollout" {
  description = "Wait for the runtime Deployment's rollout on apply."
  type        = bool
  default     = true
}

variable "health_port" {
  description = "Plain-HTTP port of the runtime's /healthz, /readyz and /metrics (the container port `metrics`)."
  type        = number
  default     = 10248
}

variable "pod_monitor" {
  description = "A Prometheus Operator PodMonitor of the runtimes' /metrics: enabled (its CRD installed first), labels its podMonitorSelector wants, interval (modules/node/README.md)."
  type = object({
    enabled  = optional(bool)
    labels   = optional(map(string))
    interval = optional(string)
  })
  default = {}
}

variable "resources" {
  description = "CPU and memory requests and limits of the runtime container; unset: the node module's, sized from `make bench` (modules/node/README.md)."
  type = object({
    requests = optional(object({
      cpu    = optional(string)
      memory = optional(string)
    }))
    limits = optional(object({
      cpu    = optional(string)
      memory = optional(string)
    }))
  })
  default = {}
}

variable "termination_grace_period_seconds" {
  description = "Seconds the runtime has between SIGTERM and SIGKILL to stop its parts in order."
  type        = number
  default     = 60
}

variable "replicas" {
  description = "Runtimes of the node: one leads (a leader election Lease), the others stand by and take over when it stops or dies."
  type        = number
  default     = 2
}

variable "serving_approval_policy" {
  description = "A ValidatingAdmissionPolicy that lets the node approve only its own serving CSR; needs kube-apiserver >= 1.30 (false on an older cluster)."
  type        = bool
  default     = true
}

