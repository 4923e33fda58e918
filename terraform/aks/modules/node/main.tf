# In-cluster objects of the virtual node. Every object is a kubectl_manifest (applied like `kubectl apply`,
# compared on the fields written here only), so fields the API server fills in never show as drift.

locals {
  labels = {
    "app.kubernetes.io/name"       = var.name
    "app.kubernetes.io/part-of"    = "k8sgpu"
    "app.kubernetes.io/managed-by" = "terraform"
  }
  provider_secret          = "${var.name}-provider"
  token_secret             = "${var.name}-bootstrap-token"
  credentials_secret       = "${var.name}-node-credentials"
  provider_kubeconfig_dir  = "/etc/k8sgpu/provider"
  provider_kubeconfig_path = "${local.provider_kubeconfig_dir}/kubeconfig"
  # The signer name the CSR API uses for the node's serving certificate.
  csr_signer_name = var.csr_signer == "aws" ? "beta.eks.amazonaws.com/app-serving" : var.csr_signer

  # Rendered from k8sgpu.runtime.rbac.EXTRA_RULES: what the runtime needs beyond its node identity.
  node_rules = [
    {
      apiGroups = [""]
      resources = ["services/status"]
      verbs     = ["get", "patch", "update"]
    },
    {
      apiGroups = ["certificates.k8s.io"]
      resources = ["certificatesigningrequests/approval"]
      verbs     = ["update"]
    },
    {
      apiGroups     = ["certificates.k8s.io"]
      resources     = ["signers"]
      resourceNames = [local.csr_signer_name]
      verbs         = ["approve"]
    },
    {
      apiGroups     = [""]
      resources     = ["nodes"]
      resourceNames = [var.node_name]
      verbs         = ["delete"]
    },
  ]

  # Rendered from k8sgpu.runtime.rbac.ELECTION_RULES: the ServiceAccount's leader election Lease, in this namespace.
  election_rules = [
    {
      apiGroups     = ["coordination.k8s.io"]
      resources     = ["leases"]
      resourceNames = [var.node_name]
      verbs         = ["get", "update"]
    },
    {
      apiGroups = ["coordination.k8s.io"]
      resources = ["leases"]
      verbs     = ["create"]
    },
  ]

  # The runtime's configuration: the same values the root's outputs give `k8sgpu-runtime start --terraform-outputs`.
  runtime_env = merge(var.runtime_env, {
    K8SGPU_NODE_NAME           = var.node_name
    K8SGPU_TENANT_NAMESPACE    = var.tenant_namespace
    K8SGPU_PROVIDER_KUBECONFIG = local.provider_kubeconfig_path
    K8SGPU_CSR_SIGNER          = var.csr_signer
    # The probes below and the runtime's listener name the same port: this variable, nothing else.
    K8SGPU_HEALTH_PORT = tostring(var.health_port)
    # Stopping because this Deployment is deleted (terraform destroy), the runtime removes its node first.
    K8SGPU_DEPLOYMENT = "${var.namespace}/${var.name}"
    }, var.default_runtime_class == "" ? {} : {
    K8SGPU_DEFAULT_RUNTIME_CLASS = var.default_runtime_class
    }, var.bootstrap ? {
    K8SGPU_NODE_CREDENTIALS_SECRET = "${var.namespace}/${local.credentials_secret}"
  } : {})

  # Requests and limits as given, without the quantities set to "" (and without a block left empty).
  resources = {
    for k, v in var.resources : k => { for r, q in v : r => q if q != "" }
    if length([for q in values(v) : q if q != ""]) > 0
  }

  node_taint_toleration = {
    key      = "virtual-kubelet.io/provider"
    operator = "Equal"
    value    = "k8sgpu"
    effect   = "NoSchedule"
  }
  tolerations = concat([local.node_taint_toleration], [
    for t in var.extra_tolerations : { for k, v in t : k => v if v != null }
  ])
}

resource "kubectl_manifest" "namespace" {
  yaml_body = yamlencode({
    apiVersion = "v1"
    kind       = "Namespace"
    metadata   = { name = var.namespace, labels = local.labels }
  })
}

resource "kubectl_manifest" "service_account" {
  yaml_body = yamlencode({
    apiVersion = "v1"
    kind       = "ServiceAccount"
    metadata   = { name = var.name, namespace = var.namespace, labels = local.labels }
  })
  depends_on = [kubectl_manifest.namespace]
}

# The runtime's rules beyond its node identity, granted to the node's user, as runtime/rbac.py says.
resource "kubectl_manifest" "node_role" {
  yaml_body = yamlencode({
    apiVersion = "rbac.authorization.k8s.io/v1"
    kind       = "ClusterRole"
    metadata   = { name = var.name, labels = local.labels }
    rules      = local.node_rules
  })
}

