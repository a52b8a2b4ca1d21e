//! get/list/create/replace/patch/delete through `kube::Api`, and the server's side channels.

use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, ResourceExt};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::json;
use vknf_k8s_fake::{FakeApiServer, InjectedFailure};

use crate::{api_status, config_map, fake, service};

#[tokio::test]
async fn services_round_trip_with_server_assigned_fields() {
    let (fake, client) = fake().await;
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let created = services
        .create(&PostParams::default(), &service("web", &[("app", "vknf")]))
        .await
        .expect("create");
    assert!(created.uid().is_some());
    assert!(created.creation_timestamp().is_some());
    assert_eq!(created.metadata.generation, Some(1));
    assert_eq!(created.resource_version(), Some(fake.resource_version().to_string()));
    let spec = created.spec.clone().expect("spec");
    assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.10"));
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));

    let again = api_status(services.create(&PostParams::default(), &service("web", &[])).await);
    assert_eq!((again.code, again.reason.as_str()), (409, "AlreadyExists"));

    let fetched = services.get("web").await.expect("get");
    assert_eq!(fetched.uid(), created.uid());
    let missing = api_status(services.get("nope").await);
    assert_eq!((missing.code, missing.reason.as_str()), (404, "NotFound"));
    assert_eq!(missing.message, "services \"nope\" not found");

    // Services answer DELETE with the deleted object.
    let deleted = services.delete("web", &DeleteParams::default()).await.expect("delete");
    assert_eq!(deleted.left().and_then(|s| s.uid()), created.uid());
    assert!(fake.get::<Service>("default", "web").expect("typed get").is_none());
}

#[tokio::test]
async fn lists_filter_by_selectors_and_namespaces() {
    let (_fake, client) = fake().await;
    let default: Api<Service> = Api::namespaced(client.clone(), "default");
    let other: Api<Service> = Api::namespaced(client.clone(), "other");
    let pp = PostParams::default();
    default
        .create(&pp, &service("a", &[("app", "vknf"), ("tier", "gpu")]))
        .await
        .expect("a");
    default.create(&pp, &service("b", &[("app", "vknf")])).await.expect("b");
    default
        .create(&pp, &service("c", &[("app", "other")]))
        .await
        .expect("c");
    other.create(&pp, &service("d", &[("app", "vknf")])).await.expect("d");

    let names = |list: kube::core::ObjectList<Service>| -> Vec<String> {
        list.items.iter().map(ResourceExt::name_any).collect()
    };
    let selected = default
        .list(&ListParams::default().labels("app=vknf"))
        .await
        .expect("list");
    assert_eq!(names(selected), vec!["a", "b"]);
    let set_based = default
        .list(&ListParams::default().labels("app in (vknf,other),!tier"))
        .await
        .expect("list");
    assert_eq!(names(set_based), vec!["b", "c"]);
    let by_name = default
        .list(&ListParams::default().fields("metadata.name=c"))
        .await
        .expect("list");
    assert_eq!(names(by_name), vec!["c"]);

    let everywhere: Api<Service> = Api::all(client.clone());
    let all = everywhere
        .list(&ListParams::default().labels("app=vknf"))
        .await
        .expect("list all");
    assert_eq!(names(all), vec!["a", "b", "d"]);

    let bad = api_status(default.list(&ListParams::default().fields("spec.ports=1")).await);
    assert_eq!(bad.code, 400);
}

#[tokio::test]
async fn lists_page_with_limit_and_continue() {
    let (_fake, client) = fake().await;
    let maps: Api<ConfigMap> = Api::namespaced(client, "default");
    for name in ["a", "b", "c", "d", "e"] {
        maps.create(&PostParams::default(), &config_map(name, "1"))
            .await
            .expect("create");
    }
    let first = maps.list(&ListParams::default().limit(2)).await.expect("page 1");
    assert_eq!(first.items.len(), 2);
    assert_eq!(first.metadata.remaining_item_count, Some(3));
    let token = first.metadata.continue_.clone().expect("continue token");
    let mut seen: Vec<String> = first.items.iter().map(ResourceExt::name_any).collect();
    let mut next = Some(token);
    while let Some(token) = next {
        let page = maps
            .list(&ListParams::default().limit(2).continue_token(&token))
            .await
            .expect("next page");
        assert_eq!(page.metadata.resource_version, first.metadata.resource_version);
        seen.extend(page.items.iter().map(ResourceExt::name_any));
        next = page.metadata.continue_.filter(|t| !t.is_empty());
    }
    assert_eq!(seen, vec!["a", "b", "c", "d", "e"]);
}

