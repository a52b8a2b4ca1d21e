//! Feeds arbitrary `.vkf` bodies (sealed with their SHA-256, so that mutations reach the structural
//! checks rather than stopping at the checksum) to `GpuForest::from_vkf_bytes`: nothing may panic or
//! loop. A forest that loads is laid out again as the device takes it (node blocks in both orders,
//! breadth-first nodes), which may refuse it but not panic, and where breadth first succeeds the CPU
//! reference predicts the same bits over it as over the file's own order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};
use vknf_forest::{GpuForest, NodeOrder};

fuzz_target!(|body: &[u8]| {
    let mut bytes = body.to_vec();
    bytes.extend_from_slice(&Sha256::digest(body));
    let Ok((forest, _)) = GpuForest::from_vkf_bytes_with_metadata(&bytes) else {
        return;
    };
    for order in [NodeOrder::DepthFirst, NodeOrder::BreadthFirst] {
        let _ = forest.node_blocks(&forest.nodes, order);
    }
    let Ok(nodes) = forest.breadth_first_nodes(&forest.nodes) else {
        return;
    };
    let reordered = GpuForest {
        nodes,
        ..forest.clone()
    };
    reordered.check_layout().expect("a breadth-first layout keeps the node rules");
    if forest.n_features > 64 {
        return;
    }
    // Rows from the body's own bytes, a few values per feature, NaN among them.
    let n_rows = 4;
    let rows: Vec<f32> = (0..n_rows * forest.n_features as usize)
        .map(|i| match body.get(i).copied().unwrap_or(0) % 5 {
            0 => f32::NAN,
            k => f32::from(k) - 2.5,
        })
        .collect();
    let own = forest.predict_cpu(&rows, n_rows);
    let breadth_first = reordered.predict_cpu(&rows, n_rows);
    match (own, breadth_first) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.labels, b.labels);
            assert_eq!(
                a.scores.iter().map(|s| s.to_bits()).collect::<Vec<_>>(),
                b.scores.iter().map(|s| s.to_bits()).collect::<Vec<_>>()
            );
        }
        (Err(_), Err(_)) => {}
        (a, b) => panic!("the orders disagree: {:?} against {:?}", a.is_ok(), b.is_ok()),
    }
});