resource "kubectl_manifest" "node_role_binding" {
  yaml_body = yamlencode({
    apiVersion = "rbac.authorization.k8s.io/v1"
    kind       = "ClusterRoleBinding"
    metadata   = { name = var.name, labels = local.labels }
    roleRef    = { apiGroup = "rbac.authorization.k8s.io", kind = "ClusterRole", name = var.name }
    subjects   = [{ apiGroup = "rbac.authorization.k8s.io", kind = "User", name = "system:node:${var.node_name}" }]
  })
  depends_on = [kubectl_manifest.node_role]
}

# RBAC lets the node approve any CSR of its signer, whoever requested it and whatever name it carries. This
# ValidatingAdmissionPolicy (kube-apiserver >= 1.30), rendered from k8sgpu.runtime.rbac.serving_approval_policy,
# refuses the node's approval unless the CSR was requested by the node itself, is of the serving signer and asks for
# exactly O=system:nodes, CN=system:node:<node_name>. Off (var.serving_approval_policy) on an older cluster.
resource "kubectl_manifest" "serving_approval_policy" {
  count = var.serving_approval_policy ? 1 : 0
  yaml_body = yamlencode(merge({
    apiVersion = "admissionregistration.k8s.io/v1"
    kind       = "ValidatingAdmissionPolicy"
    metadata = {
      name = "${var.name}-serving-approval"
    }
    spec = {
      failurePolicy = "Fail"
      matchConstraints = {
        resourceRules = [
          {
            apiGroups   = ["certificates.k8s.io"]
            apiVersions = ["*"]
            operations  = ["UPDATE"]
            resources   = ["certificatesigningrequests/approval"]
          },
        ]
      }
      matchConditions = [
        {
          name       = "node-identity"
          expression = "request.userInfo.username == 'system:node:${var.node_name}'"
        },
      ]
      variables = [
        {
          name       = "idx"
          expression = "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 83, 84, 85, 86, 87, 88, 89, 90, 91, 92, 93, 94, 95, 96, 97, 98, 99, 100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111, 112, 113, 114, 115, 116, 117, 118, 119, 120, 121, 122, 123, 124, 125, 126, 127, 128, 129, 130, 131, 132, 133, 134, 135, 136, 137, 138, 139, 140, 141, 142, 143, 144, 145, 146, 147, 148, 149, 150, 151, 152, 153, 154, 155, 156, 157, 158, 159, 160, 161, 162, 163, 164, 165, 166, 167, 168, 169, 170, 171, 172, 173, 174, 175, 176, 177, 178, 179, 180, 181, 182, 183, 184, 185, 186, 187, 188, 189, 190, 191, 192, 193, 194, 195, 196, 197, 198, 199, 200, 201, 202, 203, 204, 205, 206, 207, 208, 209, 210, 211, 212, 213, 214, 215, 216, 217, 218, 219, 220, 221, 222, 223, 224, 225, 226, 227, 228, 229, 230, 231, 232, 233, 234, 235, 236, 237, 238, 239, 240, 241, 242, 243, 244, 245, 246, 247, 248, 249, 250, 251, 252, 253, 254, 255, 256, 257, 258, 259, 260, 261, 262, 263, 264, 265, 266, 267, 268, 269, 270, 271, 272, 273, 274, 275, 276, 277, 278, 279, 280, 281, 282, 283, 284, 285, 286, 287, 288, 289, 290, 291, 292, 293, 294, 295, 296, 297, 298, 299, 300, 301, 302, 303, 304, 305, 306, 307, 308, 309, 310, 311, 312, 313, 314, 315, 316, 317, 318, 319, 320, 321, 322, 323, 324, 325, 326, 327, 328, 329, 330, 331, 332, 333, 334, 335, 336, 337, 338, 339, 340, 341, 342, 343, 344, 345, 346, 347, 348, 349, 350, 351, 352, 353, 354, 355, 356, 357, 358, 359, 360, 361, 362, 363, 364, 365, 366, 367, 368, 369, 370, 371, 372, 373, 374, 375, 376, 377, 378, 379, 380, 381, 382, 383, 384, 385, 386, 387, 388, 389, 390, 391, 392, 393, 394, 395, 396, 397, 398, 399, 400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417, 418, 419, 420, 421, 422, 423, 424, 425, 426, 427, 428, 429, 430, 431, 432, 433, 434, 435, 436, 437, 438, 439, 440, 441, 442, 443, 444, 445, 446, 447, 448, 449, 450, 451, 452, 453, 454, 455, 456, 457, 458, 459, 460, 461, 462, 463, 464, 465, 466, 467, 468, 469, 470, 471, 472, 473, 474, 475, 476, 477, 478, 479, 480, 481, 482, 483, 484, 485, 486, 487, 488, 489, 490, 491, 492, 493, 494, 495, 496, 497, 498, 499, 500, 501, 502, 503, 504, 505, 506, 507, 508, 509, 510, 511, 512, 513, 514, 515, 516, 517, 518, 519, 520, 521, 522, 523, 524, 525, 526, 527, 528, 529, 530, 531, 532, 533, 534, 535, 536, 537, 538, 539, 540, 541, 542, 543, 544, 545, 546, 547, 548, 549, 550, 551, 552, 553, 554, 555, 556, 557, 558, 559, 560, 561, 562, 563, 564, 565, 566, 567, 568, 569, 570, 571, 572, 573, 574, 575, 576, 577, 578, 579, 580, 581, 582, 583, 584, 585, 586, 587, 588, 589, 590, 591, 592, 593, 594, 595, 596, 597, 598, 599]"
        },
        {
          name       = "b64"
          expression = "'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'"
        },
        {
          name       = "ascii"
          expression = "' !\"#$%&\\'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\\\]^_`abcdefghijklmnopqrstuvwxyz{|}~'"
        },
        {
          name       = "request"
          expression = "string(object.spec.request)"
        },
        {
          name       = "pemBytes"
          expression = "variables.idx.filter(j, j < (size(variables.request) / 4 * 3 - 3 < 600 ? size(variables.request) / 4 * 3 - 3 : 600)).map(j, j % 3 == 0 ? variables.b64.indexOf(variables.request.charAt(j / 3 * 4 + 0)) * 4 + variables.b64.indexOf(variables.request.charAt(j / 3 * 4 + 1)) / 16 : j % 3 == 1 ? (variables.b64.indexOf(variables.request.charAt(j / 3 * 4 + 1)) % 16) * 16 + variables.b64.indexOf(variables.request.charAt(j / 3 * 4 + 2)) / 4 : (variables.b64.indexOf(variables.request.charAt(j / 3 * 4 + 2)) % 4) * 64 + variables.b64.indexOf(variables.request.charAt(j / 3 * 4 + 3)))"
        },
        {
          name       = "pem"
          expression = "variables.pemBytes.map(b, b == 10 ? '\\n' : b >= 32 && b < 127 ? variables.ascii.charAt(b - 32) : '?').join('')"
        },
        {
          name       = "body"
          expression = "variables.pem.startsWith('-----BEGIN CERTIFICATE REQUEST-----\\n') ? variables.pem.substring(36).split('-')[0].replace('\\n', '') : ''"
        },
        {
          name       = "der"
          expression = "variables.body.matches('^[A-Za-z0-9+/]*=*$') ? variables.idx.filter(j, j < (size(variables.body) / 4 * 3 - 3 < 400 ? size(variables.body) / 4 * 3 - 3 : 400)).map(j, j % 3 == 0 ? variables.b64.indexOf(variables.body.charAt(j / 3 * 4 + 0)) * 4 + variables.b64.indexOf(variables.body.charAt(j / 3 * 4 + 1)) / 16 : j % 3 == 1 ? (variables.b64.indexOf(variables.body.charAt(j / 3 * 4 + 1)) % 16) * 16 + variables.b64.indexOf(variables.body.charAt(j / 3 * 4 + 2)) / 4 : (variables.b64.indexOf(variables.body.charAt(j / 3 * 4 + 2)) % 4) * 64 + variables.b64.indexOf(variables.body.charAt(j / 3 * 4 + 3))) : []"
        },
        {
          name       = "cn"
          expression = "'system:node:${var.node_name}'"
        },
        {
          name       = "cnValue"
          expression = "[12] + (size(variables.cn.split('').map(c, variables.ascii.indexOf(c) + 32)) < 128 ? [size(variables.cn.split('').map(c, variables.ascii.indexOf(c) + 32))] : size(variables.cn.split('').map(c, variables.ascii.indexOf(c) + 32)) < 256 ? [129, size(variables.cn.split('').map(c, variables.ascii.indexOf(c) + 32))] : [130, size(variables.cn.split('').map(c, variables.ascii.indexOf(c) + 32)) / 256, size(variables.cn.split('').map(c, variables.ascii.indexOf(c) + 32)) % 256]) + variables.cn.split('').map(c, variables.ascii.indexOf(c) + 32)"
        },
        {
          name       = "cnAttribute"
          expression = "[6, 3, 85, 4, 3] + variables.cnValue"
        },
        {
          name       = "cnRdn"
          expression = "[49] + (size(([48] + (size(variables.cnAttribute) < 128 ? [size(variables.cnAttribute)] : size(variables.cnAttribute) < 256 ? [129, size(variables.cnAttribute)] : [130, size(variables.cnAttribute) / 256, size(variables.cnAttribute) % 256]) + variables.cnAttribute)) < 128 ? [size(([48] + (size(variables.cnAttribute) < 128 ? [size(variables.cnAttribute)] : size(variables.cnAttribute) < 256 ? [129, size(variables.cnAttribute)] : [130, size(variables.cnAttribute) / 256, size(variables.cnAttribute) % 256]) + variables.cnAttribute))] : size(([48] + (size(variables.cnAttribute) < 128 ? [size(variables.cnAttribute)] : size(variables.cnAttribute) < 256 ? [129, size(variables.cnAttribute)] : [130, size(variables.cnAttribute) / 256, size(variables.cnAttribute) % 256]) + variables.cnAttribute)) < 256 ? [129, size(([48] + (size(variables.cnAttribute) < 128 ? [size(variables.cnAttribute)] : size(variables.cnAttribute) < 256 ? [129, size(variables.cnAttribute)] : [130, size(variables.cnAttribute) / 256, size(variables.cnAttribute) % 256]) + variables.cnAttribute))] : [130, size(([48] + (size(variables.cnAttribute) < 128 ? [size(variables.cnAttribute)] : size(variables.cnAttribute) < 256 ? [129, size(variables.cnAttribute)] : [130, size(variables.cnAttribute) / 256, size(variables.cnAttribute) % 256]) + variables.cnAttribute)) / 256, size(([48] + (size(variables.cnAttribute) < 128 ? [size(variables.cnAttribute)] : size(variables.cnAttribute) < 256 ? [129, size(variables.cnAttribute)] : [130, size(variables.cnAttribute) / 256, size(variables.cnAttribute) % 256]) + variables.cnAttribute)) % 256]) + ([48] + (size(variables.cnAttribute) < 128 ? [size(variables.cnAttribute)] : size(variables.cnAttribute) < 256 ? [129, size(variables.cnAttribute)] : [130, size(variables.cnAttribute) / 256, size(variables.cnAttribute) % 256]) + variables.cnAttribute)"
        },
        {
          name       = "subject"
          expression = "[48] + (size(variables.cnRdn) + 23 < 128 ? [size(variables.cnRdn) + 23] : size(variables.cnRdn) + 23 < 256 ? [129, size(variables.cnRdn) + 23] : [130, size(variables.cnRdn) + 23 / 256, size(variables.cnRdn) + 23 % 256]) + [49, 21, 48, 19, 6, 3, 85, 4, 10, 12, 12, 115, 121, 115, 116, 101, 109, 58, 110, 111, 100, 101, 115] + variables.cnRdn"
        },
        {
          name       = "expected"
          expression = "[2, 1, 0] + variables.subject"
        },
        {
          name       = "outer"
          expression = "size(variables.der) < 2 ? 99 : variables.der[1] < 128 ? 2 : variables.der[1] == 129 ? 3 : variables.der[1] == 130 ? 4 : 99"
        },
        {
          name       = "start"
          expression = "size(variables.der) < variables.outer + 2 ? 99 : variables.outer + (variables.der[variables.outer + 1] < 128 ? 2 : variables.der[variables.outer + 1] == 129 ? 3 : variables.der[variables.outer + 1] == 130 ? 4 : 99)"
        },
        {
          name       = "subjectIsTheNode"
          expression = "size(variables.der) >= variables.start + size(variables.expected) && variables.der[0] == 48 && variables.der[variables.outer] == 48 && variables.idx.filter(i, i < size(variables.expected)).all(i, variables.der[variables.start + i] == variables.expected[i])"
        },
      ]
      validations = [
        {
          expression        = "object.spec.username == request.userInfo.username"
          messageExpression = "'k8sgpu: system:node:${var.node_name} may approve only its own kubelet serving certificate: this CSR was requested by ' + object.spec.username + ', not by the node (RBAC cannot tell them apart)'"
          reason            = "Forbidden"
        },
        {
          expression        = "object.spec.signerName == '${local.csr_signer_name}'"
          messageExpression = "'k8sgpu: system:node:${var.node_name} may approve only its own kubelet serving certificate (signer ${local.csr_signer_name}): this CSR is for signer ' + object.spec.signerName"
          reason            = "Forbidden"
        },
        {
          expression = "variables.subjectIsTheNode"
          message    = "k8sgpu: system:node:${var.node_name} may approve only its own kubelet serving certificate: the request's subject is not exactly O=system:nodes, CN=system:node:${var.node_name} (a serving certificate of another node name would let this node pose as that node)"
          reason     = "Forbidden"
        },
      ]
    }
  }, { metadata = { name = "${var.name}-serving-approval", labels = local.labels } }))
}

