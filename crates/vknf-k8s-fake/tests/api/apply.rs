//! Server-side apply: create-or-merge, field removal, conflicts and force.

use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{Api, Patch, PatchParams, PostParams, ResourceExt};
use serde_json::json;

use crate::{api_status, fake, service};

fn applied_config_map(labels: serde_json::Value, data: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "cfg", "labels": labels},
        "data": data,
    })
}

#[tokio::test]
async fn apply_creates_then_merges_and_removes_dropped_fields() {
    let (fake, client) = fake().await;
    let maps: Api<ConfigMap> = Api::namespaced(client, "default");
    let agent = PatchParams::apply("vknf-agent");
    let first = applied_config_map(json!({"a": "1", "b": "2"}), json!({"x": "1"}));
    let created = maps
        .patch("cfg", &agent, &Patch::Apply(&first))
        .await
        .expect("apply creates");
    assert!(created.uid().is_some());
    assert_eq!(
        fake.request_log().last().map(|r| r.status),
        Some(201),
        "an apply that creates answers 201"
    );
    let managers: Vec<String> = created
        .managed_fields()
        .iter()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert_eq!(managers, vec!["vknf-agent"]);

    // Another writer adds a field the agent does not manage.
    let extra = json!({"data": {"y": "from-editor"}});
    maps.patch("cfg", &PatchParams::default(), &Patch::Merge(&extra))
        .await
        .expect("merge");

    let second = applied_config_map(json!({"a": "1"}), json!({"x": "2"}));
    let merged = maps
        .patch("cfg", &agent, &Patch::Apply(&second))
        .await
        .expect("re-apply");
    assert_eq!(
        merged.labels().keys().collect::<Vec<_>>(),
        vec!["a"],
        "label b was dropped"
    );
    let data = merged.data.clone().expect("data");
    assert_eq!(data.get("x").map(String::as_str), Some("2"));
    assert_eq!(
        data.get("y").map(String::as_str),
        Some("from-editor"),
        "other managers' fields stay"
    );

    let again = maps
        .patch("cfg", &agent, &Patch::Apply(&second))
        .await
        .expect("identical apply");
    assert_eq!(
        again.resource_version(),
        merged.resource_version(),
        "no-op apply keeps the version"
    );
}

#[tokio::test]
async fn applying_over_another_manager_conflicts_unless_forced() {
    let (_fake, client) = fake().await;
    let maps: Api<ConfigMap> = Api::namespaced(client, "default");
    let config = |value: &str| applied_config_map(json!({}), json!({"owner": value}));
    maps.patch("cfg", &PatchParams::apply("first"), &Patch::Apply(&config("first")))
        .await
        .expect("first apply");
    let conflict = api_status(
        maps.patch("cfg", &PatchParams::apply("second"), &Patch::Apply(&config("second")))
            .await,
    );
    assert_eq!((conflict.code, conflict.reason.as_str()), (409, "Conflict"));
    assert!(
        conflict.message.contains("conflict with \"first\""),
        "{}",
        conflict.message
    );
    assert_eq!(
        conflict.details.map(|d| d.causes[0].field.clone()),
        Some(".data.owner".to_string())
    );

    let forced = maps
        .patch(
            "cfg",
            &PatchParams::apply("second").force(),
            &Patch::Apply(&config("second")),
        )
        .await
        .expect("forced apply");
    assert_eq!(
        forced.data.as_ref().and_then(|d| d.get("owner").cloned()).as_deref(),
        Some("second")
    );
    let owners: Vec<String> = forced
        .managed_fields()
        .iter()
        .filter(|m| {
            m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.pointer("/f:data/f:owner").is_some())
        })
        .filter_map(|m| m.manager.clone())
        .collect();
    assert_eq!(owners, vec!["second"]);
}

#[tokio::test]
async fn apply_requires_a_field_manager_and_keeps_service_status() {
    let (fake, client) = fake().await;
    let services: Api<Service> = Api::namespaced(client, "default");
    services
        .create(&PostParams::default(), &service("web", &[]))
        .await
        .expect("create");
    let config = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"ports": [{"port": 8080}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}},
    });
    let unnamed = PatchParams::default();
    let rejected = api_status(services.patch("web", &unnamed, &Patch::Apply(&config)).await);
    assert_eq!(rejected.code, 400);

    let applied = services
        .patch("web", &PatchParams::apply("agent").force(), &Patch::Apply(&config))
        .await
        .expect("apply");
    assert_eq!(applied.spec.and_then(|s| s.ports).map(|p| p[0].port), Some(8080));
    let ingress = applied.status.and_then(|s| s.load_balancer).and_then(|l| l.ingress);
    assert_eq!(ingress, None, "status is only writable through /status");

    let status_patch = json!({"status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}});
    let with_status = services
        .patch_status("web", &PatchParams::default(), &Patch::Merge(&status_patch))
        .await
        .expect("status patch");
    let ingress = with_status.status.and_then(|s| s.load_balancer).and_then(|l| l.ingress);
    assert_eq!(ingress.map(|i| i[0].ip.clone()), Some(Some("1.2.3.4".to_string())));
    assert!(
        fake.request_log()
            .iter()
            .any(|r| r.path.ends_with("/services/web/status"))
    );
}
