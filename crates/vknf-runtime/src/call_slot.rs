//! A caller's reusable place for its calls' answers: one call at a time, nothing allocated per call
//! once warm.
//!
//! The slot lends the runtime a reply box holding the answer's buffers; the lane thread fills them,
//! and completing the call hands the box back through the slot's shared state, where a blocking
//! caller waits on a condition variable and an async one on its waker. The box and the shared state
//! are made once per slot, so a call allocates neither (the job is recycled by the engine).
//!
//! Every call has a generation. A caller that gives up (an async call dropped before its answer) moves
//! the slot to a new generation: the runtime then skips the abandoned call if it is still queued, and
//! an answer it finishes anyway is dropped, never taken for a later call's.

use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Poll, Waker};

use parking_lot::{Condvar, Mutex};

use crate::answer::Answer;
use crate::call::{AnswerLayout, CallError, Reply};

/// Where the answers of one caller's calls go, kept between calls so that steady-state calls allocate
/// nothing. Make one per thread or task that calls; pass it to [`crate::FunctionHandle::call_in`] or
/// [`crate::FunctionHandle::call_blocking_in`], which borrow it for the call and return the answer
/// inside it.
pub struct CallSlot {
    shared: Arc<SlotShared>,
    /// The reply box, with the buffers of the last answer, while no call is in flight.
    idle: Option<Box<SlotReply>>,
    /// The generation of the slot's latest call.
    generation: u64,
}

impl std::fmt::Debug for CallSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallSlot")
            .field("generation", &self.generation)
            .finish()
    }
}

impl Default for CallSlot {
    fn default() -> CallSlot {
        CallSlot::new()
    }
}

/// What the caller and the reply of its call in flight share.
struct SlotShared {
    /// The generation of the call the caller waits for; replies of any other are stale.
    current: AtomicU64,
    state: Mutex<SlotState>,
    done: Condvar,
}

struct SlotState {
    /// The reply box of a finished call, with what became of the call.
    finished: Option<(Box<SlotReply>, Result<(), CallError>)>,
    /// The async caller to wake when its call finishes.
    waker: Option<Waker>,
    /// The slot is gone: finished replies are dropped, not kept (that would keep the state alive).
    abandoned: bool,
}

/// The reply of one call through a slot: the answer's buffers travel in it.
struct SlotReply {
    shared: Arc<SlotShared>,
    generation: u64,
    answer: Answer,
}

impl SlotReply {
    fn finish(self: Box<Self>, result: Result<(), CallError>) {
        let shared = self.shared.clone();
        let mut state = shared.state.lock();
        if state.abandoned || shared.current.load(Ordering::Acquire) != self.generation {
            // Nobody waits for this call any more; dropped outside the lock.
            drop(state);
            drop(self);
            return;
        }
        let replaced = state.finished.replace((self, result));
        let waker = state.waker.take();
        drop(state);
        shared.done.notify_one();
        if let Some(waker) = waker {
            waker.wake();
        }
        drop(replaced);
    }
}

impl Reply for SlotReply {
    fn prepare(&mut self, layout: &AnswerLayout<'_>) {
        self.answer.lay_out(layout);
    }

    fn output(&mut self, index: usize) -> &mut [u8] {
        self.answer.output_bytes_mut(index)
    }

    fn complete(self: Box<Self>, _layout: &AnswerLayout<'_>) {
        self.finish(Ok(()));
    }

    fn fail(self: Box<Self>, error: CallError) {
        self.finish(Err(error));
    }

    fn is_cancelled(&self) -> bool {
        self.shared.current.load(Ordering::Acquire) != self.generation
    }
}

impl CallSlot {
    /// An empty slot; its first call allocates the reply box and the answer's buffers, later calls of
    /// the same size or smaller allocate nothing.
    pub fn new() -> CallSlot {
        CallSlot {
            shared: Arc::new(SlotShared {
                current: AtomicU64::new(0),
                state: Mutex::new(SlotState {
                    finished: None,
                    waker: None,
                    abandoned: false,
                }),
                done: Condvar::new(),
            }),
            idle: None,
            generation: 0,
        }
    }