resource "kubectl_manifest" "serving_approval_policy_binding" {
  count = var.serving_approval_policy ? 1 : 0
  yaml_body = yamlencode(merge({
    apiVersion = "admissionregistration.k8s.io/v1"
    kind       = "ValidatingAdmissionPolicyBinding"
    metadata = {
      name = "${var.name}-serving-approval"
    }
    spec = {
      policyName        = "${var.name}-serving-approval"
      validationActions = ["Deny"]
    }
  }, { metadata = { name = "${var.name}-serving-approval", labels = local.labels } }))
  depends_on = [kubectl_manifest.serving_approval_policy]
}

# Kubelet TLS bootstrapping with a bootstrap token that expires, as kubeadm does: its id, secret and expiration are
# drawn once, at the first apply, and kept in the state (ignore_changes), so later plans are clean. To bootstrap
# again (certificate and token both expired): terraform apply -replace='module.node.terraform_data.bootstrap_token[0]'.
resource "terraform_data" "bootstrap_token" {
  count = var.bootstrap ? 1 : 0
  input = {
    id         = substr(replace(uuid(), "-", ""), 0, 6)
    secret     = substr(replace(uuid(), "-", ""), 0, 16)
    expiration = timeadd(timestamp(), var.bootstrap_token_ttl)
  }
  lifecycle {
    ignore_changes = [input]
  }
}

