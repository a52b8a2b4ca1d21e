//! One memory budget per process, shared by every front end: the bytes of requests being received, of
//! calls admitted and not yet answered, and of answers waiting for a client that reads slowly.
//!
//! ```text
//!                         MemoryBudget (limit; lock-free counters, /metrics)
//!   receiving (<= half) ----+---- queued (runtime admission) ----+---- unsent (outboxes)
//!                           |                                    |
//!   ClientBudget (one per connection): its own bytes of the three, against its share
//!
//!   tls: each TLS connection's rustls buffers, at their bound, from accept to close
//! ```
//!
//! Charges are RAII guards ([`Charge`], [`Account`]): dropping one gives its bytes back, however the
//! request ended. Front ends decide what to do when a charge is refused: the binary front end answers
//! `BUSY` without buffering the frame, the runtime answers `BUSY` at admission, the Open Inference
//! Protocol answers 503. Memory that already exists because an admitted call produced it (an answer)
//! is charged unconditionally, so that no admitted answer is ever dropped; the budget may then go over
//! its limit by those answers, and new requests are refused until it is back under.
//!
//! Fairness: a client (one connection) may hold at most its share of the budget ([`MemoryBudget::client_share`],
//! an eighth by default). A client that has used its share waits ([`ClientBudget::room_for`]; the front
//! end stops reading, so TCP slows the client down) instead of taking more; a client is refused only
//! because of what the others hold. Frames still being received may hold at most half of the budget,
//! so that calls already received and their answers always find room beside them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::Notify;

/// What a charge pays for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Category {
    /// Requests being received: binary frames whose header has arrived and whose payload the
    /// connection is buffering, HTTP request bodies being read.
    Receiving,
    /// Input bytes of calls the runtime admitted and has not answered.
    Queued,
    /// Answers computed and not yet taken by their client (held in a connection's outbox, an HTTP
    /// response body, or an HTTP/2 connection's send buffer).
    Unsent,
    /// The buffers of TLS connections (rustls' buffered plaintext and records), charged at their
    /// bound for as long as each connection lives.
    Tls,
}

impl Category {
    /// Every category, in the order of their counters.
    pub const ALL: [Category; 4] = [Category::Receiving, Category::Queued, Category::Unsent, Category::Tls];

    /// The metrics' `category` label.
    pub fn label(self) -> &'static str {
        match self {
            Category::Receiving => "receiving",
            Category::Queued => "queued",
            Category::Unsent => "unsent",
            Category::Tls => "tls",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Why a charge was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The process's budget has no room for the bytes (retry later).
    #[error(
        "the server's memory budget is full ({used} of {limit} bytes in use, {requested} more asked for); retry later"
    )]
    BudgetFull {
        /// Bytes asked for.
        requested: usize,
        /// Bytes in use when asked.
        used: usize,
        /// The budget.
        limit: usize,
    },
    /// Requests being received already hold their part of the budget (half of it; retry later).
    #[error(
        "requests being received hold {used} of the {limit} bytes the server lets them hold ({requested} more asked for); retry later"
    )]
    ReceivingFull {
        /// Bytes asked for.
        requested: usize,
        /// Bytes of requests being received when asked.
        used: usize,
        /// What requests being received may hold.
        limit: usize,
    },
    /// The client (connection) already holds its share of the budget (retry once it has read its
    /// answers).
    #[error(
        "this connection holds {used} of the {share} bytes of the server's memory budget one connection may hold ({requested} more asked for); read the answers or retry later"
    )]
    ShareFull {
        /// Bytes asked for.
        requested: usize,
        /// Bytes the client held when asked.
        used: usize,
        /// One client's share.
        share: usize,
    },
    /// The bytes are more than one client may ever hold: retrying cannot help.
    #[error("{requested} bytes exceed what one connection may hold of the server's memory budget ({share} bytes)")]
    LargerThanShare {
        /// Bytes asked for.
        requested: usize,
        /// One client's share.
        share: usize,
    },
}

impl Refusal {
    /// The metrics' `reason` label.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::BudgetFull { .. } => "budget_full",
            Refusal::ReceivingFull { .. } => "receiving_full",
            Refusal::LargerThanShare { .. } => "larger_than_share",
            Refusal::ShareFull { .. } => "share_full",
        }
    }

    /// Whether the same request may succeed later (all but [`Refusal::LargerThanShare`]).
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Refusal::LargerThanShare { .. })
    }
}

