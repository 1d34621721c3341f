# syntax=docker/dockerfile:1
# One image for the operator and its scanner pods: the operator binary, a pinned
# nuclei and a pinned, baked-in nuclei-templates release (scans never download
# templates). Runs as the distroless nonroot user 65532, which the Helm chart's
# restricted securityContext expects.
#
#   docker build -t nuclei-operator:dev .
#
# Releases build it from .github/workflows/release.yml, for linux/amd64 and
# linux/arm64, passing both versions below from devcluster/tools/versions.env.

# Defaults equal to devcluster/tools/versions.env (the nuclei the tests run);
# scripts/release-check.sh fails when they differ.
ARG NUCLEI_VERSION=v3.10.0
ARG NUCLEI_TEMPLATES_VERSION=v10.4.5

# Bookworm, like the runtime image, so the binary's glibc matches.
FROM rust:1.95-bookworm AS operator
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p nuclei-operator --bin nuclei-operator \
 && install -D target/release/nuclei-operator /out/nuclei-operator

FROM golang:1.26-bookworm AS nuclei
ARG NUCLEI_VERSION
ARG NUCLEI_TEMPLATES_VERSION
# Static, as in nuclei's own release builds.
ENV CGO_ENABLED=0 GOBIN=/out GOTOOLCHAIN=local
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    go install -trimpath -ldflags="-s -w" github.com/projectdiscovery/nuclei/v3/cmd/nuclei@${NUCLEI_VERSION}
RUN git clone --depth 1 --branch "${NUCLEI_TEMPLATES_VERSION}" \
      https://github.com/projectdiscovery/nuclei-templates.git /nuclei-templates \
 && rm -rf /nuclei-templates/.git

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=operator /out/nuclei-operator /usr/local/bin/nuclei-operator
COPY --from=nuclei /out/nuclei /usr/local/bin/nuclei
COPY --from=nuclei /nuclei-templates /nuclei-templates
# nuclei writes its config and cache below HOME; the chart mounts /tmp.
ENV NUCLEI_TEMPLATES_PATH=/nuclei-templates HOME=/tmp
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/nuclei-operator"]
CMD ["controller"]