locals {
  bootstrap_group = "system:bootstrappers:k8sgpu:${var.name}"
  bootstrap_token = var.bootstrap ? terraform_data.bootstrap_token[0].output : { id = "", secret = "", expiration = "" }
}

# The token, read by kube-apiserver (--enable-bootstrap-token-auth) as user system:bootstrap:<id> in
# local.bootstrap_group; kube-controller-manager's tokencleaner deletes it when it expires. Once the node's first
# certificate is stored the runtime spends it (removes its usage and expiration keys: it authenticates no more),
# which this resource ignores.
resource "kubectl_manifest" "bootstrap_token" {
  count = var.bootstrap ? 1 : 0
  yaml_body = yamlencode({
    apiVersion = "v1"
    kind       = "Secret"
    type       = "bootstrap.kubernetes.io/token"
    metadata   = { name = "bootstrap-token-${local.bootstrap_token.id}", namespace = "kube-system", labels = local.labels }
    data = { for k, v in {
      description                    = "k8sgpu: the first client certificate of system:node:${var.node_name}"
      token-id                       = local.bootstrap_token.id
      token-secret                   = local.bootstrap_token.secret
      expiration                     = local.bootstrap_token.expiration
      usage-bootstrap-authentication = "true"
      auth-extra-groups              = local.bootstrap_group
    } : k => base64encode(v) }
  })
  sensitive_fields = ["data"]
  ignore_fields    = ["data"]
}

