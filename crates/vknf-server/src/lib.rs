//! vknf-server (in progress).
