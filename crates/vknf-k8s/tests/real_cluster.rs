//! Opt-in tests against a real Kubernetes cluster (docs/kubernetes.md, "Real-cluster tests"):
//!
//! ```text
//! KUBECONFIG=~/.kube/config VKNF_REAL_CLUSTER=1 \
//!     cargo test -p vknf-k8s --test real_cluster -- --ignored --nocapture
//! ```
//!
//! The agent runs in the test process with the CPU loader and advertises this machine's first
//! routable address (Kubernetes refuses loopback addresses in EndpointSlices), so the cluster
//! must be able to store it, and this machine must reach the API server. Objects go to the
//! namespace `VKNF_TEST_NAMESPACE` (default `vknf-test`, created when missing) and are deleted
//! at the end.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use vknf_functions::CpuLoader;
use vknf_k8s::{Agent, AgentConfig, FunctionPhase, HostFunctionStatus, HostIdentity, keys};

async fn real_cluster() -> Client {
    let opted_in = std::env::var("VKNF_REAL_CLUSTER").is_ok_and(|v| v == "1");
    let kubeconfig = std::env::var_os("KUBECONFIG");
    assert!(
        opted_in && kubeconfig.is_some(),
        "real-cluster tests need KUBECONFIG and VKNF_REAL_CLUSTER=1 (they create and delete objects)"
    );
    vknf_k8s::daemon::client(None)
        .await
        .expect("a client for the cluster of KUBECONFIG")
}

/// Polls `condition` every 200 ms for up to 60 s (a real control plane is slower than the fake).
async fn eventually<F: Future<Output = bool>>(what: &str, mut condition: impl FnMut() -> F) {
    for _ in 0..300 {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out waiting for {what}");
}

fn created_or_exists<T>(result: Result<T, kube::Error>) {
    match result {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(error) => panic!("cannot create: {error}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real cluster: KUBECONFIG and VKNF_REAL_CLUSTER=1, run with --ignored"]
async fn an_agent_serves_a_function_placed_through_a_real_api_server() {
    init_logs();
    let client = real_cluster().await;
    let namespace = std::env::var("VKNF_TEST_NAMESPACE").unwrap_or_else(|_| "vknf-test".to_owned());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut ns = Namespace::default();
    ns.metadata.name = Some(namespace.clone());
    created_or_exists(namespaces.create(&PostParams::default(), &ns).await);

    let run = std::process::id();
    let host_name = format!("vknf-test-{run}");
    let labels = BTreeMap::from([("vknf-test".to_owned(), run.to_string())]);
    let detected = HostIdentity::detect(Some(&host_name), Vec::new(), labels.clone()).expect("host identity");
    let routable: Vec<_> = detected
        .addresses
        .iter()
        .copied()
        .filter(|ip| !ip.is_loopback())
        .collect();
    assert!(
        !routable.is_empty(),
        "this machine has no routable address to advertise"
    );
    let host = HostIdentity::new(&host_name, routable, labels).unwrap();
    let advertise = host.advertise;
    let mut config = AgentConfig::new(host);
    config.namespaces = vec![namespace.clone()];
    config.lease_namespace = namespace.clone();
    config.lease_duration = Duration::from_secs(15);
    config.resync_interval = Duration::from_secs(2);
    config.drain_delay = Duration::from_secs(1);
    let agent = Agent::start(client.clone(), config, Arc::new(CpuLoader::default())).expect("agent starts");

    let port = free_port();
    let model = forest(21, 8, 4);
    let name = format!("vknf-test-{run}");
    let (mut service, mut configmaps) = function(&name, port, &model, "v1");
    annotate(&mut service, keys::HOSTS_SELECTOR, &format!("vknf-test={run}"));
    service.metadata.namespace = Some(namespace.clone());
    let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    for configmap in &mut configmaps {
        configmap.metadata.namespace = Some(namespace.clone());
        cms.create(&PostParams::default(), configmap)
            .await
            .expect("create a model ConfigMap");
    }
    services
        .create(&PostParams::default(), &service)
        .await
        .expect("create the function Service");

    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &namespace);
    let slice_name = keys::slice_name(&name, &host_name);
    eventually("the endpoint ready", || async {
        slices
            .get_opt(&slice_name)
            .await
            .ok()
            .flatten()
            .is_some_and(|s| vknf_k8s::slices::any_ready(&s))
    })
    .await;
    eventually("the status annotation", || async {
        let Ok(service) = services.get(&name).await else {
            return false;
        };
        let annotation = service
            .metadata
            .annotations
            .unwrap_or_default()
            .get(&keys::status_annotation(&host_name))
            .cloned();
        annotation
            .and_then(|a| serde_json::from_str::<HostFunctionStatus>(&a).ok())
            .is_some_and(|s| s.phase == FunctionPhase::Serving)
    })
    .await;
    let input = rows(4, 100);
    assert_eq!(
        classify(SocketAddr::new(advertise, port), &input).await.unwrap(),
        expected_labels(&model, &input)
    );
    let events: Api<Event> = Api::namespaced(client.clone(), &namespace);
    let recorded = events.list(&ListParams::default()).await.expect("list events");
    assert!(
        recorded.items.iter().any(|e| e.reason.as_deref() == Some("Serving")
            && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name.as_str())),
        "a Serving event on the Service"
    );
    for cold in agent.cold_starts() {
        println!("cold start against a real API server: {cold:?}");
    }

    services
        .delete(&name, &DeleteParams::default())
        .await
        .expect("delete the Service");
    eventually("the port to close", || async {
        !accepts(SocketAddr::new(advertise, port)).await
    })
    .await;
    eventually("the endpoint removed", || async {
        slices.get_opt(&slice_name).await.ok().flatten().is_none()
    })
    .await;
    agent.shutdown().await;
    for configmap in &configmaps {
        let _ = cms
            .delete(
                configmap.metadata.name.as_deref().unwrap_or_default(),
                &DeleteParams::default(),
            )
            .await;
    }
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(client, &namespace);
    let _ = leases
        .delete(&keys::host_lease_name(&host_name), &DeleteParams::default())
        .await;
}
