//! The stable handle of a loaded function: callers keep it while the engine inside is swapped by hot
//! reloads and device recoveries.

use std::sync::Arc;

use parking_lot::RwLock;
use tokio::sync::watch;
use vknf_functions::FunctionInfo;

use crate::answer::Answer;
use crate::call::{Call, CallError, Reply};
use crate::call_slot::{CallSlot, PendingCall};
use crate::engine::Engine;

pub(crate) struct Slot {
    pub(crate) name: Arc<str>,
    current: RwLock<Option<Arc<Engine>>>,
    /// Set when the function is removed or the runtime stops: front ends stop taking calls for it.
    closing: watch::Sender<bool>,
    /// Why the function is quarantined (its slot then holds no engine), while it is.
    quarantine: RwLock<Option<String>>,
}

/// A loaded function, to call from any thread or task. Cheap to clone; every clone is the same function.
///
/// Every call goes through the same admission (queue bound, `BUSY`), dynamic batching, deadlines and
/// metrics, whichever front end or in-process caller makes it.
#[derive(Clone)]
pub struct FunctionHandle {
    pub(crate) slot: Arc<Slot>,
}

impl std::fmt::Debug for FunctionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionHandle").field("name", &self.slot.name).finish()
    }
}

fn shutting_down() -> CallError {
    CallError::ShuttingDown("the function is shutting down".into())
}

impl FunctionHandle {
    pub(crate) fn new(name: Arc<str>, engine: Arc<Engine>) -> FunctionHandle {
        FunctionHandle {
            slot: Arc::new(Slot {
                name,
                current: RwLock::new(Some(engine)),
                closing: watch::Sender::new(false),
                quarantine: RwLock::new(None),
            }),
        }
    }

    /// The function's name (`namespace/name` for functions from manifests).
    pub fn name(&self) -> &str {
        &self.slot.name
    }

    /// The name, shared.
    pub fn label(&self) -> Arc<str> {
        self.slot.name.clone()
    }

    /// The schema of the version now serving; `None` once the function is closing.
    pub fn info(&self) -> Option<FunctionInfo> {
        self.current().map(|engine| engine.info.clone())
    }

    /// Whether the function has stopped taking calls.
    pub fn is_closing(&self) -> bool {
        *self.slot.closing.borrow()
    }

