//! vknf-k8s (in progress).
