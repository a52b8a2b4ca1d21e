//! The .vkf format: round trips, and rejection of corrupt or hostile files.

mod common;

use proptest::prelude::*;
use sha2::{Digest, Sha256};
use vknf_forest::{FormatError, GpuForest, ImportOptions, NodeFormat, VkfMetadata, import_onnx_bytes};

fn small() -> GpuForest {
    let mut c = common::small_classifier();
    c.nodes[0].missing_true = 1;
    import_onnx_bytes(&c.bytes(), &ImportOptions::default(), &mut |_| {})
        .unwrap()
        .compile()
        .unwrap()
}

/// Re-seals a modified body with a valid checksum, to reach the structural checks.
fn reseal(mut bytes: Vec<u8>) -> Vec<u8> {
    let body_len = bytes.len() - 32;
    let digest = Sha256::digest(&bytes[..body_len]);
    bytes[body_len..].copy_from_slice(&digest);
    bytes
}

fn set_u32(bytes: &mut [u8], offset: usize, value: u32) {
    bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
}

const NODES_AT: usize = 72;

#[test]
fn round_trip_is_exact() {
    let f = small();
    assert_eq!(f.node_format, NodeFormat::Compact);
    let bytes = f.to_vkf_bytes();
    assert_eq!(&bytes[..8], b"VKNFFRST");
    assert_eq!(GpuForest::from_vkf_bytes(&bytes).unwrap(), f);
}

#[test]
fn metadata_round_trips_in_version_2_and_no_metadata_stays_version_1() {
    let f = small();
    let plain = f.to_vkf_bytes();
    assert_eq!(f.to_vkf_bytes_with_metadata(&VkfMetadata::new()), plain);
    assert_eq!(u32::from_le_bytes(plain[8..12].try_into().unwrap()), 1);
    let metadata: VkfMetadata = [("vknf.schema_digest", "ab12"), ("a", "")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let bytes = f.to_vkf_bytes_with_metadata(&metadata);
    assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 2);
    assert_eq!(
        GpuForest::from_vkf_bytes_with_metadata(&bytes).unwrap(),
        (f.clone(), metadata)
    );
    assert_eq!(GpuForest::from_vkf_bytes(&bytes).unwrap(), f);
    assert!(GpuForest::from_vkf_bytes_with_metadata(&plain).unwrap().1.is_empty());

    // A version 1 file must not claim metadata, nor a version 2 file lack it.
    let mut b = bytes.clone();
    set_u32(&mut b, 8, 1);
    assert!(matches!(
        GpuForest::from_vkf_bytes(&reseal(b)).unwrap_err(),
        FormatError::BadHeader { field: "reserved", .. }
    ));
    // A metadata length that cuts an entry is refused, not read past.
    let mut b = bytes.clone();
    let len = u32::from_le_bytes(b[60..64].try_into().unwrap());
    set_u32(&mut b, 60, len - 1);
    let labels_len = u64::from_le_bytes(b[64..72].try_into().unwrap());
    b[64..72].copy_from_slice(&(labels_len + 1).to_le_bytes());
    assert!(GpuForest::from_vkf_bytes(&reseal(b)).is_err());
}

#[test]
fn truncation_and_bit_flips_fail_the_checksum() {
    let bytes = small().to_vkf_bytes();
    for cut in [0, 7, 71, 100, bytes.len() - 1] {
        assert!(GpuForest::from_vkf_bytes(&bytes[..cut]).is_err());
    }
    for i in (12..bytes.len()).step_by(7) {
        let mut b = bytes.clone();
        b[i] ^= 0x10;
        assert_eq!(
            GpuForest::from_vkf_bytes(&b).unwrap_err(),
            FormatError::ChecksumMismatch,
            "flip at {i}"
        );
    }
    let mut b = bytes.clone();
    b[0] = b'X';
    assert_eq!(GpuForest::from_vkf_bytes(&b).unwrap_err(), FormatError::BadMagic);
    let mut b = bytes;
    set_u32(&mut b, 8, 99);
    assert_eq!(
        GpuForest::from_vkf_bytes(&b).unwrap_err(),
        FormatError::UnsupportedVersion(99)
    );
}

