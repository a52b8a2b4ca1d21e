//! The permissions of deploy/: the admission policies' CEL expressions evaluated on
//! AdmissionRequest-shaped inputs (allowed and refused cases), and a running agent whose host
//! identity is refused everything outside deploy/rbac.yaml and deploy/admission.yaml.
//!
//! Every other end-to-end test of the agent (tests/agent.rs) runs under the same permissions:
//! `common::cluster` enforces them.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use common::*;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde::Deserialize;
use serde_json::{Value, json};
use vknf_k8s::slices::{EndpointState, desired_slice};
use vknf_k8s::{FunctionPhase, HostIdentity, keys};
use vknf_k8s_fake::policy::{AdmissionInput, ValidatingPolicy, Verdict};
use vknf_k8s_fake::{ResourceType, UserInfo};

/// The ValidatingAdmissionPolicies of deploy/admission.yaml, by name.
fn policies() -> BTreeMap<String, ValidatingPolicy> {
    let text = deploy_file("admission.yaml");
    let documents: Vec<Value> = serde_norway::Deserializer::from_str(&text)
        .map(|document| Value::deserialize(document).expect("deploy/admission.yaml parses"))
        .filter(|document| !document.is_null())
        .collect();
    let policies: BTreeMap<String, ValidatingPolicy> = documents
        .iter()
        .filter(|d| d["kind"] == "ValidatingAdmissionPolicy")
        .map(|d| {
            let policy = ValidatingPolicy::new(d).expect("the policy compiles");
            (policy.name().to_owned(), policy)
        })
        .collect();
    let bindings: Vec<&Value> = documents
        .iter()
        .filter(|d| d["kind"] == "ValidatingAdmissionPolicyBinding")
        .collect();
    assert_eq!(policies.len(), 3, "slices, services and leases");
    for name in policies.keys() {
        let binding = bindings
            .iter()
            .find(|b| b["spec"]["policyName"] == name.as_str())
            .unwrap_or_else(|| panic!("a binding for {name}"));
        assert_eq!(binding["spec"]["validationActions"], json!(["Deny"]));
        assert_eq!(binding["spec"]["paramRef"]["name"], "vknf-host-addresses");
    }
    policies
}

/// vknf-system/vknf-host-addresses with gpu-a and gpu-b registered.
fn params() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": { "name": "vknf-host-addresses", "namespace": "vknf-system" },
        "data": { "gpu-a": "127.0.0.2", "gpu-b": "127.0.0.3" },
    })
}

fn host_user(name: &str) -> UserInfo {
    UserInfo::service_account("vknf-hosts", name)
}

