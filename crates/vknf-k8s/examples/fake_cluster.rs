//! A fake Kubernetes API server to try `vknf agent` without a cluster: writes a kubeconfig,
//! applies manifest files (Services, ConfigMaps, Endpoints, EndpointSlices), and serves until
//! Ctrl-C, printing what the agents publish.
//!
//! ```text
//! cargo run -p vknf-k8s --example fake_cluster -- /tmp/vknf.kubeconfig deploy/example/traffic-classifier.yaml
//! vknf agent --cpu --kubeconfig /tmp/vknf.kubeconfig --host-name demo --address 127.0.0.1 --host-label gpu=cpu
//! ```

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use vknf_k8s_fake::FakeApiServer;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let Some(kubeconfig) = args.next() else {
        eprintln!("usage: fake_cluster KUBECONFIG_OUT [MANIFEST.yaml ...]");
        std::process::exit(2);
    };
    let fake = FakeApiServer::start().await.expect("fake API server");
    std::fs::write(&kubeconfig, fake.kubeconfig_yaml()).expect("write the kubeconfig");
    println!("fake API server at {}; kubeconfig written to {kubeconfig}", fake.url());
    for manifest in args {
        let written = common::apply_yaml(&fake, std::path::Path::new(&manifest));
        println!("applied {written} objects from {manifest}");
    }
    let mut last = String::new();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        let mut report = String::new();
        for service in fake.list::<Service>(None).unwrap_or_default() {
            for (key, value) in service.metadata.annotations.unwrap_or_default() {
                if key.starts_with(vknf_k8s::keys::STATUS_PREFIX) {
                    report += &format!("{} {key}: {value}\n", service.metadata.name.clone().unwrap_or_default());
                }
            }
        }
        for slice in fake.list::<EndpointSlice>(None).unwrap_or_default() {
            let ready = vknf_k8s::slices::any_ready(&slice);
            report += &format!(
                "EndpointSlice {}: ready={ready}\n",
                slice.metadata.name.unwrap_or_default()
            );
        }
        if report != last {
            print!("---\n{report}");
            last = report;
        }
    }
}