#[test]
fn huge_declared_sizes_are_rejected_before_allocating() {
    let bytes = small().to_vkf_bytes();
    // n_nodes (header field 6) and n_leaf_entries (field 7) set huge.
    for (offset, value) in [(12 + 4 * 6, 1u32 << 29), (12 + 4 * 7, u32::MAX), (12 + 4 * 3, u32::MAX)] {
        let mut b = bytes.clone();
        set_u32(&mut b, offset, value);
        let err = GpuForest::from_vkf_bytes(&reseal(b)).unwrap_err();
        assert!(
            matches!(err, FormatError::LengthMismatch { .. } | FormatError::BadHeader { .. }),
            "{err}"
        );
    }
    let mut b = bytes;
    b[64..72].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        GpuForest::from_vkf_bytes(&reseal(b)).unwrap_err(),
        FormatError::LengthMismatch { .. }
    ));
}

#[test]
fn structural_corruption_is_caught_even_with_a_valid_checksum() {
    let f = small();
    let bytes = f.to_vkf_bytes();
    // Root (node 0) is internal in Compact format: word 0 holds the left-child delta.
    let root_w0 = f.nodes[0];
    assert_eq!(root_w0 & vknf_forest::LEAF_BIT, 0);

    let mut b = bytes.clone();
    set_u32(&mut b, NODES_AT, root_w0 & !vknf_forest::COMPACT_DELTA_MASK); // delta 0: a self loop
    let err = GpuForest::from_vkf_bytes(&reseal(b)).unwrap_err();
    assert!(err.to_string().contains("would loop"), "{err}");

    let mut b = bytes.clone();
    set_u32(&mut b, NODES_AT, (root_w0 & !vknf_forest::COMPACT_DELTA_MASK) | 500); // past the tree
    let err = GpuForest::from_vkf_bytes(&reseal(b)).unwrap_err();
    assert!(err.to_string().contains("not strictly after"), "{err}");

    let mut b = bytes.clone();
    set_u32(&mut b, NODES_AT + 4, f32::NAN.to_bits());
    let err = GpuForest::from_vkf_bytes(&reseal(b)).unwrap_err();
    assert!(err.to_string().contains("threshold is NaN"), "{err}");

    let mut b = bytes.clone();
    let feature_bits = 3 << vknf_forest::COMPACT_FEATURE_SHIFT;
    set_u32(
        &mut b,
        NODES_AT,
        (root_w0 & !(vknf_forest::COMPACT_FEATURE_MASK << vknf_forest::COMPACT_FEATURE_SHIFT))
            | feature_bits
            | (1 << 20),
    );
    let err = GpuForest::from_vkf_bytes(&reseal(b)).unwrap_err();
    assert!(err.to_string().contains("feature"), "{err}");

    // max_depth lowered below the real depth.
    let mut b = bytes.clone();
    set_u32(&mut b, 12 + 4 * 4, 1);
    let err = GpuForest::from_vkf_bytes(&reseal(b)).unwrap_err();
    assert!(err.to_string().contains("deeper than max_depth 1"), "{err}");

    // Unknown enum values and flags.
    for (field, value) in [(8, 7u32), (9, 9), (10, 1 << 7), (5, 3), (0, 5)] {
        let mut b = bytes.clone();
        set_u32(&mut b, 12 + 4 * field, value);
        assert!(
            matches!(
                GpuForest::from_vkf_bytes(&reseal(b)).unwrap_err(),
                FormatError::BadHeader { .. }
            ),
            "field {field}"
        );
    }
}