#[tokio::test]
async fn replace_with_a_stale_resource_version_conflicts() {
    let (_fake, client) = fake().await;
    let maps: Api<ConfigMap> = Api::namespaced(client, "default");
    let created = maps
        .create(&PostParams::default(), &config_map("cfg", "1"))
        .await
        .expect("create");

    let mut first = created.clone();
    first.data = Some([("key".to_string(), "2".to_string())].into());
    let replaced = maps
        .replace("cfg", &PostParams::default(), &first)
        .await
        .expect("replace");
    assert_ne!(replaced.resource_version(), created.resource_version());
    assert_eq!(replaced.metadata.generation, Some(2));

    let mut stale = created.clone();
    stale.data = Some([("key".to_string(), "3".to_string())].into());
    let conflict = api_status(maps.replace("cfg", &PostParams::default(), &stale).await);
    assert_eq!((conflict.code, conflict.reason.as_str()), (409, "Conflict"));
    assert!(
        conflict.message.contains("the object has been modified"),
        "{}",
        conflict.message
    );
    let current = maps.get("cfg").await.expect("get");
    assert_eq!(current.data.and_then(|d| d.get("key").cloned()).as_deref(), Some("2"));
}

#[tokio::test]
async fn merge_patches_update_and_delete_fields() {
    let (fake, client) = fake().await;
    let maps: Api<ConfigMap> = Api::namespaced(client, "default");
    maps.create(&PostParams::default(), &config_map("cfg", "1"))
        .await
        .expect("create");
    let patch = json!({"metadata": {"labels": {"app": "vknf"}}, "data": {"key": null, "other": "x"}});
    let patched = maps
        .patch("cfg", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("merge patch");
    assert_eq!(patched.labels().get("app").map(String::as_str), Some("vknf"));
    assert_eq!(patched.data, Some([("other".to_string(), "x".to_string())].into()));

    let strategic = json!({"data": {"third": "y"}});
    let patched = maps
        .patch("cfg", &PatchParams::default(), &Patch::Strategic(&strategic))
        .await
        .expect("strategic patch");
    assert_eq!(patched.data.map(|d| d.len()), Some(2));

    let kinds: Vec<Option<String>> = fake
        .request_log()
        .iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| r.content_type.clone())
        .collect();
    assert_eq!(
        kinds,
        vec![
            Some("application/merge-patch+json".to_string()),
            Some("application/strategic-merge-patch+json".to_string())
        ]
    );
    let missing = api_status(maps.patch("nope", &PatchParams::default(), &Patch::Merge(&patch)).await);
    assert_eq!(missing.code, 404);
}

#[tokio::test]
async fn deletes_return_status_and_honour_finalizers() {
    let (fake, client) = fake().await;
    let maps: Api<ConfigMap> = Api::namespaced(client, "default");
    maps.create(&PostParams::default(), &config_map("plain", "1"))
        .await
        .expect("create");
    let status = maps.delete("plain", &DeleteParams::default()).await.expect("delete");
    let status = status.right().expect("ConfigMaps answer DELETE with a Status");
    assert!(status.is_success());
    assert_eq!(status.details.map(|d| d.name), Some("plain".to_string()));

    let mut held = config_map("held", "1");
    held.metadata.finalizers = Some(vec!["vknf.io/cleanup".into()]);
    maps.create(&PostParams::default(), &held).await.expect("create");
    let pending = maps.delete("held", &DeleteParams::default()).await.expect("delete");
    let pending = pending.left().expect("a held object comes back");
    assert!(pending.metadata.deletion_timestamp.is_some());
    let clear = json!({"metadata": {"finalizers": null}});
    maps.patch("held", &PatchParams::default(), &Patch::Merge(&clear))
        .await
        .expect("clear");
    assert!(fake.get::<ConfigMap>("default", "held").expect("typed get").is_none());
    let gone = api_status(maps.delete("held", &DeleteParams::default()).await);
    assert_eq!(gone.code, 404);
}