# Only the token's group may create CSRs and have kube-apiserver-client-kubelet ones approved by
# kube-controller-manager's csrapproving controller (nodeclient); the ServiceAccount may do neither.
resource "kubectl_manifest" "bootstrap_binding" {
  for_each = var.bootstrap ? {
    bootstrapper = "system:node-bootstrapper"
    nodeclient   = "system:certificates.k8s.io:certificatesigningrequests:nodeclient"
  } : {}
  yaml_body = yamlencode({
    apiVersion = "rbac.authorization.k8s.io/v1"
    kind       = "ClusterRoleBinding"
    metadata   = { name = "${var.name}-${each.key}", labels = local.labels }
    roleRef    = { apiGroup = "rbac.authorization.k8s.io", kind = "ClusterRole", name = each.value }
    subjects   = [{ apiGroup = "rbac.authorization.k8s.io", kind = "Group", name = local.bootstrap_group }]
  })
}

# Renewals are asked for by the node itself and approved through selfnodeclient, which approves a CSR only for the
# requester's own name: system:node:<node_name> cannot get a certificate of another node.
resource "kubectl_manifest" "selfnodeclient_binding" {
  count = var.bootstrap ? 1 : 0
  yaml_body = yamlencode({
    apiVersion = "rbac.authorization.k8s.io/v1"
    kind       = "ClusterRoleBinding"
    metadata   = { name = "${var.name}-selfnodeclient", labels = local.labels }
    roleRef    = { apiGroup = "rbac.authorization.k8s.io", kind = "ClusterRole", name = "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient" }
    subjects   = [{ apiGroup = "rbac.authorization.k8s.io", kind = "User", name = "system:node:${var.node_name}" }]
  })
}

# The token may spend itself (patch its own Secret), as k8sgpu.runtime.rbac.spend_rules says.
resource "kubectl_manifest" "bootstrap_spend" {
  count = var.bootstrap ? 1 : 0
  yaml_body = yamlencode({
    apiVersion = "rbac.authorization.k8s.io/v1"
    kind       = "Role"
    metadata   = { name = "${var.name}-bootstrap-spend", namespace = "kube-system", labels = local.labels }
    rules      = [{ apiGroups = [""], resources = ["secrets"], resourceNames = ["bootstrap-token-${local.bootstrap_token.id}"], verbs = ["patch"] }]
  })
}