const REASONS: [&str; 4] = ["budget_full", "receiving_full", "larger_than_share", "share_full"];

/// Labels of a category.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CategoryLabels {
    category: String,
}

/// Labels of a refusal.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    category: String,
    reason: String,
}

/// The counters; the gauges' own atomics are the budget's counters, so `/metrics` reads exactly what
/// admission checks.
struct Shared {
    limit: usize,
    receiving_limit: usize,
    client_share: usize,
    limit_gauge: Gauge,
    share_gauge: Gauge,
    used: Gauge,
    peak: Gauge,
    by_category: [Gauge; 4],
    categories: Family<CategoryLabels, Gauge>,
    refusals: Family<RefusalLabels, Counter>,
    /// `refusal_counters[category][reason]`, looked up once for the pairs that occur (frames being
    /// received can meet every reason, admission and `Queued` holds no `receiving_full`, answers are
    /// charged unconditionally or against the client's share, TLS connections against the budget
    /// only), so that `/metrics` lists no series that cannot move.
    refusal_counters: [[Option<Counter>; 4]; 4],
    waits: Counter,
}

fn refusal_labels(category: Category, reason: &str) -> RefusalLabels {
    RefusalLabels {
        category: category.label().to_owned(),
        reason: reason.to_owned(),
    }
}

fn bytes_i64(bytes: usize) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

fn load(gauge: &Gauge) -> usize {
    usize::try_from(gauge.get()).unwrap_or(0)
}

impl Shared {
    fn count_refusal(&self, category: Category, refusal: &Refusal) {
        let reason = REASONS.iter().position(|r| *r == refusal.label()).unwrap_or(0);
        match &self.refusal_counters[category.index()][reason] {
            Some(counter) => counter.inc(),
            None => self
                .refusals
                .get_or_create(&refusal_labels(category, refusal.label()))
                .inc(),
        };
    }

    /// Adds `bytes` to `gauge` if the result stays within `limit`.
    fn add_within(gauge: &Gauge, bytes: i64, limit: usize) -> Result<i64, i64> {
        let limit = bytes_i64(limit);
        gauge
            .inner()
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= limit)
            })
            .map(|previous| previous + bytes)
    }

    fn try_reserve(&self, category: Category, bytes: usize) -> Result<(), Refusal> {
        let amount = bytes_i64(bytes);
        let category_gauge = &self.by_category[category.index()];
        if category == Category::Receiving
            && let Err(used) = Shared::add_within(category_gauge, amount, self.receiving_limit)
        {
            let refusal = Refusal::ReceivingFull {
                requested: bytes,
                used: usize::try_from(used).unwrap_or(0),
                limit: self.receiving_limit,
            };
            self.count_refusal(category, &refusal);
            return Err(refusal);
        }
        match Shared::add_within(&self.used, amount, self.limit) {
            Ok(total) => {
                if category != Category::Receiving {
                    category_gauge.inc_by(amount);
                }
                self.note_peak(total);
                Ok(())
            }
            Err(used) => {
                if category == Category::Receiving {
                    category_gauge.dec_by(amount);
                }
                let refusal = Refusal::BudgetFull {
                    requested: bytes,
                    used: usize::try_from(used).unwrap_or(0),
                    limit: self.limit,
                };
                self.count_refusal(category, &refusal);
                Err(refusal)
            }
        }
    }

    fn reserve(&self, category: Category, bytes: usize) {
        let amount = bytes_i64(bytes);
        self.by_category[category.index()].inc_by(amount);
        let total = self.used.inc_by(amount) + amount;
        self.note_peak(total);
    }

    fn release(&self, category: Category, bytes: usize) {
        let amount = bytes_i64(bytes);
        self.by_category[category.index()].dec_by(amount);
        self.used.dec_by(amount);
    }

    fn note_peak(&self, total: i64) {
        let peak: &AtomicI64 = self.peak.inner();
        peak.fetch_max(total, Ordering::AcqRel);
    }
}

/// The memory budget of one process. Cheap to clone; every clone is the same budget.
#[derive(Clone)]
pub struct MemoryBudget {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MemoryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBudget")
            .field("limit", &self.limit())
            .field("used", &self.used())
            .finish()
    }
}

