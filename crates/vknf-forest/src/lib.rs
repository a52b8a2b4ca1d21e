//! vknf-forest (in progress).
