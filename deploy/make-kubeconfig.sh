#!/bin/sh
# Writes a kubeconfig for a GPU host's vknf agent (or the watchdog) from its ServiceAccount token.
#
#   deploy/make-kubeconfig.sh host gpu-1 > kubeconfig      # ServiceAccount vknf-hosts/gpu-1
#   deploy/make-kubeconfig.sh watchdog > kubeconfig        # ServiceAccount vknf-system/vknf-watchdog
#   scp kubeconfig gpu-1:/etc/vknf/kubeconfig   # root-owned, mode 0600; see docs/kubernetes.md
#
# Run it with kubectl pointing at the cluster, after applying deploy/rbac.yaml and (for a host)
# `deploy/render.sh host NAME | kubectl apply -f -`. Each host gets its own identity: never copy
# one host's kubeconfig to another (deploy/admission.yaml ties the identity to one address).
# VKNF_TOKEN_DURATION (e.g. 8760h) asks for a time-bound token (`kubectl create token`) instead
# of the long-lived Secret token.
set -eu

usage() { echo "usage: $0 host HOST_NAME | watchdog" >&2; exit 2; }
case "${1:-}" in
    host) [ $# -eq 2 ] || usage; account="$2"; namespace=vknf-hosts ;;
    watchdog) [ $# -eq 1 ] || usage; account=vknf-watchdog; namespace=vknf-system ;;
    *) usage ;;
esac

if [ -n "${VKNF_TOKEN_DURATION:-}" ]; then
    token="$(kubectl -n "$namespace" create token "$account" --duration "$VKNF_TOKEN_DURATION")"
else
    # The token controller fills the Secret shortly after it is created.
    token=""
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        token="$(kubectl -n "$namespace" get secret "$account-token" -o jsonpath='{.data.token}' 2>/dev/null | base64 -d || true)"
        [ -n "$token" ] && break
        sleep 1
    done
    if [ -z "$token" ]; then
        echo "no token in secret $namespace/$account-token: apply deploy/rbac.yaml (and deploy/render.sh host NAME) first" >&2
        exit 1
    fi
fi

cluster="$(kubectl config view --minify -o jsonpath='{.clusters[0].name}')"
server="$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')"
ca="$(kubectl config view --minify --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')"
if [ -z "$ca" ]; then
    ca_file="$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.certificate-authority}')"
    ca="$(base64 -w0 < "$ca_file")"
fi

cat <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
  - name: $cluster
    cluster:
      server: $server
      certificate-authority-data: $ca
users:
  - name: $account
    user:
      token: $token
contexts:
  - name: $account@$cluster
    context:
      cluster: $cluster
      user: $account
      namespace: $namespace
current-context: $account@$cluster
KUBECONFIG