impl MemoryBudget {
    /// Fraction of the budget one client may hold: `limit / CLIENT_SHARE_DIVISOR`.
    pub const CLIENT_SHARE_DIVISOR: usize = 8;

    /// A budget of `limit` bytes; one client may hold an eighth of it, requests being received half.
    pub fn new(limit: usize) -> MemoryBudget {
        MemoryBudget::with_client_share(limit, limit / MemoryBudget::CLIENT_SHARE_DIVISOR)
    }

    /// A budget of `limit` bytes of which one client may hold `client_share` (at most `limit`).
    pub fn with_client_share(limit: usize, client_share: usize) -> MemoryBudget {
        let client_share = client_share.min(limit).max(1);
        let categories: Family<CategoryLabels, Gauge> = Family::default();
        let by_category = Category::ALL.map(|category| {
            categories
                .get_or_create(&CategoryLabels {
                    category: category.label().to_owned(),
                })
                .clone()
        });
        let refusals: Family<RefusalLabels, Counter> = Family::default();
        let refusal_counters = Category::ALL.map(|category| {
            REASONS.map(|reason| {
                let occurs = match category {
                    Category::Receiving => true,
                    Category::Queued => reason != "receiving_full",
                    Category::Unsent => reason == "share_full" || reason == "budget_full",
                    Category::Tls => reason == "budget_full",
                };
                occurs.then(|| refusals.get_or_create(&refusal_labels(category, reason)).clone())
            })
        });
        let shared = Shared {
            limit,
            receiving_limit: limit / 2,
            client_share,
            limit_gauge: Gauge::default(),
            share_gauge: Gauge::default(),
            used: Gauge::default(),
            peak: Gauge::default(),
            by_category,
            categories,
            refusals,
            refusal_counters,
            waits: Counter::default(),
        };
        shared.limit_gauge.set(bytes_i64(limit));
        shared.share_gauge.set(bytes_i64(client_share));
        MemoryBudget {
            shared: Arc::new(shared),
        }
    }

    /// The budget, in bytes.
    pub fn limit(&self) -> usize {
        self.shared.limit
    }

    /// What one client (connection) may hold.
    pub fn client_share(&self) -> usize {
        self.shared.client_share
    }

    /// What requests being received may hold together (half the budget).
    pub fn receiving_limit(&self) -> usize {
        self.shared.receiving_limit
    }

    /// Bytes charged now, every category together.
    pub fn used(&self) -> usize {
        load(&self.shared.used)
    }

    /// Bytes charged now to `category`.
    pub fn used_by(&self, category: Category) -> usize {
        load(&self.shared.by_category[category.index()])
    }

    /// The most bytes charged at any one time since the budget was made.
    pub fn peak(&self) -> usize {
        load(&self.shared.peak)
    }

    /// Charges refused for `category` because of `reason` (a [`Refusal::label`]).
    pub fn refusals(&self, category: Category, reason: &str) -> u64 {
        match REASONS.iter().position(|r| *r == reason) {
            Some(index) => match &self.shared.refusal_counters[category.index()][index] {
                Some(counter) => counter.get(),
                None => self
                    .shared
                    .refusals
                    .get_or_create(&refusal_labels(category, reason))
                    .get(),
            },
            None => 0,
        }
    }

    /// Times a client had to wait for its share to have room (each a pause in reading from it).
    pub fn waits(&self) -> u64 {
        self.shared.waits.get()
    }

    /// Charges `bytes` to `category` if the budget has room (for [`Category::Receiving`], if requests
    /// being received also stay within half the budget); refusals are counted.
    pub fn try_charge(&self, category: Category, bytes: usize) -> Result<Charge, Refusal> {
        self.shared.try_reserve(category, bytes)?;
        Ok(Charge {
            shared: Some(self.shared.clone()),
            client: None,
            category,
            bytes,
        })
    }

    /// Charges `bytes` to `category` whether or not the budget has room: for memory that exists
    /// already and must not be dropped (the answer of an admitted call).
    pub fn charge(&self, category: Category, bytes: usize) -> Charge {
        self.shared.reserve(category, bytes);
        Charge {
            shared: Some(self.shared.clone()),
            client: None,
            category,
            bytes,
        }
    }

