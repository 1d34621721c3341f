#!/usr/bin/env bash
# The operator's main job, locally: start a dev cluster (real etcd,
# kube-apiserver, kube-controller-manager and a process kubelet), install the
# operator with its Helm chart, expose a demo target through an Ingress, and
# print the findings of its scan. Everything stays on loopback.
#
#   scripts/demo.sh          run the demo (the cluster keeps running afterwards)
#   scripts/demo.sh down     stop the cluster and the demo target
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
state=${DEVCLUSTER_STATE_DIR:-${TMPDIR:-/tmp}/nuclei-operator-demo}
target_ip=127.0.0.77
step() { printf '\n==> %s\n' "$*"; }

if [ "${1:-}" = down ]; then
  [ -f "$state/target.pid" ] && kill "$(cat "$state/target.pid")" 2>/dev/null || true
  exec cargo run -q -p devcluster -- --state-dir "$state" down
fi

step "building the test tools when missing (tens of minutes the first time)"
devcluster/tools/build.sh
# Each tool's cache directory (names with '-', like gateway-api, are not read here).
tool_dir() { devcluster/tools/build.sh --print-dir | sed -n "s/^$1=//p"; }
dir_helm=$(tool_dir helm)
dir_nuclei=$(tool_dir nuclei)
helm="$dir_helm/helm"

step "building the operator"
cargo build -q -p nuclei-operator -p devcluster --bins
bin="$root/target/debug"

step "starting the dev cluster"
mkdir -p "$state"
# The process kubelet runs the image "nuclei-operator" as the binaries built
# here, laid out as the Dockerfile lays them out.
cat > "$state/images.yaml" <<YAML
- image: nuclei-operator
  entrypoint: ["/opt/nuclei-operator/bin/nuclei-operator"]
  path: ["/opt/nuclei-operator/bin"]
  env: {HOME: /tmp, NUCLEI_TEMPLATES_PATH: /nuclei-templates}
  files:
    /opt/nuclei-operator/bin/nuclei-operator: $bin/nuclei-operator
    /opt/nuclei-operator/bin/nuclei: $dir_nuclei/nuclei
    /nuclei-templates: $root/testdata/templates
YAML
"$bin/devcluster" --state-dir "$state" down >/dev/null 2>&1 || true
"$bin/devcluster" --state-dir "$state" up --images "$state/images.yaml" --host "demo.nuclei.test=$target_ip" >/dev/null
export KUBECONFIG="$state/admin.kubeconfig"

step "starting the demo target on http://$target_ip:80 (demo.nuclei.test inside the cluster)"
[ -f "$state/target.pid" ] && kill "$(cat "$state/target.pid")" 2>/dev/null || true
python3 scripts/demo-target.py "$target_ip" 80 > "$state/target.log" 2>&1 &
echo $! > "$state/target.pid"

step "installing the operator with Helm (it runs as a pod, with the chart's ServiceAccount)"
"$helm" upgrade --install nuclei-operator deploy/helm/nuclei-operator \
  --namespace nuclei-system --create-namespace --wait --timeout 2m \
  --set image.repository=nuclei-operator --set image.tag=demo \
  --set http.port=18089 --set service.port=18089 --set health.port=18090 \
  --set-json 'templates.defaults=[]' --set operator.logFormat=text \
  --set-json 'targets.allowCidrs=["127.0.0.0/8"]' >/dev/null

step "exposing the target with an annotated Ingress, waiting for its scan"
# It also binds a ServiceAccount to the chart's nuclei-operator-data-reader
# ClusterRole and writes a token of it: /queue and /metrics answer only
# callers the API server allows (HTTP_AUTH=kubernetes, the chart's default).
cargo run -q --example demo -- --reader-token "$state/reader.token" "$root/testdata/demo-ingress.yaml"

cat <<TXT

The cluster keeps running (pods share the host network, so the operator's
ports are on 127.0.0.1):
  export KUBECONFIG=$KUBECONFIG
  kubectl get nucleiscans -A                  # if you have kubectl
  # the operator's queue, as the ServiceAccount demo-queue-reader (token valid 1 h):
  curl -s -H "Authorization: Bearer \$(cat $state/reader.token)" 127.0.0.1:18089/queue
  curl -s 127.0.0.1:18090/readyz              # the probes' port needs no token
  scripts/demo.sh down                        # stop everything
TXT