#[tokio::test]
async fn invalid_objects_are_rejected_with_causes() {
    let (_fake, client) = fake().await;
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let invalid = api_status(
        services
            .create(&PostParams::default(), &service("Not_A_Name", &[]))
            .await,
    );
    assert_eq!((invalid.code, invalid.reason.as_str()), (422, "Invalid"));
    let mut portless = service("web", &[]);
    portless.spec.as_mut().expect("spec").ports = None;
    let invalid = api_status(services.create(&PostParams::default(), &portless).await);
    assert_eq!(
        invalid.details.map(|d| d.causes[0].field.clone()),
        Some("spec.ports".into())
    );

    let slices: Api<EndpointSlice> = Api::namespaced(client, "default");
    let mut slice = EndpointSlice {
        address_type: "IPv4".into(),
        endpoints: vec![Endpoint {
            addresses: vec!["10.0.0.1".into()],
            ..Endpoint::default()
        }],
        ..EndpointSlice::default()
    };
    slice.metadata.name = Some("web-abc".into());
    let created = slices
        .create(&PostParams::default(), &slice)
        .await
        .expect("valid slice");
    let mut changed = created.clone();
    changed.address_type = "IPv6".into();
    let immutable = api_status(slices.replace("web-abc", &PostParams::default(), &changed).await);
    assert_eq!(immutable.code, 422);
}

#[tokio::test]
async fn generate_name_and_dry_run() {
    let (fake, client) = fake().await;
    let maps: Api<ConfigMap> = Api::namespaced(client, "default");
    let mut generated = config_map("", "1");
    generated.metadata.name = None;
    generated.metadata.generate_name = Some("vknf-".into());
    let created = maps.create(&PostParams::default(), &generated).await.expect("create");
    assert!(created.name_any().starts_with("vknf-"));
    assert_eq!(created.name_any().len(), "vknf-".len() + 5);

    let before = fake.resource_version();
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    maps.create(&dry, &config_map("dry", "1"))
        .await
        .expect("dry-run create");
    assert_eq!(fake.resource_version(), before);
    assert!(fake.get::<ConfigMap>("default", "dry").expect("typed get").is_none());
}

#[tokio::test]
async fn direct_store_access_is_visible_to_clients() {
    let (fake, client) = fake().await;
    let mut map = config_map("seeded", "1");
    map.metadata.namespace = Some("vknf".into());
    let stored = fake.insert(&map).expect("insert");
    assert!(stored.uid().is_some());
    let maps: Api<ConfigMap> = Api::namespaced(client, "vknf");
    assert_eq!(maps.get("seeded").await.expect("get").uid(), stored.uid());
    let listed: Vec<ConfigMap> = fake.list(Some("vknf")).expect("list");
    assert_eq!(listed.len(), 1);
    let removed = fake.remove::<ConfigMap>("vknf", "seeded").expect("remove");
    assert!(removed.is_some());
    assert_eq!(api_status(maps.get("seeded").await).code, 404);
    let unknown = fake.list::<k8s_openapi::api::core::v1::Pod>(None);
    assert!(matches!(unknown, Err(vknf_k8s_fake::FakeError::UnknownResource(_))));
}

#[tokio::test]
async fn injected_failures_hit_matching_requests_only() {
    let (fake, client) = fake().await;
    let maps: Api<ConfigMap> = Api::namespaced(client, "default");
    maps.create(&PostParams::default(), &config_map("cfg", "1"))
        .await
        .expect("create");
    fake.inject_failure(
        InjectedFailure::status(500)
            .method("get")
            .path_contains("/configmaps/cfg"),
    );
    let failed = api_status(maps.get("cfg").await);
    assert_eq!((failed.code, failed.reason.as_str()), (500, "InternalError"));
    maps.get("cfg").await.expect("the rule was used up");

    // kube's default client retries 429/503/504 itself, so transient unavailability is hidden.
    fake.clear_request_log();
    fake.inject_failure(InjectedFailure::status(503).path_contains("/configmaps/cfg").times(2));
    maps.get("cfg").await.expect("retried past two 503s");
    let statuses: Vec<u16> = fake.request_log().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![503, 503, 200]);
}