    /// A new client's account (one per connection), with nothing charged.
    pub fn client(&self) -> ClientBudget {
        ClientBudget {
            budget: self.clone(),
            state: Arc::new(ClientState {
                used: AtomicUsize::new(0),
                waiting: AtomicBool::new(false),
                released: Notify::new(),
            }),
        }
    }

    /// Registers the budget's metrics under the `vknf` prefix: `memory_budget_bytes`,
    /// `memory_client_share_bytes`, `memory_used_bytes`, `memory_peak_bytes`,
    /// `memory_category_bytes{category}`, `memory_refusals_total{category,reason}` and
    /// `memory_waits_total`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("vknf");
        let s = &self.shared;
        r.register(
            "memory_budget_bytes",
            "The process's memory budget",
            s.limit_gauge.clone(),
        );
        r.register(
            "memory_client_share_bytes",
            "What one connection may hold of the memory budget",
            s.share_gauge.clone(),
        );
        r.register(
            "memory_used_bytes",
            "Bytes charged to the memory budget now",
            s.used.clone(),
        );
        r.register(
            "memory_peak_bytes",
            "Most bytes charged to the memory budget at one time",
            s.peak.clone(),
        );
        r.register(
            "memory_category_bytes",
            "Bytes charged to the memory budget, by category (receiving, queued, unsent, tls)",
            s.categories.clone(),
        );
        r.register(
            "memory_refusals",
            "Charges the memory budget refused, by category and reason",
            s.refusals.clone(),
        );
        r.register(
            "memory_waits",
            "Times a connection stopped reading until its share of the memory budget had room",
            s.waits.clone(),
        );
    }
}

struct ClientState {
    used: AtomicUsize,
    /// Set while the client's reader waits for room, so that releases wake it (and only then).
    waiting: AtomicBool,
    released: Notify,
}

impl ClientState {
    fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) {
            self.released.notify_waiters();
        }
    }
}

/// One client's (connection's) account in a [`MemoryBudget`]: what it holds of every category, against
/// its share. Cheap to clone; every clone is the same account.
#[derive(Clone)]
pub struct ClientBudget {
    budget: MemoryBudget,
    state: Arc<ClientState>,
}

impl ClientBudget {
    /// The process's budget.
    pub fn budget(&self) -> &MemoryBudget {
        &self.budget
    }

    /// What this client may hold.
    pub fn share(&self) -> usize {
        self.budget.client_share()
    }

    /// What this client holds now.
    pub fn used(&self) -> usize {
        self.state.used.load(Ordering::SeqCst)
    }

    fn has_room(&self, bytes: usize) -> bool {
        self.used().saturating_add(bytes) <= self.share()
    }

    /// Charges `bytes` to `category`, to this client and to the process's budget, if the client's
    /// share and the budget both have room: for front ends that cannot stop reading from one client
    /// (an HTTP/2 connection multiplexes many requests) and refuse its requests instead.
    pub fn try_charge_in_share(&self, category: Category, bytes: usize) -> Result<Charge, Refusal> {
        self.check_share(category, bytes)?;
        let used = self.used();
        if used.saturating_add(bytes) > self.share() {
            let refusal = Refusal::ShareFull {
                requested: bytes,
                used,
                share: self.share(),
            };
            self.budget.shared.count_refusal(category, &refusal);
            return Err(refusal);
        }
        self.try_charge(category, bytes)
    }

    /// Refuses (and counts) `bytes` that this client could never hold, even with nothing else charged.
    pub fn check_share(&self, category: Category, bytes: usize) -> Result<(), Refusal> {
        if bytes <= self.share() {
            return Ok(());
        }
        let refusal = Refusal::LargerThanShare {
            requested: bytes,
            share: self.share(),
        };
        self.budget.shared.count_refusal(category, &refusal);
        Err(refusal)
    }

    /// Waits until this client holds little enough that `bytes` more fit in its share (at once if they
    /// do). What the client holds shrinks as its calls are answered and it reads its answers; a front
    /// end that stops reading from the client meanwhile slows it down through TCP. `bytes` must pass
    /// [`ClientBudget::check_share`], or this waits until every charge of the client is gone.
    pub async fn room_for(&self, bytes: usize) {
        if self.has_room(bytes) {
            return;
        }
        self.budget.shared.waits.inc();
        loop {
            let released = self.state.released.notified();
            let mut released = std::pin::pin!(released);
            released.as_mut().enable();
            self.state.waiting.store(true, Ordering::SeqCst);
            if self.has_room(bytes) || self.used() == 0 {
                break;
            }
            released.await;
        }
        self.state.waiting.store(false, Ordering::SeqCst);
    }

