#!/usr/bin/env bash
# Sets the one version (see scripts/release-check.sh) to X.Y.Z: the operator
# crate, the chart's version and appVersion, the generated CRDs with their copies
# in the chart, and the README's install command. CHANGELOG.md stays yours to write; the check at the end
# fails until it has a `## [X.Y.Z]` section.
#
#   scripts/bump-version.sh 0.6.0
set -euo pipefail
cd "$(dirname "$0")/.."
v=${1:?usage: scripts/bump-version.sh X.Y.Z}
v=${v#v}
[[ $v =~ ^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$ ]] || { echo "not a version: $v" >&2; exit 2; }
chart=deploy/helm/nuclei-operator
awk -v v="$v" '/^\[package\]/{p=1} /^\[/ && !/^\[package\]/{p=0}
  p && /^version *=/ && !done {print "version = \"" v "\""; done=1; next} {print}' Cargo.toml > Cargo.toml.new
mv Cargo.toml.new Cargo.toml
sed -i -e "s/^version: .*/version: $v/" -e "s/^appVersion: .*/appVersion: \"$v\"/" "$chart/Chart.yaml"
cargo update --workspace --offline >/dev/null 2>&1 || cargo update --workspace
NUCLEI_UPDATE_CRD=1 cargo test --quiet -p nuclei-operator --lib crd >/dev/null
sed -i -e "s/--version [0-9][0-9.]*[-0-9A-Za-z.]* /--version $v /" \
  -e "s#ghcr.io/morten-olsen/nuclei-operator:[0-9][0-9.]*[-0-9A-Za-z.]* #ghcr.io/morten-olsen/nuclei-operator:$v #" README.md
scripts/release-check.sh "$v"
