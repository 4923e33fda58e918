variable "node_name" {
  description = "Name of the virtual node the runtime registers; it authenticates as system:node:<node_name>."
  type        = string
  default     = "k8s.gpu"
  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$", var.node_name)) && length(var.node_name) <= 253
    error_message = "node_name must be a DNS subdomain: lower-case letters, digits, '-' and '.', e.g. \"k8s.gpu\"."
  }
}

variable "namespace" {
  description = "Namespace of the runtime's ServiceAccount, Secrets and Deployment (created by this module)."
  type        = string
  default     = "k8sgpu"
  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.namespace))
    error_message = "namespace must be a DNS label: lower-case letters, digits and '-', at most 63, e.g. \"k8sgpu\"."
  }
}

variable "name" {
  description = "Name of the ServiceAccount and Deployment, and prefix of the cluster-wide RBAC objects."
  type        = string
  default     = "k8sgpu-runtime"
}

variable "tenant_namespace" {
  description = "Your namespace on the GPU provider's cluster."
  type        = string
  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.tenant_namespace))
    error_message = "tenant_namespace must be the namespace your GPU provider gave you (a DNS label, e.g. \"tenant-demo\")."
  }
}

variable "tenant_kubeconfig" {
  description = "The provider's tenant kubeconfig (its text, self-contained: certificates inline). Stored in a Secret."
  type        = string
  sensitive   = true
  validation {
    condition     = can(yamldecode(var.tenant_kubeconfig).clusters)
    error_message = "tenant_kubeconfig must be the text of a kubeconfig (YAML with clusters, users, contexts), e.g. file(\"tenant.kubeconfig\")."
  }
}

variable "catalog" {
  description = "GPU offerings: RuntimeClass name => GPU product (the provider's nvidia.com/gpu.product), GPUs per pod (MIG slices of mig_profile where given), per-pod cpu and memory limits, handler on the provider."
  type = map(object({
    gpu_product    = string
    gpu_count      = number
    cpu            = string
    memory         = string
    handler        = optional(string, "nvidia")
    default_limits = optional(bool, true)
    mig_profile    = optional(string, "")
  }))
  validation {
    condition     = alltrue([for name, c in var.catalog : can(regex("^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", name)) && length(name) <= 63])
    error_message = "catalog: each key is a RuntimeClass name of at most 63 characters (it is also the node's extended resource k8s.gpu/<name>): lower-case letters, digits, '-' and '.', e.g. \"seeweb-nvidia-1xa6000\"."
  }
  validation {
    condition     = alltrue([for c in var.catalog : c.mig_profile == "" || can(regex("^[1-8]g\\.[0-9]+gb(\\+me)?$", c.mig_profile))])
    error_message = "catalog: mig_profile must be a MIG profile as the NVIDIA GPU operator names it (its resource is nvidia.com/mig-<profile>), e.g. mig_profile = \"1g.10gb\", or empty for whole GPUs."
  }
  validation {
    condition     = alltrue([for c in var.catalog : c.gpu_count >= 0 && floor(c.gpu_count) == c.gpu_count])
    error_message = "catalog: gpu_count must be a whole number >= 0, e.g. gpu_count = 1."
  }
  validation {
    condition     = alltrue([for c in var.catalog : can(regex("^([0-9]+m|[0-9]+(\\.[0-9]+)?)$", c.cpu))])
    error_message = "catalog: cpu must be a Kubernetes CPU quantity, e.g. cpu = \"8000m\" or cpu = \"8\"."
  }
  validation {
    condition     = alltrue([for c in var.catalog : can(regex("^[0-9]+(\\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$", c.memory))])
    error_message = "catalog: memory must be a Kubernetes memory quantity, e.g. memory = \"32861620Ki\" or memory = \"32Gi\"."
  }
  validation {
    condition     = alltrue([for c in var.catalog : length(trimspace(c.gpu_product)) > 0 && length(trimspace(c.handler)) > 0])
    error_message = "catalog: gpu_product and handler must not be empty; gpu_product is the provider nodes' nvidia.com/gpu.product label, e.g. \"NVIDIA-RTX-A6000\"."
  }
}

variable "extra_tolerations" {
  description = "Tolerations every GPU RuntimeClass carries besides the virtual node's taint (AKS: node.kubernetes.io/network-unavailable)."
  type = list(object({
    key      = string
    operator = string
    value    = optional(string)
    effect   = optional(string)
  }))
  default = []
}

variable "default_runtime_class" {
  description = "Catalog entry used for pods bound to the node that name no runtimeClassName (e.g. by nodeName); empty: such pods are refused (NoRuntimeClass)."
  type        = string
  default     = ""
}

variable "csr_signer" {
  description = "Signer of the node's kubelet serving certificate: kubernetes.io/kubelet-serving, or aws on EKS."
  type        = string
  default     = "kubernetes.io/kubelet-serving"
  validation {
    condition     = contains(["kubernetes.io/kubelet-serving", "aws"], var.csr_signer)
    error_message = "csr_signer must be \"kubernetes.io/kubelet-serving\" (generic, AKS) or \"aws\" (EKS)."
  }
}

variable "serving_approval_policy" {
  description = "A ValidatingAdmissionPolicy that lets the node approve only its own serving CSR (requested by itself, of the serving signer, for CN=system:node:<node_name>); needs kube-apiserver >= 1.30. False on an older cluster: the node may then approve any CSR of its signer."
  type        = bool
  default     = true
}