#[tokio::test]
async fn kubeconfig_and_discovery_work_for_other_clients() {
    let fake = FakeApiServer::start().await.expect("start");
    let kubeconfig = Kubeconfig::from_yaml(&fake.kubeconfig_yaml()).expect("kubeconfig parses");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("config from kubeconfig");
    assert_eq!(config.default_namespace, "default");
    let client = kube::Client::try_from(config).expect("client");
    let maps: Api<ConfigMap> = Api::default_namespaced(client.clone());
    maps.create(&PostParams::default(), &config_map("cfg", "1"))
        .await
        .expect("create");
    assert_eq!(fake.list::<ConfigMap>(Some("default")).expect("list").len(), 1);

    let version = client.apiserver_version().await.expect("version");
    assert_eq!(version.major, "1");
    let discovery = kube::Discovery::new(client).run().await.expect("discovery");
    let slices = discovery
        .groups()
        .find(|g| g.name() == "discovery.k8s.io")
        .expect("discovery.k8s.io is served");
    let kinds: Vec<String> = slices
        .recommended_resources()
        .into_iter()
        .map(|(r, _)| r.kind)
        .collect();
    assert_eq!(kinds, vec!["EndpointSlice"]);
}

#[tokio::test]
async fn metadata_only_requests_get_partial_objects() {
    let (_fake, client) = fake().await;
    let maps: Api<ConfigMap> = Api::namespaced(client, "default");
    let mut labelled = config_map("cfg", "1");
    labelled.metadata.labels = Some([("app".to_string(), "vknf".to_string())].into());
    maps.create(&PostParams::default(), &labelled).await.expect("create");
    let listed = maps.list_metadata(&ListParams::default()).await.expect("metadata list");
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].labels().get("app").map(String::as_str), Some("vknf"));
    let one = maps.get_metadata("cfg").await.expect("metadata get");
    assert_eq!(one.types.map(|t| t.kind), Some("PartialObjectMetadata".to_string()));
}

/// Sends a raw request through the kube client and returns the decoded JSON or the Status.
async fn raw(
    client: &kube::Client,
    method: &str,
    path: &str,
    content_type: &str,
    body: serde_json::Value,
) -> Result<serde_json::Value, kube::Error> {
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(body.to_string().into_bytes())
        .expect("valid request");
    client.request::<serde_json::Value>(request).await
}

#[tokio::test]
async fn json_patches_and_unsupported_requests() {
    let (_fake, client) = fake().await;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    maps.create(&PostParams::default(), &config_map("cfg", "1"))
        .await
        .expect("create");
    let path = "/api/v1/namespaces/default/configmaps/cfg";
    let patch = json!([
        {"op": "test", "path": "/data/key", "value": "1"},
        {"op": "add", "path": "/data/extra", "value": "2"},
    ]);
    let patched = raw(&client, "PATCH", path, "application/json-patch+json", patch)
        .await
        .expect("json patch");
    assert_eq!(patched["data"], json!({"key": "1", "extra": "2"}));
    let failed_test = json!([{"op": "test", "path": "/data/key", "value": "nope"}]);
    let invalid = api_status(raw(&client, "PATCH", path, "application/json-patch+json", failed_test).await);
    assert_eq!(invalid.code, 422);

    let unknown = api_status(raw(&client, "PATCH", path, "text/plain", json!({})).await);
    assert_eq!((unknown.code, unknown.reason.as_str()), (415, "UnsupportedMediaType"));
    let wrong_verb = api_status(raw(&client, "POST", path, "application/json", json!({})).await);
    assert_eq!(wrong_verb.code, 405);
    let wrong_kind = api_status(
        raw(
            &client,
            "POST",
            "/api/v1/namespaces/default/configmaps",
            "application/json",
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}}),
        )
        .await,
    );
    assert_eq!(wrong_kind.code, 400);
    let no_such_path = api_status(
        raw(
            &client,
            "GET",
            "/apis/apps/v1/deployments",
            "application/json",
            json!({}),
        )
        .await,
    );
    assert_eq!(no_such_path.code, 404);
}
