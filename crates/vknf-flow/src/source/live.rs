//! Live capture on an interface (libpcap through the `pcap` crate), and the sharded pipeline
//! that spreads flows over threads by flow hash.
//!
//! With several shards, the capture thread decodes each frame only far enough to find its flow
//! key, and copies the frame into the batch of the shard that owns that key (with one, it only
//! copies); each shard owns a [`FlowTable`], so no
//! lock is taken per packet and both directions of a flow meet in the same shard. Batches (up to
//! 256 frames in one buffer) go to their shard when full or when the kernel ring is empty, and
//! come back emptied to be refilled, so the steady state allocates nothing per packet. Flow time is the capture's
//! timestamps, and while no packet comes the capture thread sends the wall clock as a tick, so
//! that idle flows still end.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{PacketRef, PacketSource, SourceError};
use crate::decode::{DropReason, LinkType, decode};
use crate::flow::{Endpoint, FlowConfig, FlowEvent, FlowKey, FlowTable};
use crate::stats::Stats;

/// Live capture settings.
#[derive(Clone, Debug)]
pub struct LiveOptions {
    /// Bytes kept per frame. TLS framing needs only headers and the hellos, but a cut header
    /// stops a direction, so the default keeps whole frames.
    pub snaplen: i32,
    /// Promiscuous mode.
    pub promisc: bool,
    /// A BPF filter (`tcp port 443`), if any.
    pub filter: Option<String>,
    /// libpcap's read timeout (how long the kernel may hold packets to batch them); reads are
    /// nonblocking, and an empty read sleeps at most 2 ms before the stop flag is checked again.
    pub read_timeout: Duration,
    /// The kernel ring's size in bytes (libpcap's buffer size); `None` keeps libpcap's default
    /// (2 MiB). The default here is 64 MiB: with libpcap's 2 MiB, replayed TLS traffic lost 5-10%
    /// of its packets (all counted by the kernel) from about 180,000 packets/s on the 2-core
    /// development machine, and none up to 690,000 with 64 MiB (`bench/RESULTS.md`).
    pub buffer_bytes: Option<usize>,
}

impl Default for LiveOptions {
    fn default() -> Self {
        Self {
            snaplen: 65535,
            promisc: false,
            filter: None,
            read_timeout: Duration::from_millis(100),
            buffer_bytes: Some(64 << 20),
        }
    }
}

/// What one read of a live capture gave.
pub enum LiveItem<'a> {
    /// A frame.
    Packet(PacketRef<'a>),
    /// The read timed out: no frame, but time went on.
    Timeout,
}

/// A capture on one interface.
pub struct LiveCapture {
    interface: String,
    capture: pcap::Capture<pcap::Active>,
    link: Option<LinkType>,
    stop: Arc<AtomicBool>,
    frame: Vec<u8>,
    /// How long a read with nothing to read sleeps before it reports a timeout.
    idle_sleep: Duration,
}

impl LiveCapture {
    /// Opens `interface`; reading ends once `stop` is set.
    pub fn open(interface: &str, options: &LiveOptions, stop: Arc<AtomicBool>) -> Result<Self, SourceError> {
        let error = |e: pcap::Error| SourceError::Capture {
            interface: interface.to_string(),
            detail: e.to_string(),
        };
        let timeout_ms = i32::try_from(options.read_timeout.as_millis())
            .unwrap_or(i32::MAX)
            .max(1);
        let mut inactive = pcap::Capture::from_device(interface).map_err(error)?;
        if let Some(bytes) = options.buffer_bytes {
            inactive = inactive.buffer_size(i32::try_from(bytes).unwrap_or(i32::MAX));
        }
        let mut capture = inactive
            .snaplen(options.snaplen)
            .promisc(options.promisc)
            .timeout(timeout_ms)
            .open()
            .map_err(error)?
            // Nonblocking: on Linux (TPACKET_V3) a blocking read with no traffic can wait past its
            // timeout for the next packet, and a stop request would wait with it.
            .setnonblock()
            .map_err(error)?;
        if let Some(filter) = &options.filter {
            capture.filter(filter, true).map_err(error)?;
        }
        let link = LinkType::from_linktype(capture.get_datalink().0);
        let idle_sleep = options.read_timeout.min(Duration::from_millis(2));
        Ok(Self {
            interface: interface.to_string(),
            capture,
            link,
            stop,
            frame: Vec::new(),
            idle_sleep,
        })
    }

    /// The interface's link type, `None` when this crate does not decode it.
    pub fn link(&self) -> Option<LinkType> {
        self.link
    }

    /// Frames the kernel dropped and libpcap received, as libpcap counts them.
    pub fn kernel_stats(&mut self) -> Option<(u32, u32)> {
        self.capture.stats().ok().map(|s| (s.dropped, s.received))
    }

    /// The next frame or a timeout; `Ok(None)` once stopped.
    pub fn next_item(&mut self) -> Result<Option<LiveItem<'_>>, SourceError> {
        read_item(
            &mut self.capture,
            &self.stop,
            self.link,
            &self.interface,
            self.idle_sleep,
        )
    }
}

