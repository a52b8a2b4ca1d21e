//! Watch responses: a chunked body of newline-delimited `WatchEvent` JSON objects.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::resources::ResourceType;
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::store::{InitialEvent, Store, Subscription, WatchSignal, filter_change};

/// A response body fed chunk by chunk from a channel; ends when the sender is dropped.
pub(crate) struct ChannelBody {
    receiver: mpsc::Receiver<Bytes>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.receiver
            .poll_recv(cx)
            .map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes))))
    }
}

/// How one watch request wants its events.
pub(crate) struct WatchOptions {
    pub(crate) resource: ResourceType,
    pub(crate) labels: LabelSelector,
    pub(crate) fields: FieldSelector,
    pub(crate) bookmarks: bool,
    pub(crate) timeout: Duration,
    pub(crate) bookmark_interval: Option<Duration>,
    pub(crate) partial_metadata: bool,
}

/// Reduces an object to `PartialObjectMetadata`, for clients that asked for metadata only.
pub(crate) fn partial_metadata(object: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": object.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

struct EventWriter {
    options: WatchOptions,
    output: mpsc::Sender<Bytes>,
    /// Highest revision written, so bookmarks never move a client backwards.
    last_revision: u64,
}

impl EventWriter {
    /// Writes one event line; false once the client has gone away.
    async fn send(&mut self, event_type: &str, object: Value) -> bool {
        let object = if self.options.partial_metadata && event_type != "ERROR" {
            partial_metadata(&object)
        } else {
            object
        };
        if let Some(revision) = crate::object::revision_of(&object) {
            self.last_revision = self.last_revision.max(revision);
        }
        let mut line = json!({ "type": event_type, "object": object }).to_string();
        line.push('\n');
        self.output.send(Bytes::from(line)).await.is_ok()
    }

    async fn bookmark(&mut self, revision: u64, initial_events_end: bool) -> bool {
        let revision = revision.max(self.last_revision);
        let (kind, api_version) = if self.options.partial_metadata {
            ("PartialObjectMetadata".to_string(), "meta.k8s.io/v1".to_string())
        } else {
            (self.options.resource.kind.clone(), self.options.resource.api_version())
        };
        let mut metadata = json!({ "resourceVersion": revision.to_string() });
        if initial_events_end {
            metadata["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
        }
        let object = json!({ "kind": kind, "apiVersion": api_version, "metadata": metadata });
        let mut line = json!({ "type": "BOOKMARK", "object": object }).to_string();
        line.push('\n');
        self.output.send(Bytes::from(line)).await.is_ok()
    }

    async fn error(&mut self, error: &ApiError) {
        // The stream ends right after an error, so whether the client got it changes nothing.
        let _ = self.send("ERROR", error.to_status()).await;
    }

    /// Writes a signal; false when the stream must end.
    async fn signal(&mut self, signal: WatchSignal) -> bool {
        match signal {
            WatchSignal::Change(change) => match filter_change(&change, &self.options.labels, &self.options.fields) {
                Some((event_type, object)) => self.send(event_type, object).await,
                None => true,
            },
            WatchSignal::Bookmark(revision) => !self.options.bookmarks || self.bookmark(revision, false).await,
            WatchSignal::End => false,
        }
    }

    /// A bookmark at the current revision, after delivering every change up to it.
    async fn bookmark_now(&mut self, store: &Store, signals: &mut mpsc::UnboundedReceiver<WatchSignal>) -> bool {
        // Changes are queued under the store lock before the revision moves, so once the
        // revision is read every change up to it is already waiting in `signals`.
        let revision = store.revision();
        while let Ok(signal) = signals.try_recv() {
            if !self.signal(signal).await {
                return false;
            }
        }
        self.bookmark(revision, false).await
    }
}

/// Starts streaming a registered watch; the returned body carries its events.
pub(crate) fn start(store: Arc<Store>, subscription: Subscription, options: WatchOptions) -> ChannelBody {
    let (output, receiver) = mpsc::channel(64);
    tokio::spawn(run(store, subscription, options, output));
    ChannelBody { receiver }
}

async fn run(store: Arc<Store>, subscription: Subscription, options: WatchOptions, output: mpsc::Sender<Bytes>) {
    let Subscription {
        initial,
        mut signals,
        error,
    } = subscription;
    let timeout = options.timeout;
    let periodic = options.bookmark_interval.filter(|_| options.bookmarks);
    let mut writer = EventWriter {
        options,
        output,
        last_revision: 0,
    };
    if let Some(error) = error {
        writer.error(&error).await;
        return;
    }
    for event in initial {
        let delivered = match event {
            InitialEvent::Added(object) => writer.send("ADDED", object).await,
            InitialEvent::Replayed(change) => writer.signal(WatchSignal::Change(change)).await,
            InitialEvent::InitialEventsEnd(revision) => writer.bookmark(revision, true).await,
        };
        if !delivered {
            return;
        }
    }
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut ticker = periodic.map(|period| {
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker
    });
    loop {
        tokio::select! {
            () = &mut deadline => {
                // Like the apiserver, tell a bookmark-aware client where it stands before closing.
                if writer.options.bookmarks {
                    writer.bookmark_now(&store, &mut signals).await;
                }
                return;
            }
            signal = signals.recv() => {
                let keep_going = match signal {
                    Some(signal) => writer.signal(signal).await,
                    None => false,
                };
                if !keep_going {
                    return;
                }
            }
            _ = async {
                match ticker.as_mut() {
                    Some(ticker) => ticker.tick().await,
                    None => std::future::pending().await,
                }
            } => {
                if !writer.bookmark_now(&store, &mut signals).await {
                    return;
                }
            }
            () = writer.output.closed() => return,
        }
    }
}
