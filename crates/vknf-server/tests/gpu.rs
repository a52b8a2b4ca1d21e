//! End to end on the GPU loader (lavapipe in CI, validation layer on): functions from manifest files
//! served over real TCP, answers checked against the CPU.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use common::*;
use rand::SeedableRng;
use vknf_functions::GpuLoader;
use vknf_functions::families::generic::{
    ABI_PARAM, AbiInput, AbiOutput, AbiResident, AbiRowCount, BindingRef, GenericAbi,
};
use vknf_functions::{DType, FunctionLoader};
use vknf_manifest::{DEFAULT_PART_BYTES, ManifestRequest, build_objects};
use vknf_protocol::client::Client;
use vknf_vulkan::DeviceSelector;

fn gpu_loader() -> Arc<GpuLoader> {
    Arc::new(GpuLoader::new(true, DeviceSelector::from_env().unwrap()).expect("a Vulkan device"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forest_function_on_the_gpu_answers_like_the_cpu_reference() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let forest = random_forest(12, 5, 20, 8, 11);
        write_forest_manifest(dir.path(), "gpu-forest", &forest, 256, 200);
        let loader = gpu_loader();
        let server = start_server_with(dir.path(), test_config(), loader.clone() as Arc<dyn FunctionLoader>).await;
        let client = Client::connect(addr(&server, "gpu-forest")).await.unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let batches: Vec<Vec<f32>> = [1usize, 7, 64, 300, 1000]
            .iter()
            .map(|n| random_rows(*n, 12, &mut rng))
            .collect();
        // 1000 rows exceed the 256-row batches: split over batches and lanes, reassembled.
        for rows in &batches {
            let response = client.infer(12, rows, 0b11).await.unwrap();
            let n_rows = rows.len() / 12;
            let expected = forest.predict_cpu(rows, n_rows).unwrap();
            let labels = response.output(0).unwrap().to_u32();
            let scores = response.output(1).unwrap().to_f32();
            assert_eq!(scores.len(), expected.scores.len());
            for (got, want) in scores.iter().zip(&expected.scores) {
                assert!((got - want).abs() <= 1e-5, "score {got} vs {want}");
            }
            for (row, (got, want)) in labels.iter().zip(&expected.labels).enumerate() {
                if got != want {
                    let s = &expected.scores[row * 5..row * 5 + 5];
                    assert!(
                        (s[*got as usize] - s[*want as usize]).abs() <= 1e-6,
                        "row {row}: label {got} vs {want}"
                    );
                }
            }
        }
        server.shutdown().await;
        assert!(loader.instance().take_validation_errors().is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_kernel_wired_by_its_manifest_runs_on_the_gpu() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let width = 8usize;
        let weights: Vec<f32> = (0..width).map(|i| i as f32 * 0.5 - 1.0).collect();
        let model: Vec<u8> = weights.iter().flat_map(|w| w.to_le_bytes()).collect();
        let at = |binding| BindingRef { set: 0, binding };
        let abi = GenericAbi {
            input: AbiInput {
                at: at(0),
                width,
                dtype: DType::F32,
            },
            resident: vec![AbiResident {
                at: at(1),
                offset: 0,
                length: model.len() as u64,
            }],
            outputs: vec![
                AbiOutput {
                    at: at(2),
                    name: "sum".into(),
                    dtype: DType::F32,
                    width: 1,
                    on_request: false,
                },
                AbiOutput {
                    at: at(3),
                    name: "largest".into(),
                    dtype: DType::U32,
                    width: 1,
                    on_request: true,
                },
            ],
            row_count: AbiRowCount {
                push_constant_offset: 0,
            },
            accepts_nan: false,
        };
        let objects = build_objects(&ManifestRequest {
            name: "weighted-sum".into(),
            namespace: "default".into(),
            port: 1,
            oip_port: None,
            kind: "generic".into(),
            spirv: vknf_kernels::WEIGHTED_SUM,
            entry_point: None,
            model: Some(&model),
            spec_constants: Some(format!("{{\"WIDTH\": {width}, \"WORKGROUP_SIZE\": 32}}")),
            params: [(ABI_PARAM.to_owned(), abi.to_json())].into(),
            max_batch_rows: Some(128),
            max_wait_us: Some(100),
            node_addresses: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            part_bytes: DEFAULT_PART_BYTES,
        })
        .unwrap();
        let mut yaml = String::new();
        for mut value in objects {
            if value["kind"] == "Service" {
                value["spec"]["ports"][0]["port"] = 0.into();
            }
            yaml.push_str("---\n");
            yaml.push_str(&serde_norway::to_string(&value).unwrap());
        }
        std::fs::write(dir.path().join("weighted-sum.yaml"), yaml).unwrap();
        let loader = gpu_loader();
        let server = start_server_with(dir.path(), test_config(), loader.clone() as Arc<dyn FunctionLoader>).await;
        let client = Client::connect(addr(&server, "weighted-sum")).await.unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        // 300 rows: more than one 128-row batch.
        let rows = random_rows(300, width, &mut rng);
        let response = client.infer(width as u32, &rows, 0b11).await.unwrap();
        let sums = response.output(0).unwrap().to_f32();
        let largest = response.output(1).unwrap().to_u32();
        for (r, row) in rows.chunks(width).enumerate() {
            let sum: f32 = row.iter().zip(&weights).map(|(x, w)| x * w).sum();
            assert!(
                (sums[r] - sum).abs() <= 1e-4 * sum.abs().max(1.0),
                "row {r}: {} vs {sum}",
                sums[r]
            );
            let best = (0..width).fold(0, |b, i| if row[i] > row[b] { i } else { b });
            assert_eq!(largest[r] as usize, best, "row {r}");
        }
        // The optional output is left out unless asked for.
        let response = client.infer(width as u32, &rows[..width], 0b01).await.unwrap();
        assert!(response.output(1).is_none() || response.outputs.len() == 1);
        server.shutdown().await;
        assert!(loader.instance().take_validation_errors().is_empty());
    })
    .await;
}
