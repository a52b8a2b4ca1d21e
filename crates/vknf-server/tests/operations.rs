//! The `vknf serve` daemon, its operations endpoint, and the load generator.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{key, random_forest, wait_for, write_forest_manifest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vknf_functions::CpuLoader;
use vknf_protocol::client::Client;
use vknf_protocol::loadgen::{LoadConfig, LoadLimit, LoadMode, run_load};
use vknf_server::daemon::{Daemon, ServeOptions};

/// A bare HTTP/1.1 GET: (status, body).
async fn get(addr: SocketAddr, path: &str, method: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("{method} {path} HTTP/1.1\r\nHost: vknf\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

async fn start_daemon(dir: &std::path::Path) -> Daemon {
    let options = ServeOptions {
        source: common::source(dir),
        config: common::test_config(),
        metrics_addr: Some("127.0.0.1:0".parse().unwrap()),
        oip_addr: Some("127.0.0.1:0".parse().unwrap()),
    };
    let daemon = Daemon::start(options, Arc::new(CpuLoader::default())).await.unwrap();
    wait_for(|| daemon.server().status().generation > 0, "first reconcile").await;
    daemon
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_endpoint_reports_liveness_readiness_and_metrics() {
    common::bounded(ops_body()).await;
}

async fn ops_body() {
    let dir = tempfile::tempdir().unwrap();
    let model = random_forest(5, 3, 4, 4, 1);
    write_forest_manifest(dir.path(), "f", &model, 64, 100);
    let daemon = start_daemon(dir.path()).await;
    let ops = daemon.ops_addr().unwrap();
    let target = daemon.server().local_addr(&key("f")).unwrap();

    assert_eq!(get(ops, "/livez", "GET").await, (200, "ok\n".to_owned()));
    let (status, body) = get(ops, "/readyz", "GET").await;
    assert_eq!((status, body.as_str()), (200, "ready: 1 functions serving\n"));

    let client = Client::connect(target).await.unwrap();
    client.infer(5, &[0.1; 10], 0).await.unwrap();
    let _ = client.infer(4, &[0.1; 8], 0).await.unwrap_err();
    let (status, metrics) = get(ops, "/metrics", "GET").await;
    assert_eq!(status, 200);
    for line in [
        "vknf_requests_total{function=\"default/f\"} 1",
        "vknf_rows_total{function=\"default/f\"} 2",
        "vknf_errors_total{function=\"default/f\",code=\"SHAPE\"} 1",
        "vknf_live_lanes 2",
        "vknf_connections 1",
        "# TYPE vknf_request_latency_seconds histogram",
        "# TYPE vknf_execution_seconds histogram",
        "# TYPE vknf_queued_bytes gauge",
    ] {
        assert!(metrics.contains(line), "{line:?} missing from\n{metrics}");
    }
    assert_eq!(get(ops, "/nope", "GET").await.0, 404);
    assert_eq!(get(ops, "/readyz", "POST").await.0, 405);

    // A function this host should serve but cannot: not ready, and the reason is given.
    let broken = std::fs::read_to_string(dir.path().join("f.yaml"))
        .unwrap()
        .replace("name: f", "name: g")
        .replace("f-model-0", "g-model-0")
        .replace("vknf.io/kind: forest", "vknf.io/kind: lstm");
    std::fs::write(dir.path().join("g.yaml"), broken).unwrap();
    wait_for(|| daemon.server().status().functions.len() == 2, "g seen").await;
    let (status, body) = get(ops, "/readyz", "GET").await;
    assert_eq!(status, 503);
    // The problem is named (function and annotation) without the manifest's value, which anyone
    // reaching the port would otherwise read.
    assert!(body.contains("default/g: annotation vknf.io/kind"), "{body}");
    assert!(!body.contains("lstm"), "{body}");

    // Shutdown closes both the function port and the ops endpoint.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(daemon.run_until(async move {
        let _ = stopped.await;
    }));
    stop.send(()).unwrap();
    running.await.unwrap();
    assert!(TcpStream::connect(target).await.is_err());
    assert!(TcpStream::connect(ops).await.is_err());
}

