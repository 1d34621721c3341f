#!/usr/bin/env bash
# Checks that the repository names one version everywhere a release reads it,
# and that the image pins the nuclei the tests run. The release workflow runs
# it with the tag's version; tests/release.rs runs it on every test run.
#
#   scripts/release-check.sh            check that everything agrees
#   scripts/release-check.sh 0.5.0      ... and that it is 0.5.0 (a tag v0.5.0)
#   scripts/release-check.sh --version  print the version and exit
#
# One version: the operator crate (Cargo.toml; build_info and `--version`
# report it), the chart's version and appVersion (image.tag defaults to
# appVersion), the CRD's app.kubernetes.io/version label, the README's install
# command and a CHANGELOG.md section. The Dockerfile's NUCLEI_VERSION and NUCLEI_TEMPLATES_VERSION
# defaults equal devcluster/tools/versions.env. Set RELEASE_CHECK_ROOT to
# check another tree (the tests do).
set -euo pipefail
root=${RELEASE_CHECK_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
chart=$root/deploy/helm/nuclei-operator
failed=0
fail() { printf 'release-check: %s\n' "$*" >&2; failed=1; }

# The [package] version of the operator crate.
version=$(awk '/^\[package\]/{p=1;next} /^\[/{p=0} p && /^version *=/{gsub(/.*= *"|".*/,"");print;exit}' "$root/Cargo.toml")
[ -n "$version" ] || { echo "release-check: no [package] version in $root/Cargo.toml" >&2; exit 1; }
if [ "${1:-}" = --version ]; then echo "$version"; exit 0; fi

want=${1:-$version}
want=${want#v}
[ "$version" = "$want" ] || fail "Cargo.toml says $version, the tag says $want (bump it before tagging)"
yaml_value() { sed -n "s/^$2: *\"\{0,1\}\([^\"]*\)\"\{0,1\} *$/\1/p" "$1" | head -n1; }
[ "$(yaml_value "$chart/Chart.yaml" version)" = "$want" ] ||
  fail "deploy/helm/nuclei-operator/Chart.yaml version is '$(yaml_value "$chart/Chart.yaml" version)', not $want"
[ "$(yaml_value "$chart/Chart.yaml" appVersion)" = "$want" ] ||
  fail "deploy/helm/nuclei-operator/Chart.yaml appVersion is '$(yaml_value "$chart/Chart.yaml" appVersion)', not $want"
grep -Eq '^  tag: *"?"?$' "$chart/values.yaml" ||
  fail "deploy/helm/nuclei-operator/values.yaml image.tag must stay empty (the chart's appVersion)"
for f in "$root"/deploy/crds/*.yaml "$chart"/crds/*.yaml; do
  grep -Eq "^    app.kubernetes.io/version: '?\"?$want'?\"?$" "$f" ||
    fail "${f#"$root"/} is not labelled app.kubernetes.io/version: $want (regenerate: NUCLEI_UPDATE_CRD=1 cargo test --lib crd)"
done
grep -Eq "^## \[$want\]" "$root/CHANGELOG.md" ||
  fail "CHANGELOG.md has no '## [$want]' section"
grep -q -- "--version $want " "$root/README.md" ||
  fail "README.md's install command does not name --version $want"

# shellcheck source=../devcluster/tools/versions.env
source "$root/devcluster/tools/versions.env"
for arg in NUCLEI_VERSION NUCLEI_TEMPLATES_VERSION; do
  pinned=$(sed -n "s/^ARG $arg=//p" "$root/Dockerfile")
  [ "$pinned" = "${!arg}" ] ||
    fail "Dockerfile pins $arg=$pinned, devcluster/tools/versions.env says ${!arg}"
done

[ "$failed" = 0 ] || exit 1
echo "release-check: $want everywhere"