    fn take(&self, bytes: usize) {
        self.state.used.fetch_add(bytes, Ordering::SeqCst);
    }

    /// Charges `bytes` to `category`, to this client and to the process's budget if it has room. The
    /// client's share is not checked here: wait for it with [`ClientBudget::room_for`] first.
    pub fn try_charge(&self, category: Category, bytes: usize) -> Result<Charge, Refusal> {
        let mut charge = self.budget.try_charge(category, bytes)?;
        self.take(bytes);
        charge.client = Some(self.state.clone());
        Ok(charge)
    }

    /// Counts `bytes` against this client's share only (for bytes the process's budget counts
    /// elsewhere, such as a request's input, which the runtime charges when it admits the call).
    pub fn hold(&self, bytes: usize) -> Charge {
        self.take(bytes);
        Charge {
            shared: None,
            client: Some(self.state.clone()),
            category: Category::Queued,
            bytes,
        }
    }

    /// A running account of `category` for this client, charged unconditionally as bytes come and
    /// given back as they go (a connection's unsent answers).
    pub fn account(&self, category: Category) -> Account {
        Account {
            shared: self.budget.shared.clone(),
            client: self.state.clone(),
            category,
            bytes: AtomicUsize::new(0),
        }
    }
}

/// Bytes charged to a budget (and maybe to one client), given back when dropped.
#[must_use = "a charge gives its bytes back when dropped"]
pub struct Charge {
    shared: Option<Arc<Shared>>,
    client: Option<Arc<ClientState>>,
    category: Category,
    bytes: usize,
}

impl std::fmt::Debug for Charge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Charge")
            .field("category", &self.category)
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl Charge {
    /// A charge of nothing.
    pub fn none() -> Charge {
        Charge {
            shared: None,
            client: None,
            category: Category::Queued,
            bytes: 0,
        }
    }

    /// The bytes charged.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Gives the process's part back and keeps the client's: for a received request handed to the
    /// runtime, whose admission charges the process for its bytes from then on.
    pub fn into_client_hold(mut self) -> Charge {
        if let Some(shared) = self.shared.take() {
            shared.release(self.category, self.bytes);
        }
        self.category = Category::Queued;
        self
    }

    /// Adds `other`'s bytes to these (charges of the same budget, category and client).
    pub fn absorb(&mut self, mut other: Charge) {
        if self.bytes == 0 && self.shared.is_none() && self.client.is_none() {
            std::mem::swap(self, &mut other);
            return;
        }
        debug_assert_eq!(self.category, other.category);
        debug_assert_eq!(self.shared.is_some(), other.shared.is_some());
        debug_assert_eq!(self.client.is_some(), other.client.is_some());
        self.bytes += other.bytes;
        other.bytes = 0;
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if self.bytes == 0 {
            return;
        }
        if let Some(shared) = &self.shared {
            shared.release(self.category, self.bytes);
        }
        if let Some(client) = &self.client {
            client.release(self.bytes);
        }
    }
}

/// A client's running charge of one category: bytes added as they come (unconditionally: they exist
/// already) and taken off as they go; what is left is given back when the account is dropped.
pub struct Account {
    shared: Arc<Shared>,
    client: Arc<ClientState>,
    category: Category,
    bytes: AtomicUsize,
}

impl Account {
    /// Charges `bytes` more.
    pub fn add(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        self.shared.reserve(self.category, bytes);
        self.client.used.fetch_add(bytes, Ordering::SeqCst);
        self.bytes.fetch_add(bytes, Ordering::AcqRel);
    }

    /// Gives `bytes` back (at most what is charged).
    pub fn sub(&self, bytes: usize) {
        let Ok(before) = self.bytes.fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
            Some(held.saturating_sub(bytes))
        }) else {
            return;
        };
        let released = before.min(bytes);
        if released > 0 {
            self.shared.release(self.category, released);
            self.client.release(released);
        }
    }

    /// Bytes charged now.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }
}

impl Drop for Account {
    fn drop(&mut self) {
        let left = *self.bytes.get_mut();
        if left > 0 {
            self.shared.release(self.category, left);
            self.client.release(left);
        }
    }
}