resource "kubectl_manifest" "bootstrap_spend_binding" {
  count = var.bootstrap ? 1 : 0
  yaml_body = yamlencode({
    apiVersion = "rbac.authorization.k8s.io/v1"
    kind       = "RoleBinding"
    metadata   = { name = "${var.name}-bootstrap-spend", namespace = "kube-system", labels = local.labels }
    roleRef    = { apiGroup = "rbac.authorization.k8s.io", kind = "Role", name = "${var.name}-bootstrap-spend" }
    subjects   = [{ apiGroup = "rbac.authorization.k8s.io", kind = "Group", name = local.bootstrap_group }]
  })
  depends_on = [kubectl_manifest.bootstrap_spend]
}

# The token for the runtime's pod (K8SGPU_BOOTSTRAP_TOKEN); read by the kubelet that starts the pod, not by the
# ServiceAccount. Spent, it is no credential.
resource "kubectl_manifest" "bootstrap_token_copy" {
  count = var.bootstrap ? 1 : 0
  yaml_body = yamlencode({
    apiVersion = "v1"
    kind       = "Secret"
    type       = "Opaque"
    metadata   = { name = local.token_secret, namespace = var.namespace, labels = local.labels }
    data       = { token = base64encode("${local.bootstrap_token.id}.${local.bootstrap_token.secret}") }
  })
  sensitive_fields = ["data"]
  depends_on       = [kubectl_manifest.namespace]
}

# Where the node's client certificate and key are kept for a restarted or failed-over runtime: created empty here
# (RBAC cannot limit create by name), written by the runtime (its data is ignored here), and read and written by
# the ServiceAccount alone, by name.
resource "kubectl_manifest" "node_credentials" {
  count = var.bootstrap ? 1 : 0
  yaml_body = yamlencode({
    apiVersion = "v1"
    kind       = "Secret"
    type       = "Opaque"
    metadata   = { name = local.credentials_secret, namespace = var.namespace, labels = local.labels }
  })
  ignore_fields = ["data"]
  depends_on    = [kubectl_manifest.namespace]
}

resource "kubectl_manifest" "node_credentials_access" {
  count = var.bootstrap ? 1 : 0
  yaml_body = yamlencode({
    apiVersion = "rbac.authorization.k8s.io/v1"
    kind       = "Role"
    metadata   = { name = "${var.name}-node-credentials", namespace = var.namespace, labels = local.labels }
    rules      = [{ apiGroups = [""], resources = ["secrets"], resourceNames = [local.credentials_secret], verbs = ["get", "patch", "update"] }]
  })
  depends_on = [kubectl_manifest.namespace]
}

resource "kubectl_manifest" "node_credentials_access_binding" {
  count = var.bootstrap ? 1 : 0
  yaml_body = yamlencode({
    apiVersion = "rbac.authorization.k8s.io/v1"
    kind       = "RoleBinding"
    metadata   = { name = "${var.name}-node-credentials", namespace = var.namespace, labels = local.labels }
    roleRef    = { apiGroup = "rbac.authorization.k8s.io", kind = "Role", name = "${var.name}-node-credentials" }
    subjects   = [{ kind = "ServiceAccount", name = var.name, namespace = var.namespace }]
  })
  depends_on = [kubectl_manifest.node_credentials_access]
}

resource "kubectl_manifest" "provider_kubeconfig" {
  yaml_body = yamlencode({
    apiVersion = "v1"
    kind       = "Secret"
    type       = "Opaque"
    metadata   = { name = local.provider_secret, namespace = var.namespace, labels = local.labels }
    data       = { kubeconfig = base64encode(var.tenant_kubeconfig) }
  })
  sensitive_fields = ["data"]
  depends_on       = [kubectl_manifest.namespace]
}

# The GPU catalog, as k8sgpu.runtime.catalog.runtime_class_manifest writes it.
resource "kubectl_manifest" "runtime_class" {
  for_each = var.catalog
  yaml_body = yamlencode({
    apiVersion = "node.k8s.io/v1"
    kind       = "RuntimeClass"
    metadata = {
      name   = each.key
      labels = local.labels
      annotations = merge({
        "limits.k8s.gpu/cpu"     = each.value.cpu
        "limits.k8s.gpu/memory"  = each.value.memory
        "limits.k8s.gpu/default" = each.value.default_limits ? "1" : "0"
        "gpu.k8s.gpu/product"    = each.value.gpu_product
        "gpu.k8s.gpu/count"      = tostring(each.value.gpu_count)
        "gpu.k8s.gpu/handler"    = each.value.handler
      }, each.value.mig_profile == "" ? {} : { "gpu.k8s.gpu/mig-profile" = each.value.mig_profile })
    }
    handler = each.value.handler
    # Each pod takes one k8s.gpu/<name>, of which the node advertises as many as the provider can place now.
    overhead = { podFixed = { "k8s.gpu/${each.key}" = "1" } }
    scheduling = {
      nodeSelector = { "kubernetes.io/hostname" = var.node_name }
      tolerations  = local.tolerations
    }
  })
}

