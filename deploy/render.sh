#!/bin/sh
# Renders the per-namespace and per-host RBAC templates of deploy/ to stdout.
#
#   deploy/render.sh namespace vknf-functions | kubectl apply -f -
#   deploy/render.sh host gpu-1 | kubectl apply -f -
#
# See deploy/rbac.yaml for the whole procedure and docs/security.md for why.
set -eu

here="$(dirname "$0")"
usage() { echo "usage: $0 namespace NAMESPACE | host HOST_NAME" >&2; exit 2; }
[ $# -eq 2 ] || usage
# Both end up in object names and label values: DNS subdomain characters only.
case "$2" in
    ''|*[!a-z0-9.-]*|[.-]*|*[.-]) echo "$0: '$2' is not a valid name (lower-case letters, digits, '-', '.')" >&2; exit 2 ;;
esac
if [ "${#2}" -gt 63 ]; then echo "$0: '$2' is longer than 63 characters" >&2; exit 2; fi
case "$1" in
    namespace) sed "s/FUNCTION_NAMESPACE/$2/g" "$here/rbac-function-namespace.yaml" ;;
    host) sed "s/HOST_NAME/$2/g" "$here/rbac-host.yaml" ;;
    *) usage ;;
esac