/// One read; a free function so that its borrow is of the capture alone, not of the whole
/// [`LiveCapture`] (whose frame buffer the caller may fill from it).
fn read_item<'a>(
    capture: &'a mut pcap::Capture<pcap::Active>,
    stop: &AtomicBool,
    link: Option<LinkType>,
    interface: &str,
    idle_sleep: Duration,
) -> Result<Option<LiveItem<'a>>, SourceError> {
    if stop.load(Ordering::Relaxed) {
        return Ok(None);
    }
    match capture.next_packet() {
        Ok(packet) => {
            let ts = packet.header.ts;
            let ts_ns =
                u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_usec).unwrap_or(0) * 1_000;
            Ok(Some(LiveItem::Packet(PacketRef {
                ts_ns,
                link,
                data: packet.data,
                orig_len: packet.header.len,
            })))
        }
        Err(pcap::Error::TimeoutExpired) => {
            // Nothing buffered: wait a little rather than spin.
            std::thread::sleep(idle_sleep);
            Ok(Some(LiveItem::Timeout))
        }
        Err(pcap::Error::NoMorePackets) => Ok(None),
        Err(e) => Err(SourceError::Capture {
            interface: interface.to_string(),
            detail: e.to_string(),
        }),
    }
}

impl PacketSource for LiveCapture {
    /// The next frame, waiting through read timeouts; copied out of libpcap's buffer (the
    /// sharded pipeline is the path for rates where that copy matters).
    fn next_packet(&mut self) -> Result<Option<PacketRef<'_>>, SourceError> {
        let (ts_ns, orig_len) = loop {
            match read_item(
                &mut self.capture,
                &self.stop,
                self.link,
                &self.interface,
                self.idle_sleep,
            )? {
                None => return Ok(None),
                Some(LiveItem::Timeout) => continue,
                Some(LiveItem::Packet(packet)) => {
                    let meta = (packet.ts_ns, packet.orig_len);
                    self.frame.clear();
                    self.frame.extend_from_slice(packet.data);
                    break meta;
                }
            }
        };
        Ok(Some(PacketRef {
            ts_ns,
            link: self.link,
            data: &self.frame,
            orig_len,
        }))
    }
}

/// Frames bound for one shard, in one buffer: (capture time, range of `bytes`) each.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    frames: Vec<(u64, std::ops::Range<usize>)>,
}

/// A batch goes to its shard at this many frames, or bytes, whichever comes first.
const BATCH_FRAMES: usize = 256;
const BATCH_BYTES: usize = 1 << 20;

enum ShardMessage {
    Frames(Batch),
    Tick(u64),
}

/// The capture thread's side of the shards: their channels, the batches being filled, and the
/// emptied batches coming back.
struct Dispatch {
    senders: Vec<SyncSender<ShardMessage>>,
    filling: Vec<Batch>,
    recycled: Receiver<Batch>,
}

impl Dispatch {
    /// Adds a frame to its shard's batch; false once the shards are gone.
    fn push(&mut self, shard: usize, ts_ns: u64, frame: &[u8]) -> bool {
        let batch = &mut self.filling[shard];
        let start = batch.bytes.len();
        batch.bytes.extend_from_slice(frame);
        batch.frames.push((ts_ns, start..batch.bytes.len()));
        if batch.frames.len() >= BATCH_FRAMES || batch.bytes.len() >= BATCH_BYTES {
            return self.flush(shard);
        }
        true
    }

    fn flush(&mut self, shard: usize) -> bool {
        if self.filling[shard].frames.is_empty() {
            return true;
        }
        let fresh = self.recycled.try_recv().unwrap_or_default();
        let full = std::mem::replace(&mut self.filling[shard], fresh);
        self.senders[shard].send(ShardMessage::Frames(full)).is_ok()
    }

    fn flush_all(&mut self) -> bool {
        (0..self.senders.len()).all(|shard| self.flush(shard))
    }
}

/// Flows of a live capture, built on `shards` threads.
pub struct ShardedCapture {
    events: Receiver<FlowEvent>,
    capture: Option<JoinHandle<Result<Stats, SourceError>>>,
    workers: Vec<JoinHandle<Stats>>,
}

