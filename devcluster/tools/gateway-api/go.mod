module nuclei-operator/devcluster/tools/gateway-api

go 1.26.0

// Not built: build.sh downloads this module (checked against go.sum) and
// copies the project's published standard-channel CRDs out of it.
require sigs.k8s.io/gateway-api v1.6.3