fn function_service() -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some("classify".into()),
            namespace: Some(NAMESPACE.into()),
            uid: Some("5b0c4a0e-0000-4000-8000-000000000001".into()),
            labels: Some([(keys::FUNCTION_LABEL.to_owned(), "true".to_owned())].into()),
            annotations: Some([("vknf.io/spirv".to_owned(), "AwIjBw==".to_owned())].into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            ports: Some(vec![ServicePort {
                name: Some("binary".into()),
                port: 7100,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The slice the agent of `host` (at `address`) publishes for the function, as JSON.
fn agent_slice(host: &str, address: &str) -> Value {
    let identity = HostIdentity::new(host, vec![address.parse().unwrap()], BTreeMap::new()).unwrap();
    let slice = desired_slice(&function_service(), &identity, Some(8080), EndpointState::READY).unwrap();
    let mut value = serde_json::to_value(slice).unwrap();
    value["apiVersion"] = json!("discovery.k8s.io/v1");
    value["kind"] = json!("EndpointSlice");
    value
}

fn input<K: kube::Resource<DynamicType = ()>>(
    operation: &str,
    subresource: &str,
    name: &str,
    user: &UserInfo,
    object: Option<&Value>,
    old_object: Option<&Value>,
) -> AdmissionInput
where
    K::Scope: 'static,
{
    let namespace = object.or(old_object).and_then(|o| o["metadata"]["namespace"].as_str());
    AdmissionInput {
        request: AdmissionInput::request(operation, &ResourceType::of::<K>(), subresource, namespace, name, user),
        object: object.cloned().unwrap_or(Value::Null),
        old_object: old_object.cloned().unwrap_or(Value::Null),
        params: params(),
    }
}

fn denied(verdict: Verdict, what: &str) -> String {
    match verdict {
        Verdict::Denied { message, reason } => {
            assert_eq!(reason, "Forbidden");
            message
        }
        other => panic!("{what}: expected a denial, got {other:?}"),
    }
}

#[test]
fn hosts_may_write_only_their_own_slices_with_their_own_address() {
    let policies = policies();
    let policy = &policies["vknf-host-endpointslices"];
    let gpu_a = host_user("gpu-a");
    let own = agent_slice("gpu-a", "127.0.0.2");
    let name = "classify.gpu-a";
    let check = |op: &str, user: &UserInfo, object: Option<&Value>, old: Option<&Value>| {
        policy.evaluate(&input::<EndpointSlice>(op, "", name, user, object, old))
    };

    // What the agent does: create, update (ready -> draining) and delete its own slice.
    let mut draining = own.clone();
    draining["endpoints"][0]["conditions"] = json!({"ready": false, "serving": true, "terminating": true});
    assert_eq!(check("CREATE", &gpu_a, Some(&own), None), Verdict::Allowed);
    assert_eq!(check("UPDATE", &gpu_a, Some(&draining), Some(&own)), Verdict::Allowed);
    assert_eq!(check("DELETE", &gpu_a, None, Some(&own)), Verdict::Allowed);

    // Another address than the host's own.
    let foreign = agent_slice("gpu-a", "10.1.2.3");
    let message = denied(check("CREATE", &gpu_a, Some(&foreign), None), "foreign address");
    assert!(message.contains("only its own address"), "{message}");
    let mut extra = own.clone();
    extra["endpoints"][0]["addresses"] = json!(["127.0.0.2", "127.0.0.3"]);
    denied(check("UPDATE", &gpu_a, Some(&extra), Some(&own)), "a second address");
    let mut node = own.clone();
    node["endpoints"][0]["nodeName"] = json!("worker-1");
    denied(check("CREATE", &gpu_a, Some(&node), None), "a nodeName");

    // A slice not managed by the agent, or claiming another host.
    let mut unmanaged = own.clone();
    unmanaged["metadata"]["labels"][keys::MANAGED_BY_LABEL] = json!("endpointslice-controller.k8s.io");
    let message = denied(check("CREATE", &gpu_a, Some(&unmanaged), None), "unmanaged");
    assert!(message.contains("managed-by=agent.vknf.io"), "{message}");
    let mut unlabelled = own.clone();
    unlabelled["metadata"].as_object_mut().unwrap().remove("labels");
    denied(check("CREATE", &gpu_a, Some(&unlabelled), None), "no labels");
    let mut renamed = own.clone();
    renamed["metadata"]["name"] = json!("classify.gpu-b");
    denied(check("CREATE", &gpu_a, Some(&renamed), None), "another host's name");

    // Another host's identity writing or deleting gpu-a's slice.
    let gpu_b = host_user("gpu-b");
    denied(
        check("CREATE", &gpu_b, Some(&own), None),
        "gpu-b creating gpu-a's slice",
    );
    denied(
        check("UPDATE", &gpu_b, Some(&own), Some(&own)),
        "gpu-b updating gpu-a's slice",
    );
    denied(
        check("DELETE", &gpu_b, None, Some(&own)),
        "gpu-b deleting gpu-a's slice",
    );
    // ... or relabelling it as its own (the old object still says gpu-a).
    let taken = agent_slice("gpu-b", "127.0.0.3");
    let message = denied(check("UPDATE", &gpu_b, Some(&taken), Some(&own)), "takeover");
    assert!(message.contains("take over"), "{message}");
    // A kube-controller slice turned into an agent slice is a takeover too.
    denied(
        check("UPDATE", &gpu_a, Some(&own), Some(&unmanaged)),
        "controller slice takeover",
    );

    // A host identity without a registered address can do nothing.
    let message = denied(check("CREATE", &host_user("gpu-z"), Some(&own), None), "unregistered");
    assert!(message.contains("no address"), "{message}");

    // Identities other than hosts' are outside the policy: the watchdog, administrators.
    let watchdog = UserInfo::service_account("vknf-system", "vknf-watchdog");
    assert_eq!(
        check("UPDATE", &watchdog, Some(&draining), Some(&own)),
        Verdict::NotMatched
    );
    let admin = UserInfo::user("kubernetes-admin", &["system:masters"]);
    assert_eq!(check("CREATE", &admin, Some(&foreign), None), Verdict::NotMatched);
    // ... and so are other resources.
    assert_eq!(
        policy.evaluate(&input::<ConfigMap>("CREATE", "", "x", &gpu_a, Some(&own), None)),
        Verdict::NotMatched
    );
}

#[test]
fn hosts_may_change_only_their_own_status_annotation_of_function_services() {
    let policies = policies();
    let policy = &policies["vknf-host-services"];
    let gpu_a = host_user("gpu-a");
    let old = serde_json::to_value(function_service()).unwrap();
    let check = |user: &UserInfo, new: &Value, old: &Value| {
        policy.evaluate(&input::<Service>("UPDATE", "", "classify", user, Some(new), Some(old)))
    };
    let annotated = |key: &str, value: Option<&str>| {
        let mut service = old.clone();
        service["metadata"]["annotations"][key] = value.map_or(Value::Null, |v| json!(v));
        if value.is_none() {
            service["metadata"]["annotations"].as_object_mut().unwrap().remove(key);
        }
        service
    };

    let serving = annotated("vknf.io/status-gpu-a", Some(r#"{"phase":"Serving"}"#));
    assert_eq!(check(&gpu_a, &serving, &old), Verdict::Allowed);
    assert_eq!(
        check(&gpu_a, &old, &serving),
        Verdict::Allowed,
        "removing its own status"
    );

    let message = denied(
        check(&gpu_a, &annotated("vknf.io/status-gpu-b", Some("{}")), &old),
        "another host's status",
    );
    assert!(message.contains("only its own status annotation"), "{message}");
    denied(
        check(&gpu_a, &annotated("vknf.io/spirv", Some("AAAA")), &old),
        "the kernel",
    );
    denied(
        check(&gpu_a, &annotated("vknf.io/spirv", None), &old),
        "removing the kernel",
    );
    let mut ported = serving.clone();
    ported["spec"]["ports"][0]["port"] = json!(22);
    denied(check(&gpu_a, &ported, &old), "the spec");
    let mut relabelled = serving.clone();
    relabelled["metadata"]["labels"]["team"] = json!("x");
    denied(check(&gpu_a, &relabelled, &old), "labels");
    let mut finalized = serving.clone();
    finalized["metadata"]["finalizers"] = json!(["example.com/block"]);
    denied(check(&gpu_a, &finalized, &old), "finalizers");

    // Services that are not functions are off limits altogether.
    let mut plain = old.clone();
    plain["metadata"]["labels"] = json!({"app": "database"});
    let mut plain_annotated = plain.clone();
    plain_annotated["metadata"]["annotations"]["vknf.io/status-gpu-a"] = json!("{}");
    let message = denied(check(&gpu_a, &plain_annotated, &plain), "a plain Service");
    assert!(message.contains("only function Services"), "{message}");

    // Creating, deleting and the status subresource are refused.
    denied(
        policy.evaluate(&input::<Service>("CREATE", "", "classify", &gpu_a, Some(&old), None)),
        "create",
    );
    denied(
        policy.evaluate(&input::<Service>("DELETE", "", "classify", &gpu_a, None, Some(&old))),
        "delete",
    );
    denied(
        policy.evaluate(&input::<Service>(
            "UPDATE",
            "status",
            "classify",
            &gpu_a,
            Some(&serving),
            Some(&old),
        )),
        "status",
    );
}

#[test]
fn hosts_may_hold_only_their_own_lease() {
    let policies = policies();
    let policy = &policies["vknf-host-leases"];
    let gpu_a = host_user("gpu-a");
    let lease = |name: &str, holder: &str| {
        json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": { "name": name, "namespace": LEASE_NAMESPACE },
            "spec": { "holderIdentity": holder, "leaseDurationSeconds": 40 },
        })
    };
    let own = lease("vknf-host-gpu-a", "gpu-a");
    let check = |op: &str, name: &str, new: Option<&Value>, old: Option<&Value>| {
        policy.evaluate(&input::<Lease>(op, "", name, &gpu_a, new, old))
    };
    assert_eq!(check("CREATE", "vknf-host-gpu-a", Some(&own), None), Verdict::Allowed);
    assert_eq!(
        check("UPDATE", "vknf-host-gpu-a", Some(&own), Some(&own)),
        Verdict::Allowed
    );
    let other = lease("vknf-host-gpu-b", "gpu-a");
    denied(
        check("CREATE", "vknf-host-gpu-b", Some(&other), None),
        "another host's Lease",
    );
    let watchdog = lease("vknf-watchdog", "gpu-a");
    denied(
        check("CREATE", "vknf-watchdog", Some(&watchdog), None),
        "the watchdog's Lease",
    );
    denied(
        check(
            "UPDATE",
            "vknf-host-gpu-a",
            Some(&lease("vknf-host-gpu-a", "gpu-b")),
            Some(&own),
        ),
        "another holder",
    );
    denied(check("DELETE", "vknf-host-gpu-a", None, Some(&own)), "delete");
}

fn forbidden<T: std::fmt::Debug>(result: Result<T, kube::Error>, what: &str) -> String {
    match result {
        Err(kube::Error::Api(status)) if status.code == 403 => status.message,
        other => panic!("{what}: expected 403 Forbidden, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_identity_is_refused_everything_outside_its_permissions() {
    let fake = cluster().await;
    let agent = start_agent(&fake, &GPU_A);
    let port = free_port();
    let model = forest(5, 4, 3);
    let (mut service, configmaps) = function("classify", port, &model, "v1");
    annotate(&mut service, keys::HOST_NAMES, GPU_A.name);
    apply(&fake, &service, &configmaps);
    wait_for("the endpoint ready", || {
        slice_ready(&fake, "classify", &GPU_A) == Some(true)
    })
    .await;
    wait_for("status serving", || {
        phase(&fake, "classify", &GPU_A) == Some(FunctionPhase::Serving)
    })
    .await;
    let input = rows(3, 50);
    assert_eq!(
        classify(SocketAddr::new(GPU_A.ip, port), &input).await.unwrap(),
        expected_labels(&model, &input)
    );
    wait_for("a Serving event", || {
        events(&fake, "classify").iter().any(|e| e.0 == "Serving")
    })
    .await;
    assert!(
        fake.get::<Lease>(LEASE_NAMESPACE, &keys::host_lease_name(GPU_A.name))
            .unwrap()
            .is_some()
    );
    // The agent needed nothing it was not granted.
    assert_never_refused(&fake);

    // Now the host's token, as a thief would use it.
    let client = host_client(&fake, &GPU_A);
    let mut database = Service {
        metadata: ObjectMeta {
            name: Some("database".into()),
            namespace: Some(NAMESPACE.into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            ports: Some(vec![ServicePort {
                port: 5432,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    fake.insert(&database).unwrap();
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    let annotate_patch = json!({"metadata": {"annotations": {"vknf.io/status-gpu-a": "{}"}}});
    let message = forbidden(
        services
            .patch("database", &PatchParams::default(), &Patch::Merge(&annotate_patch))
            .await,
        "patching a Service that is not a function",
    );
    assert!(
        message.contains("ValidatingAdmissionPolicy 'vknf-host-services'"),
        "{message}"
    );
    let other_status = json!({"metadata": {"annotations": {"vknf.io/status-gpu-b": "{}"}}});
    forbidden(
        services
            .patch("classify", &PatchParams::default(), &Patch::Merge(&other_status))
            .await,
        "writing another host's status",
    );
    let port_patch = json!({"spec": {"ports": [{"name": "binary", "port": 22, "protocol": "TCP"}]}});
    forbidden(
        services
            .patch("classify", &PatchParams::default(), &Patch::Merge(&port_patch))
            .await,
        "changing a function's port",
    );
    database.metadata.name = Some("new".into());
    forbidden(
        services.create(&PostParams::default(), &database).await,
        "creating a Service",
    );

    // Reading outside the function namespaces.
    let mut secret_config = configmaps[0].clone();
    secret_config.metadata.namespace = Some("kube-system".into());
    fake.insert(&secret_config).unwrap();
    let elsewhere: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-system");
    let name = secret_config.metadata.name.clone().unwrap();
    let message = forbidden(elsewhere.get(&name).await, "reading a ConfigMap in another namespace");
    assert_eq!(
        message,
        format!(
            "configmaps \"{name}\" is forbidden: User \"system:serviceaccount:vknf-hosts:gpu-a\" cannot get \
             resource \"configmaps\" in API group \"\" in the namespace \"kube-system\""
        )
    );
    let all: Api<ConfigMap> = Api::all(client.clone());
    forbidden(
        all.list(&ListParams::default()).await,
        "listing ConfigMaps cluster-wide",
    );
    let system: Api<ConfigMap> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    forbidden(system.get("vknf-host-addresses").await, "reading the address registry");

    // EndpointSlices: foreign address, another host's slice, unmanaged slices.
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NAMESPACE);
    let apply = PatchParams::apply(keys::FIELD_MANAGER).force();
    let mut hijack = serde_json::from_value::<EndpointSlice>(agent_slice("gpu-a", "10.9.9.9")).unwrap();
    hijack.metadata.namespace = Some(NAMESPACE.into());
    let message = forbidden(
        slices.patch("classify.gpu-a", &apply, &Patch::Apply(&hijack)).await,
        "publishing a foreign address",
    );
    assert!(message.contains("only its own address"), "{message}");
    let as_b = serde_json::from_value::<EndpointSlice>(agent_slice("gpu-b", "127.0.0.2")).unwrap();
    forbidden(
        slices.patch("classify.gpu-b", &apply, &Patch::Apply(&as_b)).await,
        "publishing as another host",
    );
    let mut by_hand = as_b.clone();
    by_hand.metadata.name = Some("classify.by-hand".into());
    by_hand.metadata.labels = Some([(keys::SERVICE_NAME_LABEL.to_owned(), "classify".to_owned())].into());
    forbidden(
        slices.create(&PostParams::default(), &by_hand).await,
        "creating an unmanaged slice",
    );
    fake.insert(&{
        let mut theirs = serde_json::from_value::<EndpointSlice>(agent_slice("gpu-b", "127.0.0.3")).unwrap();
        theirs.metadata.namespace = Some(NAMESPACE.into());
        theirs
    })
    .unwrap();
    forbidden(
        slices.delete("classify.gpu-b", &DeleteParams::default()).await,
        "deleting another host's slice",
    );
    assert!(slice(&fake, "classify", &GPU_B).is_some());

    // Leases: another host's (RBAC names only its own), the watchdog's (admission).
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    forbidden(leases.get("vknf-host-gpu-b").await, "reading another host's Lease");
    let mut stolen = fake
        .get::<Lease>(LEASE_NAMESPACE, &keys::host_lease_name(GPU_A.name))
        .unwrap()
        .unwrap();
    stolen.metadata = ObjectMeta {
        name: Some(keys::WATCHDOG_LEASE.into()),
        namespace: Some(LEASE_NAMESPACE.into()),
        ..Default::default()
    };
    let message = forbidden(
        leases.create(&PostParams::default(), &stolen).await,
        "creating the watchdog's Lease",
    );
    assert!(message.contains("only its own Lease"), "{message}");

    // The agent itself is unaffected by all this.
    assert_eq!(phase(&fake, "classify", &GPU_A), Some(FunctionPhase::Serving));
    assert_eq!(slice_ready(&fake, "classify", &GPU_A), Some(true));
    agent.shutdown().await;
}
