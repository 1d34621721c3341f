module nuclei-operator/devcluster/tools/reports

go 1.26.0

// Not built: build.sh downloads these modules (checked against go.sum) and
// copies the projects' published report CRDs out of them: OpenReports'
// Report, and the Policy WG's PolicyReport as Kyverno ships it.
require (
	github.com/kyverno/kyverno v1.19.1
	github.com/openreports/reports-api v0.2.1
)
