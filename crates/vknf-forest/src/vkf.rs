//! The `.vkf` file: a versioned, checksummed serialisation of [`GpuForest`].
//!
//! The loader treats the bytes as hostile: the checksum is verified first, every declared
//! count is checked against the actual length before anything is allocated, and the node
//! structure is re-validated (children strictly forward and inside their tree, every node
//! reached exactly once, depth within `max_depth`) so no traversal can loop or read out of
//! bounds. Layout details are in `docs/vkf-format.md`.

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::layout::{FLAG_BIT, GpuForest, LOW30_MASK, NodeFormat, NodeWords};
use crate::model::MAX_TOTAL_NODES;
use crate::model::{Aggregate, ClassLabels, MissingPolicy, PostTransform, Task};
use crate::validate::{DEFAULT_MAX_DEPTH, MAX_FEATURES, MAX_OUTPUTS};

/// First 8 bytes of every `.vkf` file.
pub const MAGIC: [u8; 8] = *b"VKNFFRST";
/// The format version this crate writes for a forest without metadata, and reads.
pub const VERSION: u32 = 1;
/// The format version of a file with a metadata section (written only when there is metadata, so
/// that files without any stay readable by version 1 readers).
pub const VERSION_METADATA: u32 = 2;
/// Longest metadata key, in bytes.
pub const MAX_METADATA_KEY: usize = 256;
/// Longest metadata value, in bytes.
pub const MAX_METADATA_VALUE: usize = 1 << 16;
/// Bytes before the first section.
pub const HEADER_LEN: usize = 72;
/// Bytes of the trailing SHA-256.
pub const CHECKSUM_LEN: usize = 32;

const TASK_REGRESSOR: u32 = 0;
const TASK_CLASSIFIER_INT64: u32 = 1;
const TASK_CLASSIFIER_STRINGS: u32 = 2;
const FLAG_BINARY_COMPLEMENT: u32 = 1;
const FLAG_ROUTE_NAN: u32 = 2;
/// Longest class label accepted when loading.
pub const MAX_LABEL_BYTES: usize = 1 << 16;

/// Why a `.vkf` file was rejected.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum FormatError {
    /// Shorter than header plus checksum.
    #[error("file is {0} bytes, too short for a .vkf file")]
    TooShort(usize),
    /// Wrong magic.
    #[error("not a .vkf file (bad magic)")]
    BadMagic,
    /// Unknown version.
    #[error("unsupported .vkf version {0} (this build reads versions {VERSION} and {VERSION_METADATA})")]
    UnsupportedVersion(u32),
    /// The SHA-256 trailer does not match the content.
    #[error("checksum mismatch: the file is corrupt or truncated")]
    ChecksumMismatch,
    /// A header field has an invalid value.
    #[error("invalid header field {field}: {value}")]
    BadHeader {
        /// Field name.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// Declared sizes do not add up to the file length.
    #[error("declared sizes need {expected} bytes but the file has {actual}")]
    LengthMismatch {
        /// Bytes the header implies (saturating).
        expected: u64,
        /// Bytes present.
        actual: u64,
    },
    /// The labels section is malformed.
    #[error("bad labels section: {0}")]
    BadLabels(String),
    /// The node structure is invalid.
    #[error("tree {tree}, node {node}: {problem}")]
    BadNode {
        /// Tree index.
        tree: usize,
        /// Global node index.
        node: usize,
        /// What is wrong.
        problem: String,
    },
    /// Tree roots are not increasing or do not cover the nodes.
    #[error("bad tree_roots: {0}")]
    BadRoots(String),
    /// A leaf entry is invalid.
    #[error("leaf entry {index}: {problem}")]
    BadLeafEntry {
        /// Pair index.
        index: usize,
        /// What is wrong.
        problem: String,
    },
    /// A base value is not finite.
    #[error("base value {0} is not finite")]
    BadBaseValue(f32),
    /// The metadata section is malformed.
    #[error("bad metadata section: {0}")]
    BadMetadata(String),
}

/// Key-value text the model carries beside the forest (version 2 files), for example the digest
/// of the feature schema it was trained with. Keys are unique and sorted.
pub type VkfMetadata = std::collections::BTreeMap<String, String>;

impl GpuForest {
    /// Serialises to the `.vkf` format (see `docs/vkf-format.md`).
    pub fn to_vkf_bytes(&self) -> Vec<u8> {
        self.to_vkf_bytes_with_metadata(&VkfMetadata::new())
    }

