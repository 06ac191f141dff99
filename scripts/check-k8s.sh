#!/usr/bin/env bash
# Renders the Kubernetes manifests with kustomize and validates them offline against the
# bundled schemas (kubernetes-validate) and for style (yamllint), in a local virtualenv.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv
if [ ! -x "$venv/bin/kubernetes-validate" ] || [ ! -x "$venv/bin/yamllint" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate==1.37.0 yamllint==1.38.0
fi
"$venv/bin/yamllint" -c k8s/.yamllint k8s
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for overlay in k8s/overlays/*/; do
  name=$(basename "$overlay")
  if command -v kubectl >/dev/null 2>&1; then
    kubectl kustomize "$overlay" >"$out/$name.yaml"
  else
    echo "check-k8s: kubectl is not installed; validating the base files only" >&2
    cat k8s/base/*.yaml >"$out/$name.yaml"
  fi
  "$venv/bin/kubernetes-validate" --strict -k 1.32.0 "$out/$name.yaml"
  echo "k8s: overlay $name renders and validates"
done
