#!/bin/sh
# Writes a kubeconfig for a GPU host's vknf agent (or watchdog) from its ServiceAccount token.
#
#   deploy/make-kubeconfig.sh [vknf-agent|vknf-watchdog] > kubeconfig
#   scp kubeconfig gpu-1:/etc/vknf/kubeconfig   # root-owned, mode 0600; see docs/kubernetes.md
#
# Run it with kubectl pointing at the cluster, after `kubectl apply -f deploy/rbac.yaml`.
# VKNF_TOKEN_DURATION (e.g. 8760h) asks for a time-bound token (`kubectl create token`) instead
# of the long-lived Secret token.
set -eu

account="${1:-vknf-agent}"
namespace=vknf-system

case "$account" in
    vknf-agent|vknf-watchdog) ;;
    *) echo "usage: $0 [vknf-agent|vknf-watchdog]" >&2; exit 2 ;;
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
        echo "no token in secret $namespace/$account-token: apply deploy/rbac.yaml first" >&2
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