variable "bootstrap" {
  description = "Kubelet TLS bootstrapping (generic, AKS): a bootstrap token that expires obtains the node's first client certificate, the node renews its own (selfnodeclient), a Secret keeps it. False on EKS, where the IAM role is the node identity."
  type        = bool
  default     = true
}

variable "bootstrap_token_ttl" {
  description = "Lifetime of the bootstrap token from the first apply, as Terraform's timeadd takes it (kubeadm's default: 24h). The runtime spends it sooner, once the node's first certificate is stored."
  type        = string
  default     = "24h"
  validation {
    condition     = can(regex("^([0-9]+h)?([0-9]+m)?$", var.bootstrap_token_ttl)) && can(timeadd("2000-01-01T00:00:00Z", var.bootstrap_token_ttl)) && timecmp(timeadd("2000-01-01T00:00:00Z", var.bootstrap_token_ttl), "2000-01-01T00:05:00Z") >= 0 && timecmp(timeadd("2000-01-01T00:00:00Z", var.bootstrap_token_ttl), "2000-01-08T00:00:00Z") <= 0
    error_message = "bootstrap_token_ttl must be hours and minutes between 5m and 168h, e.g. \"24h\" or \"1h30m\"."
  }
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

variable "replicas" {
  description = "Runtimes of the node: one leads (a leader election Lease in var.namespace), the others stand by and take over when it stops or dies. 1 turns the election's standby off (the Lease is still taken)."
  type        = number
  default     = 2
  validation {
    condition     = var.replicas >= 1 && floor(var.replicas) == var.replicas
    error_message = "replicas must be a whole number >= 1, e.g. 2."
  }
}

variable "wait_for_rollout" {
  description = "Wait for the Deployment's rollout on apply."
  type        = bool
  default     = true
}

variable "runtime_env" {
  description = "More environment variables of the runtime container (e.g. the EKS role and region)."
  type        = map(string)
  default     = {}
}

variable "health_port" {
  description = "Plain-HTTP port of the runtime's /healthz, /readyz and /metrics (the container port `metrics` its probes name and its prometheus.io/port annotation; the runtime reads it from K8SGPU_HEALTH_PORT). 10248 is the kubelet's healthz port."
  type        = number
  default     = 10248
  validation {
    condition     = var.health_port >= 1 && var.health_port <= 65535 && floor(var.health_port) == var.health_port && var.health_port != 10250
    error_message = "health_port must be a whole port number 1-65535 other than 10250 (the kubelet API's), e.g. 10248."
  }
}

variable "pod_monitor" {
  description = "A monitoring.coreos.com/v1 PodMonitor scraping every runtime's /metrics (container port `metrics`), for a Prometheus Operator: `enabled` (its CRD must be installed first), `labels` its podMonitorSelector wants (e.g. release = \"kube-prometheus-stack\"), `interval`. The pod's prometheus.io/* annotations are there either way."
  type = object({
    enabled  = optional(bool, false)
    labels   = optional(map(string), {})
    interval = optional(string, "30s")
  })
  default = {}
  validation {
    condition     = can(regex("^([0-9]+(ms|s|m|h))+$", var.pod_monitor.interval))
    error_message = "pod_monitor.interval must be a Prometheus duration, e.g. \"30s\" or \"1m\"."
  }
}

variable "resources" {
  description = "CPU and memory of the runtime container. Sized from `make bench` (bench/results/latest.md): RSS 110 MB with 100 pods and 173 MB with 1000; creating 1000 pods took 10.35 CPU-s in 38.6 s (0.27 of a core), idle 0.15 %. One event loop uses at most about one core. Raise memory for many more pods (about 70 KB per pod). A quantity left out keeps its default; \"\" removes it (limits = { cpu = \"\" }: no CPU limit)."
  type = object({
    requests = optional(object({
      cpu    = optional(string, "250m")
      memory = optional(string, "256Mi")
    }), {})
    limits = optional(object({
      cpu    = optional(string, "1")
      memory = optional(string, "512Mi")
    }), {})
  })
  default = {}
  validation {
    condition = alltrue([
      for q in compact(flatten([for v in [var.resources.requests, var.resources.limits] : v == null ? [] : [v.cpu]])) :
      can(regex("^([0-9]+m|[0-9]+(\\.[0-9]+)?)$", q))
    ])
    error_message = "resources: cpu must be a Kubernetes CPU quantity, e.g. \"250m\" or \"1\"."
  }
  validation {
    condition = alltrue([
      for q in compact(flatten([for v in [var.resources.requests, var.resources.limits] : v == null ? [] : [v.memory]])) :
      can(regex("^[0-9]+(\\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$", q))
    ])
    error_message = "resources: memory must be a Kubernetes memory quantity, e.g. \"256Mi\" or \"1Gi\"."
  }
}

variable "termination_grace_period_seconds" {
  description = "Seconds between SIGTERM and SIGKILL: the runtime stops its parts in reverse order (kubelet API, certificates, Services, pods, Lease) and closes its clients."
  type        = number
  default     = 60
  validation {
    condition     = var.termination_grace_period_seconds >= 1 && floor(var.termination_grace_period_seconds) == var.termination_grace_period_seconds
    error_message = "termination_grace_period_seconds must be a whole number of seconds >= 1, e.g. 60."
  }
}
