//! Watches: raw WatchEvents, `kube::runtime::watcher`, forced relists and reflectors.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, ResourceExt, WatchEvent, WatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio::sync::mpsc;

use crate::{config_map, fake, within};

type WatcherItem = Result<watcher::Event<ConfigMap>, watcher::Error>;

/// Runs a watcher in the background, forwarding everything it yields.
fn spawn_watcher(api: Api<ConfigMap>, config: watcher::Config) -> mpsc::UnboundedReceiver<WatcherItem> {
    let (sender, receiver) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = watcher(api, config).boxed();
        while let Some(item) = stream.next().await {
            if sender.send(item).is_err() {
                break;
            }
        }
    });
    receiver
}

/// Skips items until one satisfies `wanted`, returning it.
async fn next_matching(
    receiver: &mut mpsc::UnboundedReceiver<WatcherItem>,
    what: &str,
    wanted: impl Fn(&WatcherItem) -> bool,
) -> WatcherItem {
    within(what, async {
        loop {
            let item = receiver.recv().await.expect("watcher task ended");
            if wanted(&item) {
                return item;
            }
        }
    })
    .await
}

/// Like [`next_matching`], for items whose content the test does not inspect.
async fn skip_until(
    receiver: &mut mpsc::UnboundedReceiver<WatcherItem>,
    what: &str,
    wanted: impl Fn(&WatcherItem) -> bool,
) {
    // The matching item was checked by `wanted`; nothing else about it matters here.
    let _matched = next_matching(receiver, what, wanted).await;
}

fn is_init_done(item: &WatcherItem) -> bool {
    matches!(item, Ok(watcher::Event::InitDone))
}

fn value_of(map: &ConfigMap) -> Option<String> {
    map.data.as_ref().and_then(|d| d.get("key").cloned())
}