/// Two leaves reading one entry range are refused: the kernel bounds a leaf's entries by the buffer
/// only (a leaf may name an output twice), so each entry may belong to one leaf at most.
#[test]
fn leaves_sharing_entries_are_refused() {
    use vknf_forest::{Aggregate, ClassLabels, MissingPolicy, PostTransform, RawForest, Task};
    let mut f = RawForest {
        task: Task::Classifier {
            labels: ClassLabels::Int64(vec![0, 1]),
        },
        n_features: 1,
        n_outputs: 2,
        trees: vec![common::stump(0, &[(0, 0.25), (1, 0.75)], &[(0, 0.5), (1, 0.5)])],
        aggregate: Aggregate::Sum,
        post_transform: PostTransform::None,
        base_values: vec![],
        binary_complement: false,
        missing: MissingPolicy::Reject,
        max_depth_limit: 4,
    }
    .validate()
    .unwrap()
    .compile()
    .unwrap();
    f.check_layout().unwrap();
    let w = f.node_format.words();
    let leaves: Vec<usize> = (0..f.n_nodes())
        .filter(|&i| f.nodes[i * w] & vknf_forest::LEAF_BIT != 0)
        .collect();
    assert_eq!(leaves.len(), 2);
    assert!(leaves.iter().all(|&i| f.nodes[i * w] & vknf_forest::FLAG_BIT == 0));
    f.nodes[leaves[1] * w + 1] = f.nodes[leaves[0] * w + 1];
    let err = f.check_layout().unwrap_err();
    assert!(err.to_string().contains("shared by the leaves"), "{err}");
    // The same in a file.
    let err = GpuForest::from_vkf_bytes(&f.to_vkf_bytes()).unwrap_err();
    assert!(err.to_string().contains("shared by the leaves"), "{err}");
}

#[test]
fn wide_format_round_trips_and_predicts_like_compact() {
    let c = common::small_classifier();
    let compact = import_onnx_bytes(&c.bytes(), &ImportOptions::default(), &mut |_| {})
        .unwrap()
        .compile()
        .unwrap();
    let wide_options = ImportOptions {
        n_features: Some(5000),
        ..ImportOptions::default()
    };
    let wide = import_onnx_bytes(&c.bytes(), &wide_options, &mut |_| {})
        .unwrap()
        .compile()
        .unwrap();
    assert_eq!(compact.node_format, NodeFormat::Compact);
    assert_eq!(wide.node_format, NodeFormat::Wide);
    assert_eq!(GpuForest::from_vkf_bytes(&wide.to_vkf_bytes()).unwrap(), wide);
    let rows_compact = [0.2f32, 3.0, 0.0, 0.0, 0.9, 1.0, 0.0, 0.0];
    let mut rows_wide = vec![0f32; 2 * 5000];
    rows_wide[..4].copy_from_slice(&rows_compact[..4]);
    rows_wide[5000..5004].copy_from_slice(&rows_compact[4..]);
    assert_eq!(
        compact.predict_cpu(&rows_compact, 2).unwrap().scores,
        wide.predict_cpu(&rows_wide, 2).unwrap().scores
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_mutations_never_panic(
        flips in proptest::collection::vec((0usize..4096, any::<u8>()), 1..8),
        cut in 0usize..4096,
        reseal_it in any::<bool>(),
    ) {
        let mut bytes = small().to_vkf_bytes();
        for (i, x) in flips {
            let len = bytes.len();
            bytes[i % len] ^= x;
        }
        let bytes = if reseal_it && bytes.len() > 32 { reseal(bytes) } else { bytes };
        let bytes = &bytes[..bytes.len().saturating_sub(cut % 3)];
        if let Ok(forest) = GpuForest::from_vkf_bytes(bytes) {
            // Whatever survives validation must predict without panicking.
            let n = forest.n_features as usize;
            if n <= 1 << 16 {
                let rows = vec![0.5f32; n * 2];
                let _ = forest.predict_cpu(&rows, 2);
            }
        }
    }

    #[test]
    fn onnx_mutations_never_panic(
        flips in proptest::collection::vec((0usize..8192, any::<u8>()), 1..8),
        cut in 0usize..8192,
    ) {
        let mut bytes = common::small_classifier().bytes();
        for (i, x) in flips {
            let len = bytes.len();
            bytes[i % len] ^= x;
        }
        let keep = bytes.len() - cut % bytes.len();
        if let Ok(forest) = import_onnx_bytes(&bytes[..keep], &ImportOptions::default(), &mut |_| {}) {
            let gpu = forest.compile().unwrap();
            let n = gpu.n_features as usize;
            if n <= 1 << 16 {
                let _ = gpu.predict_cpu(&vec![0.25f32; n], 1);
            }
            prop_assert_eq!(GpuForest::from_vkf_bytes(&gpu.to_vkf_bytes()).unwrap(), gpu);
        }
    }
}
