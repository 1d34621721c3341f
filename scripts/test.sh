#!/usr/bin/env bash
# Runs the whole test suite: builds the real test tools when missing (etcd,
# kube-apiserver, kube-controller-manager, nuclei, helm, promtool, and the
# Gateway API and report CRDs — tens of minutes cold),
# checks formatting and lints, then unit, component and end-to-end tests. The
# end-to-end tests start their own local control plane (devcluster) on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n==> %s\n' "$*"; }

step "building missing test tools"
devcluster/tools/build.sh

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo doc (module docs link only to what exists)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked

step "building binaries (the process kubelet runs them as pods)"
cargo build --workspace --bins --locked

step "tests (unit, component, end-to-end)"
cargo test --workspace --locked --no-fail-fast -- --test-threads="${TEST_THREADS:-4}"