resource "kubectl_manifest" "deployment" {
  yaml_body = yamlencode({
    apiVersion = "apps/v1"
    kind       = "Deployment"
    metadata   = { name = var.name, namespace = var.namespace, labels = local.labels }
    spec = {
      replicas = var.replicas
      # One replica leads (the leader election Lease), the others stand by Ready: a new pod comes up as a standby
      # before an old one goes, and the old leader's stop releases the Lease, so a rollout hands over at once.
      strategy = { type = "RollingUpdate", rollingUpdate = { maxUnavailable = 0, maxSurge = 1 } }
      selector = { matchLabels = { "app.kubernetes.io/name" = var.name } }
      template = {
        metadata = {
          labels = local.labels
          # The scrape convention of Prometheus' kubernetes_sd_configs examples and most charts: scrape this pod's
          # /metrics on the health port (plain HTTP, no credentials, nothing else served there).
          annotations = {
            "prometheus.io/scrape" = "true"
            "prometheus.io/port"   = tostring(var.health_port)
            "prometheus.io/path"   = "/metrics"
          }
        }
        spec = {
          serviceAccountName = var.name
          # Replicas on different nodes where the cluster has them, so one node's loss leaves a standby; preferred,
          # so a one-node cluster still runs them all.
          affinity = {
            podAntiAffinity = {
              preferredDuringSchedulingIgnoredDuringExecution = [{
                weight = 100
                podAffinityTerm = {
                  topologyKey   = "kubernetes.io/hostname"
                  labelSelector = { matchLabels = { "app.kubernetes.io/name" = var.name } }
                }
              }]
            }
          }
          # SIGTERM stops the parts in reverse order (kubelet API, certificates, Services, pods, Lease and status,
          # clients); the grace period lets that finish before SIGKILL.
          terminationGracePeriodSeconds = var.termination_grace_period_seconds
          nodeSelector                  = { "kubernetes.io/os" = "linux" }
          securityContext               = { runAsNonRoot = true, runAsUser = 65532, seccompProfile = { type = "RuntimeDefault" } }
          containers = [{
            name    = "runtime"
            image   = "${var.image}:${var.image_tag}"
            command = ["k8sgpu-runtime", "start"]
            env = concat(
              [for k in sort(keys(local.runtime_env)) : { name = k, value = local.runtime_env[k] }],
              [
                { name = "POD_IP", valueFrom = { fieldRef = { fieldPath = "status.podIP" } } },
                # The leader election's identity (a container restarted in the same pod is the same candidate) and
                # the namespace of its Lease.
                { name = "POD_NAME", valueFrom = { fieldRef = { fieldPath = "metadata.name" } } },
                { name = "POD_NAMESPACE", valueFrom = { fieldRef = { fieldPath = "metadata.namespace" } } },
                { name = "K8SGPU_NODE_ADDRESS", valueFrom = { fieldRef = { fieldPath = "status.podIP" } } },
              ],
              # Needed only while no valid node certificate is stored.
              var.bootstrap ? [{ name = "K8SGPU_BOOTSTRAP_TOKEN", valueFrom = { secretKeyRef = { name = local.token_secret, key = "token" } } }] : []
            )
            # One port serves /healthz, /readyz and /metrics: named `metrics`, the name PodMonitors select (a second
            # name for the same port would be a duplicate port definition).
            ports = [
              { name = "kubelet", containerPort = 10250, protocol = "TCP" },
              { name = "metrics", containerPort = var.health_port, protocol = "TCP" },
            ]
            # The health port listens as soon as the interpreter has imported the runtime, and /healthz stays 200
            # while the start waits (a CSR awaiting approval): a long start is not killed, only not ready. The
            # startup probe gives the import up to 60 s on a slow node; after it, three missed /healthz in a row
            # (a stopped part, a stuck event loop) restart the container. /readyz gates the rollout
            # (wait_for_rollout) on the node being registered.
            startupProbe = {
              httpGet       = { path = "/healthz", port = "metrics", scheme = "HTTP" }
              periodSeconds = 2, timeoutSeconds = 2, failureThreshold = 30
            }
            livenessProbe = {
              httpGet       = { path = "/healthz", port = "metrics", scheme = "HTTP" }
              periodSeconds = 10, timeoutSeconds = 5, failureThreshold = 3
            }
            readinessProbe = {
              httpGet       = { path = "/readyz", port = "metrics", scheme = "HTTP" }
              periodSeconds = 5, timeoutSeconds = 5, failureThreshold = 3
            }
            resources = local.resources
            securityContext = {
              allowPrivilegeEscalation = false
              readOnlyRootFilesystem   = true
              capabilities             = { drop = ["ALL"] }
            }
            volumeMounts = [
              { name = "provider-kubeconfig", mountPath = local.provider_kubeconfig_dir, readOnly = true },
              { name = "tmp", mountPath = "/tmp" },
            ]
          }]
          volumes = [
            { name = "provider-kubeconfig", secret = { secretName = local.provider_secret } },
            # The root filesystem is read-only; certificates and keys the TLS libraries read only from files
            # (the node's client and serving certificates, the kubeconfig's inline CA) pass through /tmp, in memory.
            { name = "tmp", emptyDir = { medium = "Memory", sizeLimit = "16Mi" } },
          ]
        }
      }
    }
  })
  wait_for_rollout = var.wait_for_rollout
  # Deleted in the foreground and waited for: the runtime's pod is gone, so it has removed its node and what the
  # node held on the provider (it reads this Deployment's deletion with the rule below), before the ServiceAccount,
  # the RBAC and the provider Secret go.
  wait       = true
  depends_on = [kubectl_manifest.service_account, kubectl_manifest.provider_kubeconfig, kubectl_manifest.node_role_binding, kubectl_manifest.serving_approval_policy_binding, kubectl_manifest.deployment_reader_binding, kubectl_manifest.leader_election_binding, kubectl_manifest.bootstrap_token, kubectl_manifest.bootstrap_token_copy, kubectl_manifest.bootstrap_binding, kubectl_manifest.bootstrap_spend_binding, kubectl_manifest.selfnodeclient_binding, kubectl_manifest.node_credentials_access_binding]
  lifecycle {
    precondition {
      condition     = var.default_runtime_class == "" || contains(keys(var.catalog), var.default_runtime_class)
      error_message = "default_runtime_class must name an entry of catalog (or be \"\" for none)."
    }
  }
}

