//! Leader-election style Lease handling and events, the node agent's other write paths.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as EventV1;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, ObjectMeta, PostParams, ResourceExt};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use crate::{api_status, fake};

fn lease(holder: &str) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some("vknf-leader".into()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(Timestamp::UNIX_EPOCH)),
            ..LeaseSpec::default()
        }),
    }
}

#[tokio::test]
async fn lease_renewals_race_through_optimistic_concurrency() {
    let (_fake, client) = fake().await;
    let leases: Api<Lease> = Api::namespaced(client, "vknf-system");
    let created = leases
        .create(&PostParams::default(), &lease("node-a"))
        .await
        .expect("acquire");
    let taken = api_status(leases.create(&PostParams::default(), &lease("node-b")).await);
    assert_eq!(taken.code, 409);

    // Both contenders read the same version; only the first write wins.
    let seen_by_a = leases.get("vknf-leader").await.expect("a reads");
    let seen_by_b = leases.get("vknf-leader").await.expect("b reads");
    let mut renewal = seen_by_a.clone();
    if let Some(spec) = renewal.spec.as_mut() {
        spec.renew_time = Some(MicroTime(Timestamp::now()));
    }
    let renewed = leases
        .replace("vknf-leader", &PostParams::default(), &renewal)
        .await
        .expect("holder renews");
    assert_ne!(renewed.resource_version(), created.resource_version());

    let mut takeover = seen_by_b;
    if let Some(spec) = takeover.spec.as_mut() {
        spec.holder_identity = Some("node-b".into());
        spec.lease_transitions = Some(1);
    }
    let lost = api_status(leases.replace("vknf-leader", &PostParams::default(), &takeover).await);
    assert_eq!((lost.code, lost.reason.as_str()), (409, "Conflict"));
    let current = leases.get("vknf-leader").await.expect("get");
    assert_eq!(current.spec.and_then(|s| s.holder_identity).as_deref(), Some("node-a"));
}

#[tokio::test]
async fn recorder_events_are_created_then_patched_as_a_series() {
    let (_fake, client) = fake().await;
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "vknf-agent".into(),
            instance: Some("node-a".into()),
        },
    );
    let reference = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Service".into()),
        name: Some("web".into()),
        namespace: Some("default".into()),
        ..ObjectReference::default()
    };
    let event = Event {
        type_: EventType::Normal,
        reason: "Scheduled".into(),
        note: Some("classifier loaded".into()),
        action: "Load".into(),
        secondary: None,
    };
    recorder
        .publish(&event, &reference)
        .await
        .expect("first publish creates");
    recorder
        .publish(&event, &reference)
        .await
        .expect("second publish patches");
    let events: Api<EventV1> = Api::namespaced(client.clone(), "default");
    let listed = events.list(&ListParams::default()).await.expect("list events");
    assert_eq!(listed.items.len(), 1);
    let stored = &listed.items[0];
    assert_eq!(stored.reporting_controller.as_deref(), Some("vknf-agent"));
    assert_eq!(stored.series.as_ref().map(|s| s.count), Some(2));

    let mut incomplete = stored.clone();
    incomplete.metadata = ObjectMeta {
        name: Some(format!("{}-copy", stored.name_any())),
        ..ObjectMeta::default()
    };
    incomplete.action = None;
    let invalid = api_status(events.create(&PostParams::default(), &incomplete).await);
    assert_eq!((invalid.code, invalid.reason.as_str()), (422, "Invalid"));
}