    /// Changes to `true` when the function stops taking calls (removal or shutdown).
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.slot.closing.subscribe()
    }

    /// Calls admitted and not yet answered (the version now serving).
    pub fn queued_requests(&self) -> usize {
        self.current().map_or(0, |engine| engine.queued_requests())
    }

    /// Input bytes admitted and not yet answered (the version now serving).
    pub fn queued_bytes(&self) -> usize {
        self.current().map_or(0, |engine| engine.queued_bytes())
    }

    /// Submits a call whose answer goes to `reply`. Never blocks: the call is admitted or `reply` is
    /// failed at once (`BUSY`, shape errors, shutting down). A call that races a hot reload goes to the
    /// new version, checked against its schema.
    pub fn submit(&self, call: Call, reply: Box<dyn Reply>) {
        let Some(mut engine) = self.current() else {
            return reply.fail(self.unavailable());
        };
        let (mut call, mut reply) = (call, reply);
        loop {
            match engine.submit(call, reply) {
                Ok(()) => return,
                Err(returned) => {
                    // The engine closed between lookup and submit: it is being replaced or removed.
                    match self.current() {
                        Some(next) if !Arc::ptr_eq(&next, &engine) => {
                            (call, reply) = (returned.call, returned.reply);
                            engine = next;
                        }
                        _ => return returned.reply.fail(self.unavailable()),
                    }
                }
            }
        }
    }

    /// Calls the function and waits for the answer.
    pub async fn call(&self, call: Call) -> Result<Answer, CallError> {
        self.call_reusing(call, Answer::default()).await
    }

    /// Calls the function, writing the answer into the buffers of `answer` (a previous answer handed
    /// back), so that a caller in a loop allocates no output memory. A call still makes its reply;
    /// [`FunctionHandle::call_in`] with a [`CallSlot`] kept between calls allocates nothing.
    pub async fn call_reusing(&self, call: Call, answer: Answer) -> Result<Answer, CallError> {
        let mut slot = CallSlot::new();
        let reply = slot.begin(Some(answer));
        self.submit(call, reply);
        let (slot, result) = PendingCall::new(&mut slot).finish().await;
        result.map(|()| slot.take_answer())
    }

    /// Calls the function and waits for the answer, which is written into the buffers of `slot` (those
    /// of its previous answer) and lent from there until the slot's next call. Nothing is allocated
    /// per call once the slot's buffers have reached the answers' size. Dropping the future gives the
    /// call up: it is skipped if still queued, and its answer never reaches a later call of the slot.
    pub async fn call_in<'s>(&self, slot: &'s mut CallSlot, call: Call) -> Result<&'s Answer, CallError> {
        let reply = slot.begin(None);
        self.submit(call, reply);
        let (slot, result) = PendingCall::new(slot).finish().await;
        result?;
        Ok(slot.answer().expect("a completed call leaves its answer in the slot"))
    }

    /// [`FunctionHandle::call_in`] from a thread that is not an async task.
    pub fn call_blocking_in<'s>(&self, slot: &'s mut CallSlot, call: Call) -> Result<&'s Answer, CallError> {
        let reply = slot.begin(None);
        self.submit(call, reply);
        slot.wait_blocking()?;
        Ok(slot.answer().expect("a completed call leaves its answer in the slot"))
    }

    /// Calls the function from a thread that is not an async task, and waits for the answer.
    pub fn call_blocking(&self, call: Call) -> Result<Answer, CallError> {
        self.call_blocking_reusing(call, Answer::default())
    }

    /// [`FunctionHandle::call_blocking`] with the buffers of a previous answer. The thread keeps a
    /// [`CallSlot`] of its own for these calls, so a loop that hands each answer back allocates nothing
    /// per call.
    pub fn call_blocking_reusing(&self, call: Call, answer: Answer) -> Result<Answer, CallError> {
        thread_local! {
            static SLOT: std::cell::RefCell<Option<CallSlot>> = const { std::cell::RefCell::new(None) };
        }
        // Taken out for the call, so that a call made while this one waits (from a reply of the
        // caller's own, say) gets a fresh slot rather than a borrowed one.
        let mut slot = SLOT.with(|kept| kept.borrow_mut().take()).unwrap_or_default();
        let reply = slot.begin(Some(answer));
        self.submit(call, reply);
        let result = slot.wait_blocking().map(|()| slot.take_answer());
        SLOT.with(|kept| *kept.borrow_mut() = Some(slot));
        result
    }

    /// Why the function is quarantined, while it is.
    pub fn quarantined(&self) -> Option<String> {
        self.slot.quarantine.read().clone()
    }

    /// The error for a call that finds no engine: quarantined or shutting down.
    fn unavailable(&self) -> CallError {
        match self.quarantined() {
            Some(why) => CallError::Quarantined(why),
            None => shutting_down(),
        }
    }

    /// Quarantines the function: takes its engine out (returned, for the caller to stop) and answers
    /// calls `QUARANTINED` (`why`) until [`FunctionHandle::release`].
    pub(crate) fn quarantine(&self, why: String) -> Option<Arc<Engine>> {
        *self.slot.quarantine.write() = Some(why);
        self.slot.current.write().take()
    }

    /// Ends a quarantine with a freshly loaded engine; returns the engine it replaces, if any.
    pub(crate) fn release(&self, next: Arc<Engine>) -> Option<Arc<Engine>> {
        let mut current = self.slot.current.write();
        *self.slot.quarantine.write() = None;
        current.replace(next)
    }

    pub(crate) fn current(&self) -> Option<Arc<Engine>> {
        self.slot.current.read().clone()
    }

    /// Stops taking calls: empties the slot and tells front ends to finish.
    pub(crate) fn close(&self) -> Option<Arc<Engine>> {
        let previous = self.slot.current.write().take();
        self.slot.closing.send_replace(true);
        previous
    }
}