#[tokio::test]
async fn raw_watch_streams_added_modified_deleted_and_bookmarks() {
    let (fake, client) = fake().await;
    let maps: Api<ConfigMap> = Api::namespaced(client, "default");
    maps.create(&PostParams::default(), &config_map("before", "0"))
        .await
        .expect("create");
    let start = fake.resource_version().to_string();
    let mut events = maps
        .watch(&WatchParams::default().timeout(60), &start)
        .await
        .expect("watch")
        .boxed();

    maps.create(&PostParams::default(), &config_map("cfg", "1"))
        .await
        .expect("create");
    let patch = json!({"data": {"key": "2"}});
    maps.patch("cfg", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch");
    maps.delete("cfg", &DeleteParams::default()).await.expect("delete");
    fake.send_bookmarks();

    let mut seen = Vec::new();
    while seen.len() < 4 {
        let event = within("watch events", events.try_next())
            .await
            .expect("stream ok")
            .expect("open");
        seen.push(match event {
            WatchEvent::Added(m) => format!("ADDED {} {:?}", m.name_any(), value_of(&m)),
            WatchEvent::Modified(m) => format!("MODIFIED {} {:?}", m.name_any(), value_of(&m)),
            WatchEvent::Deleted(m) => format!("DELETED {} {:?}", m.name_any(), value_of(&m)),
            WatchEvent::Bookmark(b) => format!("BOOKMARK {}", b.metadata.resource_version),
            WatchEvent::Error(e) => format!("ERROR {}", e.code),
        });
    }
    assert_eq!(
        seen,
        vec![
            "ADDED cfg Some(\"1\")".to_string(),
            "MODIFIED cfg Some(\"2\")".to_string(),
            "DELETED cfg Some(\"2\")".to_string(),
            format!("BOOKMARK {}", fake.resource_version()),
        ],
        "events after the starting version only, and no bookmark unless asked for"
    );
}

#[tokio::test]
async fn bookmarks_reach_only_watches_that_allow_them() {
    let (fake, client) = fake().await;
    let maps: Api<ConfigMap> = Api::namespaced(client, "default");
    let start = fake.resource_version().to_string();
    let mut plain = maps
        .watch(&WatchParams::default().disable_bookmarks(), &start)
        .await
        .expect("watch")
        .boxed();
    let mut marked = maps
        .watch(&WatchParams::default(), &start)
        .await
        .expect("watch")
        .boxed();
    fake.send_bookmarks();
    maps.create(&PostParams::default(), &config_map("cfg", "1"))
        .await
        .expect("create");
    let first_marked = within("bookmark", marked.try_next()).await.expect("ok").expect("open");
    assert!(matches!(first_marked, WatchEvent::Bookmark(b) if b.metadata.resource_version == start));
    let first_plain = within("added", plain.try_next()).await.expect("ok").expect("open");
    assert!(matches!(first_plain, WatchEvent::Added(_)));
}

#[tokio::test]
async fn label_selected_watches_see_objects_leave_the_selection() {
    let (fake, client) = fake().await;
    let maps: Api<ConfigMap> = Api::namespaced(client, "default");
    let mut labelled = config_map("cfg", "1");
    labelled.metadata.labels = Some([("app".to_string(), "vknf".to_string())].into());
    maps.create(&PostParams::default(), &labelled).await.expect("create");
    let start = fake.resource_version().to_string();
    let mut events = maps
        .watch(&WatchParams::default().labels("app=vknf"), &start)
        .await
        .expect("watch")
        .boxed();
    let unlabel = json!({"metadata": {"labels": {"app": null}}});
    maps.patch("cfg", &PatchParams::default(), &Patch::Merge(&unlabel))
        .await
        .expect("patch");
    let relabel = json!({"metadata": {"labels": {"app": "vknf"}}});
    maps.patch("cfg", &PatchParams::default(), &Patch::Merge(&relabel))
        .await
        .expect("patch");
    let left = within("deleted", events.try_next()).await.expect("ok").expect("open");
    assert!(
        matches!(left, WatchEvent::Deleted(ref m) if m.labels().contains_key("app")),
        "{left:?}"
    );
    let back = within("added", events.try_next()).await.expect("ok").expect("open");
    assert!(matches!(back, WatchEvent::Added(_)), "{back:?}");
}

#[tokio::test]
async fn watches_end_at_their_timeout_and_when_the_server_drops() {
    let (fake, client) = fake().await;
    let maps: Api<ConfigMap> = Api::namespaced(client, "default");
    let start = fake.resource_version().to_string();
    let mut short = maps
        .watch(&WatchParams::default().disable_bookmarks().timeout(1), &start)
        .await
        .expect("watch")
        .boxed();
    assert!(
        within("timeout end", short.try_next())
            .await
            .expect("clean end")
            .is_none()
    );

    let mut long = maps
        .watch(&WatchParams::default(), &start)
        .await
        .expect("watch")
        .boxed();
    drop(fake);
    // The connection goes away with the server: the stream ends, with or without an error.
    let ended = within("end after drop", long.next()).await;
    assert!(!matches!(ended, Some(Ok(_))), "{ended:?}");
}

#[tokio::test]
async fn watching_a_compacted_version_is_410_gone() {
    let (fake, client) = fake().await;
    let maps: Api<ConfigMap> = Api::namespaced(client, "default");
    maps.create(&PostParams::default(), &config_map("cfg", "1"))
        .await
        .expect("create");
    let old = fake.resource_version().to_string();
    fake.compact();
    let mut events = maps.watch(&WatchParams::default(), &old).await.expect("watch").boxed();
    let error = within("error event", events.try_next())
        .await
        .expect("ok")
        .expect("open");
    match error {
        WatchEvent::Error(status) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    assert!(within("end", events.try_next()).await.expect("ok").is_none());
}

#[tokio::test]
async fn watcher_sees_applies_and_deletes() {
    let (_fake, client) = fake().await;
    let maps: Api<ConfigMap> = Api::namespaced(client, "default");
    maps.create(&PostParams::default(), &config_map("existing", "0"))
        .await
        .expect("create");
    let mut events = spawn_watcher(maps.clone(), watcher::Config::default());
    let init = next_matching(&mut events, "initial object", |i| {
        matches!(i, Ok(watcher::Event::InitApply(_)))
    })
    .await;
    assert!(matches!(init, Ok(watcher::Event::InitApply(ref m)) if m.name_any() == "existing"));
    skip_until(&mut events, "init done", is_init_done).await;

    maps.create(&PostParams::default(), &config_map("cfg", "1"))
        .await
        .expect("create");
    let added = next_matching(&mut events, "apply", |i| matches!(i, Ok(watcher::Event::Apply(_)))).await;
    assert!(matches!(added, Ok(watcher::Event::Apply(ref m)) if m.name_any() == "cfg"));
    let patch = json!({"data": {"key": "2"}});
    maps.patch("cfg", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch");
    let modified = next_matching(&mut events, "modify", |i| matches!(i, Ok(watcher::Event::Apply(_)))).await;
    assert!(matches!(modified, Ok(watcher::Event::Apply(ref m)) if value_of(m).as_deref() == Some("2")));
    maps.delete("cfg", &DeleteParams::default()).await.expect("delete");
    let deleted = next_matching(&mut events, "delete", |i| matches!(i, Ok(watcher::Event::Delete(_)))).await;
    assert!(matches!(deleted, Ok(watcher::Event::Delete(ref m)) if m.name_any() == "cfg"));
}

#[tokio::test]
async fn streaming_list_watchers_get_initial_events_then_changes() {
    let (fake, client) = fake().await;
    let maps: Api<ConfigMap> = Api::namespaced(client, "default");
    maps.create(&PostParams::default(), &config_map("existing", "0"))
        .await
        .expect("create");
    let mut events = spawn_watcher(maps.clone(), watcher::Config::default().streaming_lists());
    let init = next_matching(&mut events, "initial object", |i| {
        matches!(i, Ok(watcher::Event::InitApply(_)))
    })
    .await;
    assert!(matches!(init, Ok(watcher::Event::InitApply(ref m)) if m.name_any() == "existing"));
    skip_until(&mut events, "init done", is_init_done).await;
    maps.create(&PostParams::default(), &config_map("cfg", "1"))
        .await
        .expect("create");
    skip_until(
        &mut events,
        "apply",
        |i| matches!(i, Ok(watcher::Event::Apply(m)) if m.name_any() == "cfg"),
    )
    .await;
    let lists = fake
        .request_log()
        .iter()
        .filter(|r| r.method == "GET" && !r.is_watch())
        .count();
    assert_eq!(lists, 0, "a streaming-list watcher never lists");
}

#[tokio::test]
async fn forced_relist_after_compaction_converges() {
    let (fake, client) = fake().await;
    let maps: Api<ConfigMap> = Api::namespaced(client, "default");
    maps.create(&PostParams::default(), &config_map("a", "1"))
        .await
        .expect("create");
    let mut events = spawn_watcher(maps.clone(), watcher::Config::default());
    skip_until(&mut events, "init done", is_init_done).await;

    fake.force_relist();
    // Written while the watcher is disconnected (no await in between, so it cannot reconnect
    // first): only the relist can deliver it.
    fake.insert(&config_map("b", "1")).expect("insert");

    let gone = next_matching(&mut events, "410 error", |i| i.is_err()).await;
    match gone {
        Err(watcher::Error::WatchError(status)) => assert_eq!(status.code, 410),
        other => panic!("expected a 410 watch error, got {other:?}"),
    }
    skip_until(&mut events, "relist", |i| matches!(i, Ok(watcher::Event::Init))).await;
    let mut relisted = Vec::new();
    loop {
        match next_matching(&mut events, "relisted objects", |_| true).await {
            Ok(watcher::Event::InitApply(m)) => relisted.push(m.name_any()),
            Ok(watcher::Event::InitDone) => break,
            other => panic!("unexpected item during relist: {other:?}"),
        }
    }
    assert_eq!(relisted, vec!["a", "b"]);
    let lists = fake
        .request_log()
        .iter()
        .filter(|r| r.method == "GET" && !r.is_watch())
        .count();
    assert_eq!(lists, 2, "one initial list and one relist");
}

/// Waits until the reflector's store holds exactly these name/value pairs.
async fn converge(reader: &Store<ConfigMap>, what: &str, expected: &[(&str, &str)]) {
    within(what, async {
        loop {
            let mut state: Vec<(String, String)> = reader
                .state()
                .iter()
                .map(|m| (m.name_any(), value_of(m).unwrap_or_default()))
                .collect();
            state.sort();
            let wanted: Vec<(String, String)> = expected
                .iter()
                .map(|(n, v)| ((*n).to_string(), (*v).to_string()))
                .collect();
            if state == wanted {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn reflector_store_converges_through_changes_and_relists() {
    let (fake, client) = fake().await;
    let maps: Api<ConfigMap> = Api::namespaced(client, "default");
    maps.create(&PostParams::default(), &config_map("a", "1"))
        .await
        .expect("create");
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(maps.clone(), watcher::Config::default()))
        .default_backoff()
        .applied_objects();
    tokio::spawn(stream.for_each(|_| async {}));
    within("store ready", reader.wait_until_ready())
        .await
        .expect("writer alive");
    converge(&reader, "initial state", &[("a", "1")]).await;

    maps.create(&PostParams::default(), &config_map("b", "1"))
        .await
        .expect("create");
    let patch = json!({"data": {"key": "2"}});
    maps.patch("a", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch");
    converge(&reader, "after changes", &[("a", "2"), ("b", "1")]).await;

    fake.force_relist();
    maps.delete("a", &DeleteParams::default()).await.expect("delete");
    maps.create(&PostParams::default(), &config_map("c", "3"))
        .await
        .expect("create");
    converge(&reader, "after relist", &[("b", "1"), ("c", "3")]).await;
}