    /// Serialises with a metadata section: version 2 when `metadata` is not empty, else the
    /// same bytes as [`GpuForest::to_vkf_bytes`]. Keys longer than [`MAX_METADATA_KEY`] or values
    /// longer than [`MAX_METADATA_VALUE`] make a file the reader refuses; callers check them.
    pub fn to_vkf_bytes_with_metadata(&self, metadata: &VkfMetadata) -> Vec<u8> {
        let (task, labels) = match &self.task {
            Task::Regressor => (TASK_REGRESSOR, Vec::new()),
            Task::Classifier {
                labels: ClassLabels::Int64(v),
            } => (TASK_CLASSIFIER_INT64, v.iter().flat_map(|l| l.to_le_bytes()).collect()),
            Task::Classifier {
                labels: ClassLabels::Strings(v),
            } => {
                let mut out = Vec::new();
                for s in v {
                    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                    out.extend_from_slice(s.as_bytes());
                }
                (TASK_CLASSIFIER_STRINGS, out)
            }
        };
        let w = self.node_format.words();
        let mut flags = 0;
        if self.binary_complement {
            flags |= FLAG_BINARY_COMPLEMENT;
        }
        if self.missing == MissingPolicy::Route {
            flags |= FLAG_ROUTE_NAN;
        }
        let mut out = Vec::with_capacity(
            HEADER_LEN
                + 4 * (self.nodes.len() + self.tree_roots.len() + self.leaf_entries.len() + self.base_values.len())
                + labels.len()
                + CHECKSUM_LEN,
        );
        out.extend_from_slice(&MAGIC);
        let mut meta = Vec::new();
        for (key, value) in metadata {
            meta.extend_from_slice(&(key.len() as u32).to_le_bytes());
            meta.extend_from_slice(key.as_bytes());
            meta.extend_from_slice(&(value.len() as u32).to_le_bytes());
            meta.extend_from_slice(value.as_bytes());
        }
        let header: [u32; 13] = [
            if meta.is_empty() { VERSION } else { VERSION_METADATA },
            task,
            self.n_features,
            self.n_outputs,
            self.n_trees,
            self.max_depth,
            w as u32,
            (self.nodes.len() / w) as u32,
            (self.leaf_entries.len() / 2) as u32,
            match self.aggregate {
                Aggregate::Sum => 0,
                Aggregate::Average => 1,
            },
            match self.post_transform {
                PostTransform::None => 0,
                PostTransform::Logistic => 1,
                PostTransform::Softmax => 2,
            },
            flags,
            self.base_values.len() as u32,
        ];
        for v in header {
            out.extend_from_slice(&v.to_le_bytes());
        }
        // Version 1: reserved (0), keeps the u64 aligned; version 2: the metadata section's length.
        out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        out.extend_from_slice(&(labels.len() as u64).to_le_bytes());
        debug_assert_eq!(out.len(), HEADER_LEN);
        for v in self.nodes.iter().chain(&self.tree_roots).chain(&self.leaf_entries) {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for v in &self.base_values {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&labels);
        out.extend_from_slice(&meta);
        let digest = Sha256::digest(&out);
        out.extend_from_slice(&digest);
        out
    }

    /// Parses and fully re-validates a `.vkf` file (its metadata, if any, is checked and dropped).
    pub fn from_vkf_bytes(bytes: &[u8]) -> Result<Self, FormatError> {
        Self::from_vkf_bytes_with_metadata(bytes).map(|(forest, _)| forest)
    }

    /// Parses and fully re-validates a `.vkf` file, with its metadata (empty for version 1).
    pub fn from_vkf_bytes_with_metadata(bytes: &[u8]) -> Result<(Self, VkfMetadata), FormatError> {
        if bytes.len() < HEADER_LEN + CHECKSUM_LEN {
            return Err(FormatError::TooShort(bytes.len()));
        }
        if bytes[..8] != MAGIC {
            return Err(FormatError::BadMagic);
        }
        let (body, digest) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
        let version = u32_at(body, 8);
        if version != VERSION && version != VERSION_METADATA {
            return Err(FormatError::UnsupportedVersion(version));
        }
        if Sha256::digest(body).as_slice() != digest {
            return Err(FormatError::ChecksumMismatch);
        }
        let h = |i: usize| u32_at(body, 12 + 4 * i);
        let bad = |field, value: u32| FormatError::BadHeader {
            field,
            value: u64::from(value),
        };
        let (task_code, n_features, n_outputs, n_trees, max_depth) = (h(0), h(1), h(2), h(3), h(4));
        let (words, n_nodes, n_pairs, aggregate, post, flags, n_base) = (h(5), h(6), h(7), h(8), h(9), h(10), h(11));
        let meta_len = u32_at(body, 60);
        if version == VERSION && meta_len != 0 {
            return Err(bad("reserved", meta_len));
        }
        if version == VERSION_METADATA && meta_len == 0 {
            return Err(bad("metadata_len", meta_len));
        }
        let labels_len = u64::from_le_bytes(body[64..72].try_into().expect("8 bytes"));

        if n_features == 0 || u64::from(n_features) > MAX_FEATURES {
            return Err(bad("n_features", n_features));
        }
        if n_outputs == 0 || u64::from(n_outputs) > MAX_OUTPUTS {
            return Err(bad("n_outputs", n_outputs));
        }
        if n_trees == 0 {
            return Err(bad("n_trees", n_trees));
        }
        if max_depth > DEFAULT_MAX_DEPTH {
            return Err(bad("max_depth", max_depth));
        }
        let node_format = match words {
            2 => NodeFormat::Compact,
            4 => NodeFormat::Wide,
            _ => return Err(bad("words_per_node", words)),
        };
        if n_nodes as usize > MAX_TOTAL_NODES || n_nodes < n_trees {
            return Err(bad("n_nodes", n_nodes));
        }
        let aggregate = match aggregate {
            0 => Aggregate::Sum,
            1 => Aggregate::Average,
            _ => return Err(bad("aggregate", aggregate)),
        };
        let post_transform = match post {
            0 => PostTransform::None,
            1 => PostTransform::Logistic,
            2 => PostTransform::Softmax,
            _ => return Err(bad("post_transform", post)),
        };
        if flags & !(FLAG_BINARY_COMPLEMENT | FLAG_ROUTE_NAN) != 0 {
            return Err(bad("flags", flags));
        }
        if n_base != 0 && n_base != n_outputs {
            return Err(bad("n_base_values", n_base));
        }
        if task_code == TASK_REGRESSOR && labels_len != 0 {
            return Err(FormatError::BadLabels("a regressor has no labels".into()));
        }
        if task_code > TASK_CLASSIFIER_STRINGS {
            return Err(bad("task", task_code));
        }

        // All sizes in u64 so hostile counts cannot overflow before the length check.
        let word_count =
            u64::from(n_nodes) * u64::from(words) + u64::from(n_trees) + 2 * u64::from(n_pairs) + u64::from(n_base);
        let expected = (HEADER_LEN as u64)
            .saturating_add(4 * word_count)
            .saturating_add(labels_len)
            .saturating_add(u64::from(meta_len));
        if expected != body.len() as u64 {
            return Err(FormatError::LengthMismatch {
                expected: expected.saturating_add(CHECKSUM_LEN as u64),
                actual: bytes.len() as u64,
            });
        }

        let mut cursor = HEADER_LEN;
        let mut take_u32s = |count: usize| -> Vec<u32> {
            let v = body[cursor..cursor + 4 * count]
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect();
            cursor += 4 * count;
            v
        };
        let nodes = take_u32s(n_nodes as usize * words as usize);
        let tree_roots = take_u32s(n_trees as usize);
        let leaf_entries = take_u32s(2 * n_pairs as usize);
        let base_values: Vec<f32> = take_u32s(n_base as usize).into_iter().map(f32::from_bits).collect();
        let (body, meta_bytes) = body.split_at(body.len() - meta_len as usize);
        let metadata = parse_metadata(meta_bytes)?;
        let label_bytes = &body[body.len() - labels_len as usize..];

        let task = match task_code {
            TASK_REGRESSOR => Task::Regressor,
            TASK_CLASSIFIER_INT64 => Task::Classifier {
                labels: ClassLabels::Int64(parse_int_labels(label_bytes, n_outputs)?),
            },
            _ => Task::Classifier {
                labels: ClassLabels::Strings(parse_string_labels(label_bytes, n_outputs)?),
            },
        };
        if let Some(b) = base_values.iter().find(|b| !b.is_finite()) {
            return Err(FormatError::BadBaseValue(*b));
        }
        let binary_complement = flags & FLAG_BINARY_COMPLEMENT != 0;
        if binary_complement && (!task.is_classifier() || n_outputs != 2 || post_transform != PostTransform::None) {
            return Err(bad("flags", flags));
        }

        let forest = GpuForest {
            task,
            n_features,
            n_outputs,
            n_trees,
            max_depth,
            node_format,
            nodes,
            tree_roots,
            leaf_entries,
            aggregate,
            post_transform,
            base_values,
            binary_complement,
            missing: if flags & FLAG_ROUTE_NAN != 0 {
                MissingPolicy::Route
            } else {
                MissingPolicy::Reject
            },
        };
        forest.check_layout()?;
        Ok((forest, metadata))
    }

    /// Re-validates the node structure of a layout (done by [`GpuForest::from_vkf_bytes`]).
    pub fn check_layout(&self) -> Result<(), FormatError> {
        let w = self.node_format.words();
        let n_nodes = self.nodes.len() / w;
        if self.nodes.len() % w != 0 || self.leaf_entries.len() % 2 != 0 {
            return Err(FormatError::BadRoots("array lengths are not whole nodes/pairs".into()));
        }
        if self.tree_roots.len() != self.n_trees as usize || self.tree_roots.first() != Some(&0) {
            return Err(FormatError::BadRoots("the first tree must start at node 0".into()));
        }
        for pair in self.tree_roots.windows(2) {
            if pair[1] <= pair[0] {
                return Err(FormatError::BadRoots(format!(
                    "roots must increase strictly ({} then {})",
                    pair[0], pair[1]
                )));
            }
        }
        if let Some(&last) = self.tree_roots.last()
            && last as usize >= n_nodes
        {
            return Err(FormatError::BadRoots(format!(
                "root {last} is past the last node ({n_nodes} nodes)"
            )));
        }
        let n_pairs = self.leaf_entries.len() / 2;
        for (index, pair) in self.leaf_entries.chunks_exact(2).enumerate() {
            if pair[0] >= self.n_outputs {
                return Err(FormatError::BadLeafEntry {
                    index,
                    problem: format!("output {} out of range", pair[0]),
                });
            }
            if !f32::from_bits(pair[1]).is_finite() {
                return Err(FormatError::BadLeafEntry {
                    index,
                    problem: "weight is not finite".into(),
                });
            }
        }

        // depth[i] = internal nodes above i; UNSET until its parent is seen. Children are
        // strictly after their parent, so one forward pass sees every parent first.
        const UNSET: u32 = u32::MAX;
        let mut depth = vec![UNSET; n_nodes];
        // (first entry, entries, node) of each leaf whose entries are out of line.
        let mut ranges: Vec<(u64, u64, usize)> = Vec::new();
        for (t, &root) in self.tree_roots.iter().enumerate() {
            let start = root as usize;
            let end = self.tree_roots.get(t + 1).map_or(n_nodes, |&r| r as usize);
            depth[start] = 0;
            for i in start..end {
                let err = |problem: String| FormatError::BadNode {
                    tree: t,
                    node: i,
                    problem,
                };
                let d = depth[i];
                if d == UNSET {
                    return Err(err("unreachable from its root".into()));
                }
                let words = &self.nodes[i * w..(i + 1) * w];
                let decoded = self
                    .node_format
                    .decode(&self.nodes, i)
                    .ok_or_else(|| err("out of range".into()))?;
                let (feature, threshold, left) = match decoded {
                    NodeWords::Leaf { w0, w1 } => {
                        if node_format_extra_words_set(self.node_format, words) {
                            return Err(err("reserved words of a leaf are not zero".into()));
                        }
                        let payload = w0 & LOW30_MASK;
                        if w0 & FLAG_BIT != 0 {
                            if payload >= self.n_outputs {
                                return Err(err(format!("inline output {payload} out of range")));
                            }
                            if !f32::from_bits(w1).is_finite() {
                                return Err(err("inline weight is not finite".into()));
                            }
                        } else {
                            let first = u64::from(w1);
                            if first + u64::from(payload) > n_pairs as u64 {
                                return Err(err(format!(
                                    "leaf entries {first}..{} out of range ({n_pairs} pairs)",
                                    first + u64::from(payload)
                                )));
                            }
                            if payload > 0 {
                                ranges.push((first, u64::from(payload), i));
                            }
                        }
                        continue;
                    }
                    NodeWords::Internal {
                        feature,
                        threshold,
                        left,
                        ..
                    } => (feature, threshold, left),
                };
                if d >= self.max_depth {
                    return Err(err(format!("deeper than max_depth {}", self.max_depth)));
                }
                if left == i {
                    return Err(err("left child is the node itself (would loop)".into()));
                }
                if self.node_format == NodeFormat::Wide && words[3] != 0 {
                    return Err(err("reserved word 3 is not zero".into()));
                }
                if feature >= self.n_features {
                    return Err(err(format!("feature {feature} out of range")));
                }
                if f32::from_bits(threshold).is_nan() {
                    return Err(err("threshold is NaN".into()));
                }
                if left <= i || left + 1 >= end {
                    return Err(err(format!(
                        "children {left},{} not strictly after the node inside its tree (ends at {end})",
                        left + 1
                    )));
                }
                for child in [left, left + 1] {
                    if depth[child] != UNSET {
                        return Err(err(format!("child {child} has two parents")));
                    }
                    depth[child] = d + 1;
                }
            }
        }
        // Each entry belongs to one leaf at most: a row's walks then read at most every entry once
        // over all trees, so a leaf cannot make the kernel loop over the same long range tree after
        // tree (the kernel bounds a leaf's entries by the buffer's length only, since a leaf may name an
        // output twice).
        ranges.sort_unstable();
        for pair in ranges.windows(2) {
            let ((first, count, node), (next, _, other)) = (pair[0], pair[1]);
            if first + count > next {
                return Err(FormatError::BadLeafEntry {
                    index: next as usize,
                    problem: format!("shared by the leaves at nodes {node} and {other}"),
                });
            }
        }
        Ok(())
    }
}

fn node_format_extra_words_set(format: NodeFormat, words: &[u32]) -> bool {
    format == NodeFormat::Wide && (words[2] != 0 || words[3] != 0)
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes"))
}

fn parse_int_labels(bytes: &[u8], n: u32) -> Result<Vec<i64>, FormatError> {
    if bytes.len() as u64 != 8 * u64::from(n) {
        return Err(FormatError::BadLabels(format!(
            "{} bytes for {n} int64 labels",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect())
}

fn parse_string_labels(mut bytes: &[u8], n: u32) -> Result<Vec<String>, FormatError> {
    let mut labels = Vec::new();
    for i in 0..n {
        if bytes.len() < 4 {
            return Err(FormatError::BadLabels(format!("label {i} is truncated")));
        }
        let len = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")) as usize;
        bytes = &bytes[4..];
        if len > MAX_LABEL_BYTES || len > bytes.len() {
            return Err(FormatError::BadLabels(format!("label {i} has bad length {len}")));
        }
        let s = std::str::from_utf8(&bytes[..len])
            .map_err(|_| FormatError::BadLabels(format!("label {i} is not UTF-8")))?;
        labels.push(s.to_owned());
        bytes = &bytes[len..];
    }
    if !bytes.is_empty() {
        return Err(FormatError::BadLabels(format!("{} trailing bytes", bytes.len())));
    }
    Ok(labels)
}

/// Parses the metadata section: entries `u32 key length, key, u32 value length, value`, UTF-8,
/// keys strictly increasing (so a file has one reading), nothing left over.
fn parse_metadata(mut bytes: &[u8]) -> Result<VkfMetadata, FormatError> {
    let mut metadata = VkfMetadata::new();
    while !bytes.is_empty() {
        let key = take_text(&mut bytes, MAX_METADATA_KEY, "key")?;
        let value = take_text(&mut bytes, MAX_METADATA_VALUE, "value")?;
        if metadata.last_key_value().is_some_and(|(last, _)| *last >= key) {
            return Err(FormatError::BadMetadata(format!(
                "key {key:?} is out of order or repeated"
            )));
        }
        metadata.insert(key, value);
    }
    Ok(metadata)
}

fn take_text(bytes: &mut &[u8], limit: usize, what: &str) -> Result<String, FormatError> {
    let bad = |why: String| FormatError::BadMetadata(format!("{what} {why}"));
    if bytes.len() < 4 {
        return Err(bad("is truncated".into()));
    }
    let len = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")) as usize;
    *bytes = &bytes[4..];
    if len > limit || len > bytes.len() {
        return Err(bad(format!("has bad length {len}")));
    }
    let text = std::str::from_utf8(&bytes[..len]).map_err(|_| bad("is not UTF-8".into()))?;
    *bytes = &bytes[len..];
    Ok(text.to_owned())
}