    /// The answer of the slot's last call, while the slot makes no other; `None` before its first.
    /// Meaningful when that call succeeded (a failed call may leave it partly written).
    pub fn answer(&self) -> Option<&Answer> {
        self.idle.as_ref().map(|reply| &reply.answer)
    }

    /// Takes the answer of the last call out of the slot (its buffers then go with it).
    pub fn take_answer(&mut self) -> Answer {
        self.idle
            .as_mut()
            .map(|reply| std::mem::take(&mut reply.answer))
            .unwrap_or_default()
    }

    /// Starts a call: a new generation and the reply box for it (`answer`'s buffers, if given, else
    /// those of the last answer).
    pub(crate) fn begin(&mut self, answer: Option<Answer>) -> Box<dyn Reply> {
        self.generation += 1;
        let stale = {
            let mut state = self.shared.state.lock();
            // Under the lock: a reply that finishes after this sees it is stale.
            self.shared.current.store(self.generation, Ordering::Release);
            state.waker = None;
            state.finished.take()
        };
        // A call given up earlier may have finished meanwhile: its box serves again.
        let mut reply = match (self.idle.take(), stale) {
            (Some(idle), _) => idle,
            (None, Some((stale, _))) => stale,
            (None, None) => Box::new(SlotReply {
                shared: self.shared.clone(),
                generation: 0,
                answer: Answer::default(),
            }),
        };
        reply.generation = self.generation;
        if let Some(answer) = answer {
            reply.answer = answer;
        }
        reply
    }

    /// Takes the finished call of the current generation, if it is in.
    fn take_finished(&mut self, state: &mut SlotState) -> Option<Result<(), CallError>> {
        match state.finished.take() {
            Some((reply, result)) if reply.generation == self.generation => {
                self.idle = Some(reply);
                Some(result)
            }
            // Stale (finished just before the generation moved on): unreachable by design, harmless.
            Some(_) | None => None,
        }
    }

    /// Waits on this thread for the current call.
    pub(crate) fn wait_blocking(&mut self) -> Result<(), CallError> {
        let shared = self.shared.clone();
        let mut state = shared.state.lock();
        loop {
            if let Some(result) = self.take_finished(&mut state) {
                return result;
            }
            shared.done.wait(&mut state);
        }
    }

    /// Waits for the current call from an async task.
    async fn wait(&mut self) -> Result<(), CallError> {
        let shared = self.shared.clone();
        poll_fn(|cx| {
            let mut state = shared.state.lock();
            if let Some(result) = self.take_finished(&mut state) {
                return Poll::Ready(result);
            }
            match &state.waker {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                _ => state.waker = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }

    /// Gives up the current call: it is skipped if still queued and its answer, if it comes, dropped.
    fn give_up(&mut self) {
        self.generation += 1;
        let mut state = self.shared.state.lock();
        self.shared.current.store(self.generation, Ordering::Release);
        state.waker = None;
    }
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        let finished = {
            let mut state = self.shared.state.lock();
            state.abandoned = true;
            // A reply in flight finds the slot gone and drops itself.
            self.shared.current.store(u64::MAX, Ordering::Release);
            state.waker = None;
            state.finished.take()
        };
        drop(finished);
    }
}

/// An async call in flight through a slot: dropped before its answer, it gives the call up.
pub(crate) struct PendingCall<'s> {
    slot: Option<&'s mut CallSlot>,
}

impl<'s> PendingCall<'s> {
    pub(crate) fn new(slot: &'s mut CallSlot) -> PendingCall<'s> {
        PendingCall { slot: Some(slot) }
    }

    /// Waits for the answer; the slot, with the answer in it, is handed back with the outcome.
    pub(crate) async fn finish(mut self) -> (&'s mut CallSlot, Result<(), CallError>) {
        let result = self.slot.as_mut().expect("a pending call has its slot").wait().await;
        (self.slot.take().expect("a pending call has its slot"), result)
    }
}

impl Drop for PendingCall<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            slot.give_up();
        }
    }
}