impl ShardedCapture {
    /// Starts capturing: one capture thread and `shards` flow threads. Set the capture's stop
    /// flag to end; the open flows then end ([`crate::EndReason::EndOfInput`], or how they
    /// closed) and the event channel closes. Dropped without [`Self::join`], the threads still
    /// end once the flag is set.
    pub fn start(mut capture: LiveCapture, config: FlowConfig, shards: usize) -> Self {
        let shards = shards.max(1);
        // Bounded: a consumer that falls behind stalls the shards, then the capture thread, and
        // the kernel drops (and counts, `Stats::capture_dropped`) instead of memory growing.
        let (event_tx, events) = sync_channel(1 << 14);
        let mut senders: Vec<SyncSender<ShardMessage>> = Vec::with_capacity(shards);
        let (recycle_tx, recycled) = sync_channel::<Batch>(shards * 8);
        let mut workers = Vec::with_capacity(shards);
        for _ in 0..shards {
            // Each message is a batch of up to 256 frames: 64 batches queued per shard.
            let (tx, rx) = sync_channel::<ShardMessage>(64);
            senders.push(tx);
            let event_tx = event_tx.clone();
            let recycle = recycle_tx.clone();
            let config = config.clone();
            let link = capture.link();
            workers.push(std::thread::spawn(move || shard(rx, event_tx, recycle, config, link)));
        }
        drop(event_tx);
        drop(recycle_tx);
        let handle = std::thread::spawn(move || {
            let mut stats = Stats::default();
            let mut last_tick = 0u64;
            let mut dispatch = Dispatch {
                filling: (0..senders.len()).map(|_| Batch::default()).collect(),
                senders,
                recycled,
            };
            let shards = dispatch.senders.len() as u64;
            loop {
                let item = match capture.next_item() {
                    Ok(Some(item)) => item,
                    Ok(None) => break,
                    Err(error) => return Err(error),
                };
                // Time goes on by the packets' own timestamps; the clock is read only when idle.
                let now = match item {
                    LiveItem::Packet(packet) if shards == 1 => {
                        // One shard owns every flow: it decodes (and counts what it drops) itself.
                        stats.frames += 1;
                        if !dispatch.push(0, packet.ts_ns, packet.data) {
                            break;
                        }
                        packet.ts_ns
                    }
                    LiveItem::Packet(packet) => {
                        stats.frames += 1;
                        let decoded = match packet.link {
                            Some(link) => decode(link, packet.data),
                            None => Err(DropReason::UnsupportedLink),
                        };
                        match decoded {
                            Ok(segment) => {
                                let (src, dst) = Endpoint::ends_of(&segment);
                                let key = FlowKey::new(src, dst);
                                let index = (key.shard_hash() % shards) as usize;
                                if !dispatch.push(index, packet.ts_ns, packet.data) {
                                    break;
                                }
                            }
                            Err(reason) => stats.count_drop(reason),
                        }
                        packet.ts_ns
                    }
                    LiveItem::Timeout => {
                        // The ring is empty: what was batched goes now rather than wait for more.
                        if !dispatch.flush_all() {
                            break;
                        }
                        wall_ns()
                    }
                };
                if now.saturating_sub(last_tick) >= 1_000_000_000 {
                    last_tick = now;
                    // Frames before the tick that moves their tables' time on.
                    if !dispatch.flush_all() {
                        break;
                    }
                    for sender in &dispatch.senders {
                        let _ = sender.send(ShardMessage::Tick(now));
                    }
                }
            }
            dispatch.flush_all();
            if let Some((dropped, _)) = capture.kernel_stats() {
                stats.capture_dropped = u64::from(dropped);
            }
            Ok(stats)
        });
        Self {
            events,
            capture: Some(handle),
            workers,
        }
    }

    /// The flow events, from all shards; the iterator ends when the capture has stopped and
    /// every shard has ended its flows.
    pub fn events(&self) -> &Receiver<FlowEvent> {
        &self.events
    }

    /// Waits for the threads and returns the counters of all of them.
    pub fn join(mut self) -> Result<Stats, SourceError> {
        let mut total = match self.capture.take().map(JoinHandle::join) {
            Some(Ok(result)) => result?,
            _ => Stats::default(),
        };
        for worker in self.workers.drain(..) {
            if let Ok(stats) = worker.join() {
                // Frames were counted by the capture thread; segments, flows (and, with one
                // shard, undecodable frames) by the shards.
                total.add(&Stats { frames: 0, ..stats });
            }
        }
        Ok(total)
    }
}

fn shard(
    rx: Receiver<ShardMessage>,
    events: SyncSender<FlowEvent>,
    recycle: SyncSender<Batch>,
    config: FlowConfig,
    link: Option<LinkType>,
) -> Stats {
    let mut table = FlowTable::new(config);
    let mut out = Vec::new();
    for message in rx {
        match message {
            ShardMessage::Frames(mut batch) => {
                for (ts_ns, range) in batch.frames.drain(..) {
                    // Frames the capture thread could not decode never come here when it
                    // decodes; with one shard it does not, and the drops are counted here.
                    match link.map(|link| decode(link, &batch.bytes[range])) {
                        Some(Ok(segment)) => table.process(ts_ns, &segment, &mut out),
                        Some(Err(reason)) => table.stats_mut().count_drop(reason),
                        None => table.stats_mut().count_drop(DropReason::UnsupportedLink),
                    }
                    for event in out.drain(..) {
                        let _ = events.send(event);
                    }
                }
                batch.bytes.clear();
                // Back to the capture thread to be refilled; dropped when enough are waiting.
                let _ = recycle.try_send(batch);
            }
            ShardMessage::Tick(now) => table.advance(now, &mut out),
        }
        for event in out.drain(..) {
            let _ = events.send(event);
        }
    }
    table.finish(&mut out);
    for event in out.drain(..) {
        let _ = events.send(event);
    }
    table.stats().clone()
}

fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}
