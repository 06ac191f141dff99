# syntax=docker/dockerfile:1
# One image per service, from one shared build:
#   docker build --build-arg SERVICE=identity -t lianyu/identity:0.1.0 .
# (No container engine runs on the development machines: CI runs scripts/build-release.sh, the
# very command the build stage runs, and tests the binaries and the rendered manifests.)
#
# Base images are pinned by digest: scripts/pin-images.sh resolves each tag below to its
# digest where a registry is reachable and rewrites these ARGs (docs/deploy.md, "Images").
ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# cargo-chef turns the workspace's manifests into a recipe, so the dependencies build in a
# layer of their own that stays cached until Cargo.toml or Cargo.lock change.
FROM ${RUST_IMAGE} AS chef
RUN cargo install --locked cargo-chef@0.1.73
WORKDIR /src

FROM chef AS plan
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build
COPY --from=plan /src/recipe.json recipe.json
# The build's settings (the bundled SQLite's compile flags) before the dependencies are built.
COPY .cargo .cargo
RUN cargo chef cook --release --locked --recipe-path recipe.json \
      -p lianyu-identity -p lianyu-entitlements -p lianyu-live -p lianyu-comarketing
COPY . .
RUN scripts/build-release.sh

# Runtime: distroless "cc" (glibc, libgcc, CA certificates, no shell, no package manager), as
# user 10001, the uid the Deployments run as. The binaries link only glibc and libgcc (`ldd`). No HEALTHCHECK: the
# orchestrator probes gRPC health itself (the Deployments' grpc probes), and a HEALTHCHECK
# would need a probe binary in an image that deliberately has none.
FROM ${RUNTIME_IMAGE}
ARG SERVICE
COPY --from=build /src/target/release/lianyu-${SERVICE} /usr/local/bin/service
USER 10001:10001
EXPOSE 50051
ENTRYPOINT ["/usr/local/bin/service"]