/// A bare HTTP/1.1 POST of JSON: (status, body).
async fn post_json(addr: SocketAddr, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: vknf\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oip_port_serves_the_host_s_functions_by_name_and_counts_by_protocol() {
    common::bounded(oip_body()).await;
}

async fn oip_body() {
    let dir = tempfile::tempdir().unwrap();
    write_forest_manifest(dir.path(), "f", &random_forest(3, 2, 4, 4, 1), 64, 100);
    let daemon = start_daemon(dir.path()).await;
    let oip = daemon.oip_addr().expect("the OIP port is open");
    let ops = daemon.ops_addr().unwrap();
    let target = daemon.server().local_addr(&key("f")).unwrap();

    assert_eq!(
        get(oip, "/v2/health/live", "GET").await,
        (200, r#"{"live":true}"#.to_owned())
    );
    assert_eq!(
        get(oip, "/v2/health/ready", "GET").await,
        (200, r#"{"ready":true}"#.to_owned())
    );
    let (status, metadata) = get(oip, "/v2", "GET").await;
    assert_eq!(status, 200);
    assert!(
        metadata.contains(r#""extensions":["binary_tensor_data"]"#),
        "{metadata}"
    );
    let (status, model) = get(oip, "/v2/models/f", "GET").await;
    assert_eq!(status, 200);
    assert!(
        model.contains(r#""inputs":[{"name":"features","datatype":"FP32","shape":[-1,3]}]"#),
        "{model}"
    );
    assert_eq!(get(oip, "/v2/models/f/ready", "GET").await.0, 200);

    // The same function through both front ends gives the same answer.
    let features = [0.25f32, -0.5, 0.75, 0.1, 0.2, -0.3];
    let client = Client::connect(target).await.unwrap();
    let binary = client.infer(3, &features, 0).await.unwrap();
    let request = format!(
        r#"{{"inputs":[{{"name":"features","shape":[2,3],"datatype":"FP32","data":{features:?}}}],"outputs":[{{"name":"labels"}}]}}"#
    );
    let (status, answer) = post_json(oip, "/v2/models/f/infer", &request).await;
    assert_eq!(status, 200, "{answer}");
    let labels: Vec<String> = binary.outputs[0].to_u32().iter().map(u32::to_string).collect();
    assert!(
        answer.contains(&format!(r#""data":[{}]"#, labels.join(","))),
        "{answer} vs {labels:?}"
    );
    let (status, _) = post_json(oip, "/v2/models/f/infer", "{").await;
    assert_eq!(status, 400);

    let (_, metrics) = get(ops, "/metrics", "GET").await;
    for line in [
        "vknf_front_end_requests_total{protocol=\"rest\",function=\"default/f\"} 2",
        "vknf_front_end_errors_total{protocol=\"rest\",function=\"default/f\",code=\"BAD_REQUEST\"} 1",
        "vknf_requests_total{function=\"default/f\"} 2",
    ] {
        assert!(metrics.contains(line), "{line:?} missing from\n{metrics}");
    }
    assert!(
        metrics.contains("vknf_front_end_requests_total{protocol=\"binary\",function=\"default/f\"}"),
        "{metrics}"
    );

    // A removed function is no model any more; the port stays open for the others.
    std::fs::remove_file(dir.path().join("f.yaml")).unwrap();
    wait_for(|| daemon.server().status().functions.is_empty(), "f removed").await;
    assert_eq!(get(oip, "/v2/models/f", "GET").await.0, 404);
    assert_eq!(get(oip, "/v2/health/live", "GET").await.0, 200);

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(daemon.run_until(async move {
        let _ = stopped.await;
    }));
    stop.send(()).unwrap();
    running.await.unwrap();
    assert!(TcpStream::connect(oip).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_generator_measures_closed_and_open_loops() {
    common::bounded(load_body()).await;
}

async fn load_body() {
    let dir = tempfile::tempdir().unwrap();
    write_forest_manifest(dir.path(), "f", &random_forest(8, 3, 6, 5, 2), 256, 100);
    let server = common::start_server(dir.path(), common::test_config()).await;
    let addr = server.local_addr(&key("f")).unwrap().to_string();

    let closed = LoadConfig {
        addr: addr.clone(),
        mode: LoadMode::Closed {
            connections: 2,
            depth: 4,
        },
        limit: LoadLimit::Requests(300),
        rows_per_request: 10,
        output_mask: 0b10,
        seed: 1,
        value_range: (-1.0, 1.0),
        tls: None,
    };
    let report = run_load(&closed).await.unwrap();
    assert_eq!(
        (report.requests, report.rows, report.failed()),
        (300, 3000, 0),
        "{report}"
    );
    assert!(report.latency(0.5) > Duration::ZERO && report.latency(0.999) >= report.latency(0.5));
    assert_eq!(
        server
            .metrics()
            .requests
            .get_or_create(&vknf_runtime::Metrics::function("default/f"))
            .get(),
        300
    );
    let text = report.to_string();
    assert!(text.contains("300 ok, 0 failed") && text.contains("p99.9"), "{text}");

    let chart =
        std::env::var_os("VKNF_KEEP_CHART").map_or_else(|| dir.path().join("latency.png"), std::path::PathBuf::from);
    report.write_chart(&chart, None).unwrap();
    let png = std::fs::read(&chart).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");

    // Depth 1 runs on threads with blocking clients.
    let blocking = LoadConfig {
        mode: LoadMode::Closed {
            connections: 3,
            depth: 1,
        },
        limit: LoadLimit::Requests(90),
        ..closed.clone()
    };
    let report = run_load(&blocking).await.unwrap();
    assert_eq!(
        (report.requests, report.rows, report.failed()),
        (90, 900, 0),
        "{report}"
    );

    let open = LoadConfig {
        mode: LoadMode::Open {
            rate: 2000.0,
            connections: 2,
            max_in_flight: 64,
        },
        limit: LoadLimit::Requests(200),
        ..closed.clone()
    };
    let report = run_load(&open).await.unwrap();
    let skipped = report.errors.get("SKIPPED").copied().unwrap_or(0);
    assert_eq!(report.requests + skipped, 200, "{report}");
    assert_eq!(report.failed(), skipped, "{report}");

    let bad = LoadConfig {
        rows_per_request: 0,
        ..closed
    };
    assert!(run_load(&bad).await.is_err());
    server.shutdown().await;
}
