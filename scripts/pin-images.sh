#!/usr/bin/env bash
# Pins the Dockerfile's base images by digest: resolves each `ARG …_IMAGE=<tag>` to
# `<tag>@sha256:…` with `crane digest` (or `docker buildx imagetools inspect`) and rewrites the
# line. Run where the registries are reachable (a release machine), commit the result, and
# re-run to take a base image's security fixes. The development machines reach no container
# registry, so the committed Dockerfile names tags until this has run.
set -euo pipefail
cd "$(dirname "$0")/.."
resolve() {
  if command -v crane >/dev/null 2>&1; then
    crane digest "$1"
  else
    docker buildx imagetools inspect "$1" --format '{{json .Manifest.Digest}}' | tr -d '"'
  fi
}
while IFS= read -r line; do
  name=${line%%=*}; image=${line#*=}; tag=${image%@*}
  digest=$(resolve "$tag")
  sed -i "s|^ARG $name=.*|ARG $name=$tag@$digest|" Dockerfile
  echo "$name=$tag@$digest"
done < <(sed -n 's/^ARG \([A-Z_]*_IMAGE=.*\)/\1/p' Dockerfile)
