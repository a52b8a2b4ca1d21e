//! The node agent end to end: agents on 127.0.0.2/.3/.4 (CPU loader) against one fake API
//! server, real TCP requests, EndpointSlices, status annotations, Events, Leases, the watchdog.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use vknf_functions::CpuLoader;
use vknf_k8s::{Agent, FunctionPhase, Watchdog, WatchdogConfig, keys};
use vknf_k8s_fake::InjectedFailure;
use vknf_manifest::{ParseOptions, Placement, load_dir};

fn at(host: &Host, port: u16) -> SocketAddr {
    SocketAddr::new(host.ip, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_managed_function_is_served_by_exactly_the_selected_hosts_through_its_lifecycle() {
    let fake = cluster().await;
    let agents = [
        start_agent(&fake, &GPU_A),
        start_agent(&fake, &GPU_B),
        start_agent(&fake, &GPU_C),
    ];
    let port = free_port();
    let first = forest(1, 8, 4);
    let (mut service, configmaps) = function("classify", port, &first, "v1");
    annotate(&mut service, keys::HOSTS_SELECTOR, "gpu=h100");
    apply(&fake, &service, &configmaps);

    // Served by the two H100 hosts, published ready, reported serving.
    for host in [&GPU_A, &GPU_B] {
        wait_for(&format!("{}'s endpoint ready", host.name), || {
            slice_ready(&fake, "classify", host) == Some(true)
        })
        .await;
        wait_for("status serving", || {
            phase(&fake, "classify", host) == Some(FunctionPhase::Serving)
        })
        .await;
    }
    let input = rows(7, 300);
    for host in [&GPU_A, &GPU_B] {
        assert_eq!(
            classify(at(host, port), &input).await.unwrap(),
            expected_labels(&first, &input)
        );
        let status = host_status(&fake, "classify", host).unwrap();
        assert_eq!(status.address, Some(at(host, port).to_string()));
        assert_eq!(
            status.model_sha256.as_deref(),
            service
                .metadata
                .annotations
                .as_ref()
                .unwrap()
                .get("vknf.io/model-sha256")
                .map(String::as_str)
        );
    }
    assert!(!accepts(at(&GPU_C, port)).await, "the A100 host must not serve it");
    assert!(slice(&fake, "classify", &GPU_C).is_none());
    let slice_a = slice(&fake, "classify", &GPU_A).unwrap();
    assert_eq!(slice_a.endpoints[0].addresses, ["127.0.0.2"]);
    assert_eq!(slice_a.ports.as_ref().unwrap()[0].port, Some(i32::from(port)));
    assert_eq!(
        slice_a.metadata.labels.as_ref().unwrap()[keys::MANAGED_BY_LABEL],
        keys::MANAGED_BY_AGENT
    );
    let serving_events = events(&fake, "classify")
        .into_iter()
        .filter(|e| e.0 == "Serving")
        .count();
    assert_eq!(serving_events, 2, "one Serving event per host");
    for agent in &agents[..2] {
        let cold = agent.cold_starts();
        assert_eq!(cold.len(), 1);
        let c = &cold[0];
        println!(
            "cold start {} (CPU loader): watch delay {:?}, model fetch {:?}, validation {:?}, load {:?}, probe {:?}, total {:?}",
            c.function, c.watch_delay, c.model_fetch, c.validation, c.load, c.probe, c.total
        );
        let metrics = agent.encode_metrics();
        assert!(
            metrics.contains("vknf_agent_cold_start_seconds_count{phase=\"total\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("vknf_requests_total{function=\"default/classify\"}"),
            "server metrics are merged"
        );
    }

    // A new model hot-swaps while a client keeps sending: no request fails.
    let second = forest(2, 8, 4);
    let stop = Arc::new(AtomicBool::new(false));
    let (answered, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let sender = {
        let (stop, answered, failed) = (stop.clone(), answered.clone(), failed.clone());
        let client = vknf_protocol::client::Client::connect(at(&GPU_A, port)).await.unwrap();
        tokio::spawn(async move {
            let batch = rows(11, 64);
            for _ in 0..100_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                match client.infer(FEATURES as u32, &batch, 0).await {
                    Ok(_) => answered.fetch_add(1, Ordering::SeqCst),
                    Err(error) => {
                        eprintln!("request failed during the swap: {error}");
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
            }
        })
    };
    wait_for("the client to get answers", || answered.load(Ordering::SeqCst) > 10).await;
    let (mut updated, new_configmaps) = function("classify", port, &second, "v2");
    annotate(&mut updated, keys::HOSTS_SELECTOR, "gpu=h100");
    apply(&fake, &updated, &new_configmaps);
    let new_digest = updated.metadata.annotations.as_ref().unwrap()["vknf.io/model-sha256"].clone();
    for host in [&GPU_A, &GPU_B] {
        wait_for("the new model to serve", || {
            host_status(&fake, "classify", host).and_then(|s| s.model_sha256) == Some(new_digest.clone())
        })
        .await;
        assert_eq!(
            classify(at(host, port), &input).await.unwrap(),
            expected_labels(&second, &input)
        );
    }
    let before = answered.load(Ordering::SeqCst);
    wait_for("more answers after the swap", || {
        answered.load(Ordering::SeqCst) > before + 10
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    sender.await.unwrap();
    assert_eq!(failed.load(Ordering::SeqCst), 0, "requests failed during the hot swap");
    assert!(events(&fake, "classify").iter().any(|e| e.0 == "Reloaded"));
    assert_eq!(
        slice_ready(&fake, "classify", &GPU_A),
        Some(true),
        "the endpoint stays ready through a swap"
    );

    // The selector stops naming gpu-b: it drains (terminating, still answering), then closes.
    let mut narrowed = fake.get::<Service>(NAMESPACE, "classify").unwrap().unwrap();
    annotate(&mut narrowed, keys::HOSTS_SELECTOR, "gpu=h100,vknf.io/hostname=gpu-a");
    fake.insert(&narrowed).unwrap();
    wait_for("gpu-b's endpoint terminating", || {
        slice(&fake, "classify", &GPU_B).is_some_and(|s| {
            s.endpoints[0]
                .conditions
                .as_ref()
                .is_some_and(|c| c.ready == Some(false) && c.terminating == Some(true))
        })
    })
    .await;
    wait_for_async("gpu-b's port to close", || async { !accepts(at(&GPU_B, port)).await }).await;
    wait_for("gpu-b's endpoint removed", || {
        slice(&fake, "classify", &GPU_B).is_none()
    })
    .await;
    wait_for("gpu-b's status removed", || {
        host_status(&fake, "classify", &GPU_B).is_none()
    })
    .await;
    assert_eq!(
        classify(at(&GPU_A, port), &input).await.unwrap(),
        expected_labels(&second, &input)
    );

    // Deleting the Service closes the ports and removes the endpoints.
    fake.remove::<Service>(NAMESPACE, "classify").unwrap();
    wait_for_async("gpu-a's port to close", || async { !accepts(at(&GPU_A, port)).await }).await;
    wait_for("gpu-a's endpoint removed", || {
        slice(&fake, "classify", &GPU_A).is_none()
    })
    .await;
    wait_for("the server to forget the function", || {
        agents[0].server().status().functions.is_empty()
    })
    .await;
    for agent in agents {
        assert_eq!(agent.metrics().error_count("slice"), 0);
        agent.shutdown().await;
    }
    assert_never_refused(&fake);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_written_endpoints_place_a_function_the_papers_way() {
    let fake = cluster().await;
    let agents = [start_agent(&fake, &GPU_A), start_agent(&fake, &GPU_C)];
    let (slice_port, legacy_port) = (free_port(), free_port());
    let model = forest(3, 4, 3);
    let (by_slice, configmaps) = function("by-slice", slice_port, &model, "v1");
    apply(&fake, &by_slice, &configmaps);
    fake.insert(&EndpointSlice {
        metadata: ObjectMeta {
            name: Some("by-slice-hand-written".into()),
            namespace: Some(NAMESPACE.into()),
            labels: Some([(keys::SERVICE_NAME_LABEL.to_owned(), "by-slice".to_owned())].into()),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: vec![Endpoint {
            addresses: vec!["127.0.0.4".into()],
            ..Default::default()
        }],
        ports: None,
    })
    .unwrap();
    let (by_endpoints, configmaps) = function("by-endpoints", legacy_port, &model, "v1");
    apply(&fake, &by_endpoints, &configmaps);
    let legacy: Endpoints = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "by-endpoints", "namespace": NAMESPACE },
        "subsets": [{ "addresses": [{ "ip": "127.0.0.2" }], "ports": [{ "port": legacy_port }] }]
    }))
    .unwrap();
    fake.insert(&legacy).unwrap();

    wait_for("gpu-c serving by-slice", || {
        phase(&fake, "by-slice", &GPU_C) == Some(FunctionPhase::Serving)
    })
    .await;
    wait_for("gpu-a serving by-endpoints", || {
        phase(&fake, "by-endpoints", &GPU_A) == Some(FunctionPhase::Serving)
    })
    .await;
    let input = rows(5, 20);
    assert_eq!(
        classify(at(&GPU_C, slice_port), &input).await.unwrap(),
        expected_labels(&model, &input)
    );
    assert_eq!(
        classify(at(&GPU_A, legacy_port), &input).await.unwrap(),
        expected_labels(&model, &input)
    );
    assert!(!accepts(at(&GPU_A, slice_port)).await);
    assert!(!accepts(at(&GPU_C, legacy_port)).await);
    // Hand-written placement publishes nothing: the Endpoints are the operator's.
    let published: Vec<EndpointSlice> = fake.list(Some(NAMESPACE)).unwrap();
    assert!(
        published.iter().all(|s| vknf_k8s::slices::slice_host(s).is_none()),
        "{published:?}"
    );

    // Removing the address from the hand-written Endpoints drains the function.
    fake.remove::<Endpoints>(NAMESPACE, "by-endpoints").unwrap();
    wait_for_async("by-endpoints closed", || async {
        !accepts(at(&GPU_A, legacy_port)).await
    })
    .await;
    assert!(accepts(at(&GPU_C, slice_port)).await);
    for agent in agents {
        agent.shutdown().await;
    }
    assert_never_refused(&fake);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_functions_get_events_and_break_nothing_else() {
    let fake = cluster().await;
    let agent = start_agent(&fake, &GPU_A);
    let model = forest(4, 4, 3);
    let good_port = free_port();
    let (mut good, configmaps) = function("good", good_port, &model, "v1");
    annotate(&mut good, keys::HOST_NAMES, "gpu-a");
    apply(&fake, &good, &configmaps);

    // Invalid SPIR-V: base64 of bytes without SPIR-V's magic number.
    let (mut bad_spirv, configmaps) = function("bad-spirv", free_port(), &model, "v1");
    annotate(&mut bad_spirv, keys::HOST_NAMES, "gpu-a");
    annotate(&mut bad_spirv, "vknf.io/spirv", "AAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    apply(&fake, &bad_spirv, &configmaps);
    // A digest that does not match the ConfigMaps.
    let (mut bad_digest, configmaps) = function("bad-digest", free_port(), &model, "v1");
    annotate(&mut bad_digest, keys::HOST_NAMES, "gpu-a");
    annotate(&mut bad_digest, "vknf.io/model-sha256", &"0".repeat(64));
    apply(&fake, &bad_digest, &configmaps);
    // A model whose digest matches but whose bytes are no model.
    let (mut bad_model, mut configmaps) = function("bad-model", free_port(), &model, "v1");
    annotate(&mut bad_model, keys::HOST_NAMES, "gpu-a");
    let garbage = b"this is not a compiled forest".to_vec();
    configmaps.truncate(1);
    configmaps[0].binary_data = Some([("model.vkf.part0".to_owned(), k8s_openapi::ByteString(garbage.clone()))].into());
    let configmap_name = configmaps[0].metadata.name.clone().unwrap();
    annotate(&mut bad_model, keys::MODEL_CONFIGMAPS, &configmap_name);
    let digest: String = <sha2::Sha256 as sha2::Digest>::digest(&garbage)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    annotate(&mut bad_model, "vknf.io/model-sha256", &digest);
    apply(&fake, &bad_model, &configmaps);
    // A port some other process holds.
    let squatter = std::net::TcpListener::bind((GPU_A.ip, 0)).unwrap();
    let taken = squatter.local_addr().unwrap().port();
    let (mut port_taken, configmaps) = function("port-taken", taken, &model, "v1");
    annotate(&mut port_taken, keys::HOST_NAMES, "gpu-a");
    apply(&fake, &port_taken, &configmaps);
    // A host selector that does not parse.
    let (mut unplaceable, configmaps) = function("unplaceable", free_port(), &model, "v1");
    annotate(&mut unplaceable, keys::HOSTS_SELECTOR, "gpu in (h100");
    apply(&fake, &unplaceable, &configmaps);

    for (service, reason) in [
        ("bad-spirv", "InvalidSpirv"),
        ("bad-digest", "DigestMismatch"),
        ("bad-model", "InvalidModel"),
        ("port-taken", "PortConflict"),
        ("unplaceable", "InvalidPlacement"),
    ] {
        wait_for(&format!("a {reason} event on {service}"), || {
            events(&fake, service)
                .iter()
                .any(|(r, instance, _)| r == reason && instance == "gpu-a")
        })
        .await;
    }
    for (service, reason) in [
        ("bad-spirv", "InvalidSpirv"),
        ("bad-digest", "DigestMismatch"),
        ("port-taken", "PortConflict"),
    ] {
        let status = host_status(&fake, service, &GPU_A).unwrap();
        assert_eq!(status.phase, FunctionPhase::Failed, "{service}");
        assert_eq!(status.reason.map(|r| r.as_str()), Some(reason));
        assert_eq!(
            slice_ready(&fake, service, &GPU_A),
            Some(false),
            "{service} must not take traffic"
        );
    }
    wait_for("good serving", || {
        phase(&fake, "good", &GPU_A) == Some(FunctionPhase::Serving)
    })
    .await;
    let input = rows(9, 50);
    assert_eq!(
        classify(at(&GPU_A, good_port), &input).await.unwrap(),
        expected_labels(&model, &input)
    );

    // The port is freed: the agent retries and serves; fixing the SPIR-V serves too.
    drop(squatter);
    wait_for("port-taken serving after a retry", || {
        phase(&fake, "port-taken", &GPU_A) == Some(FunctionPhase::Serving)
    })
    .await;
    let mut fixed = fake.get::<Service>(NAMESPACE, "bad-spirv").unwrap().unwrap();
    let spirv = good.metadata.annotations.as_ref().unwrap()["vknf.io/spirv"].clone();
    annotate(&mut fixed, "vknf.io/spirv", &spirv);
    fake.insert(&fixed).unwrap();
    wait_for("fixed SPIR-V serving", || {
        phase(&fake, "bad-spirv", &GPU_A) == Some(FunctionPhase::Serving)
    })
    .await;
    assert_eq!(slice_ready(&fake, "bad-spirv", &GPU_A), Some(true));

    // A bad model update leaves the previous version serving, reported as such.
    let mut broken = fake.get::<Service>(NAMESPACE, "good").unwrap().unwrap();
    annotate(&mut broken, "vknf.io/model-sha256", &"1".repeat(64));
    fake.insert(&broken).unwrap();
    wait_for("good failed with its previous version", || {
        host_status(&fake, "good", &GPU_A).is_some_and(|s| s.phase == FunctionPhase::Failed && s.address.is_some())
    })
    .await;
    assert_eq!(
        classify(at(&GPU_A, good_port), &input).await.unwrap(),
        expected_labels(&model, &input)
    );
    assert_eq!(
        slice_ready(&fake, "good", &GPU_A),
        Some(true),
        "the previous version still takes traffic"
    );
    agent.shutdown().await;
    assert_never_refused(&fake);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_marks_a_dead_hosts_endpoint_not_ready_and_a_restart_converges() {
    let fake = cluster().await;
    let watchdog_config = WatchdogConfig {
        identity: "watchdog-test".into(),
        lease_namespace: LEASE_NAMESPACE.into(),
        namespaces: FUNCTION_NAMESPACES.iter().map(|n| (*n).to_owned()).collect(),
        lease_duration: Duration::from_secs(2),
        host_lease_duration: Duration::from_secs(1),
        period: Duration::from_millis(100),
    };
    let watchdog = Watchdog::start(fake.client_with_token(WATCHDOG_TOKEN).unwrap(), watchdog_config);
    let a = start_agent(&fake, &GPU_A);
    let b = start_agent(&fake, &GPU_B);
    let port = free_port();
    let model = forest(5, 4, 3);
    let (mut service, configmaps) = function("watched", port, &model, "v1");
    annotate(&mut service, keys::HOSTS_SELECTOR, "gpu=h100");
    apply(&fake, &service, &configmaps);
    for host in [&GPU_A, &GPU_B] {
        wait_for("endpoint ready", || slice_ready(&fake, "watched", host) == Some(true)).await;
    }
    wait_for("the watchdog to lead", || watchdog.metrics().watchdog_leader.get() == 1).await;

    // gpu-a dies without a word: its Lease stops, its slice still says ready.
    a.kill().await;
    assert_eq!(slice_ready(&fake, "watched", &GPU_A), Some(true));
    wait_for("the watchdog to mark gpu-a not ready", || {
        slice_ready(&fake, "watched", &GPU_A) == Some(false)
    })
    .await;
    // The watchdog counts a slice after the API server has taken its write: wait for the count too.
    wait_for("the watchdog to count the marked slice", || {
        watchdog.metrics().watchdog_marked.get() >= 1
    })
    .await;
    assert_eq!(
        slice_ready(&fake, "watched", &GPU_B),
        Some(true),
        "a live host is left alone"
    );

    // gpu-a comes back: the same state, ready again, and the watchdog leaves it alone.
    let a = start_agent(&fake, &GPU_A);
    wait_for("gpu-a ready again", || {
        slice_ready(&fake, "watched", &GPU_A) == Some(true)
    })
    .await;
    let input = rows(3, 40);
    assert_eq!(
        classify(at(&GPU_A, port), &input).await.unwrap(),
        expected_labels(&model, &input)
    );
    let marked = watchdog.metrics().watchdog_marked.get();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        watchdog.metrics().watchdog_marked.get(),
        marked,
        "a renewed Lease is not expired"
    );
    assert_eq!(slice_ready(&fake, "watched", &GPU_A), Some(true));

    // A graceful stop marks the endpoint terminating.
    b.shutdown().await;
    let stopped = slice(&fake, "watched", &GPU_B).unwrap();
    let conditions = stopped.endpoints[0].conditions.clone().unwrap();
    assert_eq!((conditions.ready, conditions.terminating), (Some(false), Some(true)));
    assert!(
        host_status(&fake, "watched", &GPU_B).is_none(),
        "a stopped host reports nothing"
    );
    a.shutdown().await;
    watchdog.shutdown().await;
    assert_never_refused(&fake);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_errors_are_retried_until_the_function_serves() {
    let fake = cluster().await;
    fake.inject_failure(
        InjectedFailure::status(500)
            .method("GET")
            .path_contains("/configmaps/")
            .times(3),
    );
    fake.inject_failure(
        InjectedFailure::status(500)
            .method("PATCH")
            .path_contains("/endpointslices/")
            .times(2),
    );
    fake.inject_failure(
        InjectedFailure::status(500)
            .method("PATCH")
            .path_contains("/services/")
            .times(2),
    );
    let agent = start_agent(&fake, &GPU_A);
    let port = free_port();
    let model = forest(6, 4, 3);
    let (mut service, configmaps) = function("flaky", port, &model, "v1");
    annotate(&mut service, keys::HOST_NAMES, "gpu-a");
    apply(&fake, &service, &configmaps);
    wait_for("served despite API errors", || {
        slice_ready(&fake, "flaky", &GPU_A) == Some(true)
            && phase(&fake, "flaky", &GPU_A) == Some(FunctionPhase::Serving)
    })
    .await;
    let input = rows(1, 10);
    assert_eq!(
        classify(at(&GPU_A, port), &input).await.unwrap(),
        expected_labels(&model, &input)
    );
    let metrics = agent.metrics();
    assert!(metrics.error_count("model_fetch") >= 1);
    assert!(metrics.error_count("slice") >= 1);
    assert!(metrics.error_count("status") >= 1);
    agent.shutdown().await;
    assert_never_refused(&fake);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_directory_is_a_copy_that_vknf_serve_reads_and_serving_never_waits_for_it() {
    let fake = cluster().await;
    let root = tempfile::tempdir().unwrap();
    let state_dir = root.path().join("manifests");
    let mut config = agent_config(&GPU_A);
    config.state_dir = Some(state_dir.clone());
    let agent = Agent::start(host_client(&fake, &GPU_A), config, Arc::new(CpuLoader::default())).unwrap();
    // The first pass writes the (empty) copy; later passes write only when functions change.
    wait_for("a first pass", || agent.status().reconciles >= 1).await;
    // A file where the directory should be: every write of the copy fails.
    std::fs::remove_dir(&state_dir).unwrap();
    std::fs::write(&state_dir, "in the way").unwrap();

    let port = free_port();
    let model = forest(8, 4, 3);
    let (mut service, configmaps) = function("copied", port, &model, "v1");
    annotate(&mut service, keys::HOST_NAMES, GPU_A.name);
    apply(&fake, &service, &configmaps);
    wait_for("served without a state directory", || {
        phase(&fake, "copied", &GPU_A) == Some(FunctionPhase::Serving)
    })
    .await;
    let input = rows(2, 20);
    assert_eq!(
        classify(at(&GPU_A, port), &input).await.unwrap(),
        expected_labels(&model, &input)
    );
    wait_for("the failed write counted", || {
        agent.metrics().error_count("state_dir") >= 1
    })
    .await;

    // Once the directory can be written again, the copy catches up and `vknf serve` reads
    // exactly the function the agent serves.
    std::fs::remove_file(&state_dir).unwrap();
    let key = |namespace: &str| format!("{namespace}/copied");
    let read = || load_dir(&state_dir, &Placement::All, &ParseOptions::default()).ok();
    wait_for("the state directory written", || {
        read().is_some_and(|m| m.functions.len() == 1)
    })
    .await;
    let served = read().unwrap();
    assert_eq!(served.functions[0].spec.key.to_string(), key(NAMESPACE));
    assert_eq!(served.functions[0].spec.port, port);
    assert_eq!(served.functions[0].model.as_deref(), Some(&model.to_vkf_bytes()[..]));

    // A removed function leaves the copy too.
    fake.remove::<Service>(NAMESPACE, "copied").unwrap();
    wait_for("the copy emptied", || read().is_some_and(|m| m.functions.is_empty())).await;
    agent.shutdown().await;
    assert_never_refused(&fake);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_example_function_is_served_by_gpu_labelled_hosts() {
    let fake = cluster().await;
    let example = workspace_root().join("deploy/example/traffic-classifier.yaml");
    assert_eq!(apply_yaml(&fake, &example), 2, "one model ConfigMap and the Service");
    let agents = [start_agent(&fake, &GPU_A), start_agent(&fake, &NO_GPU)];
    let namespace = "vknf-functions";
    wait_for("the classifier serving on gpu-a", || {
        let service = fake.get::<Service>(namespace, "traffic-classifier").unwrap().unwrap();
        let status = service
            .metadata
            .annotations
            .unwrap_or_default()
            .get(&keys::status_annotation(GPU_A.name))
            .cloned();
        status.is_some_and(|s| s.contains("\"phase\":\"Serving\""))
    })
    .await;
    let configmap = fake
        .get::<k8s_openapi::api::core::v1::ConfigMap>(namespace, "traffic-classifier-model-0")
        .unwrap()
        .unwrap();
    let model = &configmap.binary_data.unwrap()["model.vkf.part0"].0;
    let forest = vknf_forest::GpuForest::from_vkf_bytes(model).unwrap();
    let n_features = forest.n_features as usize;
    let input: Vec<f32> = (0..64 * n_features)
        .map(|i| ((i * 37 % 101) as f32 / 25.0) - 2.0)
        .collect();
    let client = vknf_protocol::client::Client::connect(at(&GPU_A, 7100)).await.unwrap();
    let answer = client.infer(n_features as u32, &input, 0).await.unwrap();
    assert_eq!(
        answer.output(0).unwrap().to_u32(),
        forest.predict_cpu(&input, 64).unwrap().labels
    );
    assert!(
        !accepts(at(&NO_GPU, 7100)).await,
        "a host without a gpu label does not serve it"
    );
    let slice = fake
        .get::<EndpointSlice>(namespace, &keys::slice_name("traffic-classifier", GPU_A.name))
        .unwrap();
    assert!(slice.is_some_and(|s| vknf_k8s::slices::any_ready(&s)));
    for agent in agents {
        agent.shutdown().await;
    }
    assert_never_refused(&fake);
}