# The runtime's ServiceAccount writes the leader election Lease (named after the node) in this namespace. Not the
# node identity: NodeRestriction lets a node write only its own Lease in kube-node-lease.
resource "kubectl_manifest" "leader_election" {
  yaml_body = yamlencode({
    apiVersion = "rbac.authorization.k8s.io/v1"
    kind       = "Role"
    metadata   = { name = "${var.name}-leader-election", namespace = var.namespace, labels = local.labels }
    rules      = local.election_rules
  })
  depends_on = [kubectl_manifest.namespace]
}

resource "kubectl_manifest" "leader_election_binding" {
  yaml_body = yamlencode({
    apiVersion = "rbac.authorization.k8s.io/v1"
    kind       = "RoleBinding"
    metadata   = { name = "${var.name}-leader-election", namespace = var.namespace, labels = local.labels }
    roleRef    = { apiGroup = "rbac.authorization.k8s.io", kind = "Role", name = "${var.name}-leader-election" }
    subjects   = [{ kind = "ServiceAccount", name = var.name, namespace = var.namespace }]
  })
  depends_on = [kubectl_manifest.leader_election]
}

# The runtime's ServiceAccount may read its own Deployment: a stop while it is being deleted is a decommission.
resource "kubectl_manifest" "deployment_reader" {
  yaml_body = yamlencode({
    apiVersion = "rbac.authorization.k8s.io/v1"
    kind       = "Role"
    metadata   = { name = "${var.name}-own-deployment", namespace = var.namespace, labels = local.labels }
    rules      = [{ apiGroups = ["apps"], resources = ["deployments"], resourceNames = [var.name], verbs = ["get"] }]
  })
  depends_on = [kubectl_manifest.namespace]
}

resource "kubectl_manifest" "deployment_reader_binding" {
  yaml_body = yamlencode({
    apiVersion = "rbac.authorization.k8s.io/v1"
    kind       = "RoleBinding"
    metadata   = { name = "${var.name}-own-deployment", namespace = var.namespace, labels = local.labels }
    roleRef    = { apiGroup = "rbac.authorization.k8s.io", kind = "Role", name = "${var.name}-own-deployment" }
    subjects   = [{ kind = "ServiceAccount", name = var.name, namespace = var.namespace }]
  })
  depends_on = [kubectl_manifest.deployment_reader]
}

# The Prometheus Operator's way to scrape the runtimes (every replica: a standby's leader_election_master_status is
# 0): a PodMonitor, since the runtime has no Service. Only when asked for: its CRD must exist before the apply, and a
# plan cannot tell whether it does (kubectl_manifest checks the kind only when it applies).
resource "kubectl_manifest" "pod_monitor" {
  count = var.pod_monitor.enabled ? 1 : 0
  yaml_body = yamlencode({
    apiVersion = "monitoring.coreos.com/v1"
    kind       = "PodMonitor"
    metadata   = { name = var.name, namespace = var.namespace, labels = merge(local.labels, var.pod_monitor.labels) }
    spec = {
      selector            = { matchLabels = { "app.kubernetes.io/name" = var.name } }
      podMetricsEndpoints = [{ port = "metrics", path = "/metrics", scheme = "http", interval = var.pod_monitor.interval }]
    }
  })
  depends_on = [kubectl_manifest.deployment]
}
