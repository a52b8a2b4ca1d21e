//! Submission: streams (a queue and a timeline semaphore), command lists recorded once and reused,
//! and tickets that the host waits on with a deadline.

use std::sync::Arc;
use std::time::Duration;

use ash::vk;
use bytemuck::Pod;

use crate::device::{Device, DeviceShared, QueueKind};
use crate::error::{Error, Result, VkResultExt};
use crate::memory::Buffer;
use crate::pipeline::{BindGroup, Pipeline};

/// Most tickets one submission waits for.
const MAX_WAITS: usize = 4;

/// How long [`Ticket::wait`] polls before it blocks in the driver.
const SPIN_BEFORE_BLOCKING: Duration = Duration::from_micros(50);

/// A submission stream: one queue of a family and a timeline semaphore counting its submissions.
/// Several streams may exist per device (they spread over the family's queues; a function's streams
/// over queues apart from other functions', see [`Device::for_function`]).
pub struct Stream {
    device: Arc<DeviceShared>,
    /// The function's queues, held while its streams live.
    _lease: Option<Arc<crate::device::queues::QueueLease>>,
    kind: QueueKind,
    family: u32,
    queue: usize,
    timeline: Arc<Timeline>,
    next_value: u64,
}

/// A timeline semaphore; tickets keep it alive.
pub(crate) struct Timeline {
    device: Arc<DeviceShared>,
    raw: vk::Semaphore,
}

impl Drop for Timeline {
    fn drop(&mut self) {
        // SAFETY: no ticket refers to the semaphore any more, so no submission waits on or signals it
        // that the host still cares about; command lists wait for their last ticket before dropping.
        unsafe { self.device.raw.destroy_semaphore(self.raw, None) };
    }
}

/// Completion of one submission: waitable from any thread, usable as a dependency of other streams.
#[derive(Clone)]
pub struct Ticket {
    timeline: Arc<Timeline>,
    value: u64,
}

impl Ticket {
    /// Blocks until the submission finished, or fails with [`Error::Timeout`] after `deadline` (and marks
    /// the device lost, since work that overran its deadline cannot be trusted to ever finish).
    pub fn wait(&self, deadline: Duration) -> Result<()> {
        self.wait_polling(deadline, SPIN_BEFORE_BLOCKING)
    }

    /// [`Ticket::wait`] polling the completion for up to `poll` before blocking in the driver. A small
    /// batch's kernel finishes within tens of microseconds, sooner than a thread blocked in the driver
    /// is woken: callers that expect a short wait poll longer (the tail latency of one-row requests
    /// depends on it; bench/RESULTS.md), callers running long batches poll briefly and sleep.
    pub fn wait_polling(&self, deadline: Duration, poll: Duration) -> Result<()> {
        let device = &self.timeline.device;
        device.check_lost()?;
        let polling_started = std::time::Instant::now();
        while polling_started.elapsed() < poll.min(deadline) {
            if self.is_done()? {
                return Ok(());
            }
            std::hint::spin_loop();
        }
        let semaphores = [self.timeline.raw];
        let values = [self.value];
        let info = vk::SemaphoreWaitInfo::default().semaphores(&semaphores).values(&values);
        let nanos = u64::try_from(deadline.as_nanos()).unwrap_or(u64::MAX);
        // SAFETY: the semaphore is a live timeline semaphore of this device.
        match unsafe { device.raw.wait_semaphores(&info, nanos) } {
            Ok(()) => Ok(()),
            Err(vk::Result::TIMEOUT) => {
                device.mark_lost();
                Err(Error::Timeout(deadline))
            }
            Err(result) => {
                let error = Error::vk("vkWaitSemaphores", result);
                if error.is_device_lost() {
                    device.mark_lost();
                }
                Err(error)
            }
        }
    }

    /// True once the submission has finished.
    pub fn is_done(&self) -> Result<bool> {
        // SAFETY: live timeline semaphore of this device.
        let value = unsafe { self.timeline.device.raw.get_semaphore_counter_value(self.timeline.raw) }
            .call("vkGetSemaphoreCounterValue")?;
        Ok(value >= self.value)
    }
}

impl Timeline {
    fn new(device: &Arc<DeviceShared>) -> Result<Arc<Timeline>> {
        let mut type_info = vk::SemaphoreTypeCreateInfo::default().semaphore_type(vk::SemaphoreType::TIMELINE);
        let info = vk::SemaphoreCreateInfo::default().push_next(&mut type_info);
        // SAFETY: valid create info; destroyed by `Timeline::drop`.
        let raw = unsafe { device.raw.create_semaphore(&info, None) }.call("vkCreateSemaphore")?;
        Ok(Arc::new(Timeline {
            device: device.clone(),
            raw,
        }))
    }
}

impl Device {
    /// Opens a submission stream on a queue of `kind`.
    pub fn stream(&self, kind: QueueKind) -> Result<Stream> {
        let shared = &self.shared;
        shared.check_lost()?;
        let family = shared.family(kind);
        let timeline = Timeline::new(shared)?;
        let queue = match &self.lease {
            Some(lease) => lease.pick(kind),
            None => family.pick(),
        };
        Ok(Stream {
            device: shared.clone(),
            _lease: self.lease.clone(),
            kind,
            family: family.family,
            queue,
            timeline,
            next_value: 1,
        })
    }
}

impl Stream {
    /// The queue kind this stream submits to.
    pub fn kind(&self) -> QueueKind {
        self.kind
    }

    /// Records a command list for this stream's queue family. The list can be submitted any number
    /// of times (and re-recorded in place) without allocating.
    pub fn record(&self, record: impl FnOnce(&mut Recorder<'_>) -> Result<()>) -> Result<CommandList> {
        let device = &self.device;
        device.check_lost()?;
        let pool_info = vk::CommandPoolCreateInfo::default()
            .queue_family_index(self.family)
            .flags(vk::CommandPoolCreateFlags::RESET_COMMAND_BUFFER);
        // SAFETY: valid create info; the pool is owned by the command list and destroyed with it.
        let pool = unsafe { device.raw.create_command_pool(&pool_info, None) }.call("vkCreateCommandPool")?;
        let alloc_info = vk::CommandBufferAllocateInfo::default()
            .command_pool(pool)
            .level(vk::CommandBufferLevel::PRIMARY)
            .command_buffer_count(1);
        // SAFETY: the pool is live and externally synchronised by its single owner.
        let raw = match unsafe { device.raw.allocate_command_buffers(&alloc_info) } {
            Ok(buffers) => buffers[0],
            Err(result) => {
                // SAFETY: nothing was allocated from the pool.
                unsafe { device.raw.destroy_command_pool(pool, None) };
                return Err(Error::vk("vkAllocateCommandBuffers", result));
            }
        };
        let mut list = CommandList {
            device: device.clone(),
            family: self.family,
            kind: self.kind,
            pool,
            raw,
            keep: Vec::new(),
            last: None,
            waited: Vec::with_capacity(MAX_WAITS),
        };
        list.fill(record)?;
        Ok(list)
    }

    /// Submits `list`; the returned ticket completes when it has executed.
    pub fn submit(&mut self, list: &mut CommandList) -> Result<Ticket> {
        self.submit_after(list, &[])
    }

    /// Submits `list` to start only after every ticket in `after` completed (e.g. an upload on a
    /// transfer stream before a dispatch on a compute stream).
    pub fn submit_after(&mut self, list: &mut CommandList, after: &[&Ticket]) -> Result<Ticket> {
        let device = &self.device;
        device.check_lost()?;
        if list.family != self.family {
            return Err(Error::Binding(format!(
                "command list was recorded for a {:?} stream (queue family {}), not this {:?} stream (family {})",
                list.kind, list.family, self.kind, self.family
            )));
        }
        list.ensure_idle()?;
        if after.len() > MAX_WAITS {
            return Err(Error::Binding(format!(
                "a submission waits for at most {MAX_WAITS} tickets, not {}",
                after.len()
            )));
        }
        let value = self.next_value;
        let ticket = Ticket {
            timeline: self.timeline.clone(),
            value,
        };
        // Timestamp slots the list writes are in use until it has run: no host reset before (a failed
        // submission leaves them marked, as its value is never signalled; the device is then lost or out
        // of memory).
        for kept in &list.keep {
            if let Keep::Timestamps(timestamps) = kept {
                *timestamps.inner.in_use_until.lock() = Some(ticket.clone());
            }
        }
        let mut wait_semaphores = [vk::Semaphore::null(); MAX_WAITS];
        let mut wait_values = [0u64; MAX_WAITS];
        for (i, ticket) in after.iter().enumerate() {
            wait_semaphores[i] = ticket.timeline.raw;
            wait_values[i] = ticket.value;
        }
        let (wait_semaphores, wait_values) = (&wait_semaphores[..after.len()], &wait_values[..after.len()]);
        let wait_stages = &[vk::PipelineStageFlags::ALL_COMMANDS; MAX_WAITS][..after.len()];
        let signal_semaphores = [self.timeline.raw];
        let signal_values = [value];
        let mut timeline_info = vk::TimelineSemaphoreSubmitInfo::default()
            .wait_semaphore_values(wait_values)
            .signal_semaphore_values(&signal_values);
        let command_buffers = [list.raw];
        let submit = vk::SubmitInfo::default()
            .wait_semaphores(wait_semaphores)
            .wait_dst_stage_mask(wait_stages)
            .command_buffers(&command_buffers)
            .signal_semaphores(&signal_semaphores)
            .push_next(&mut timeline_info);
        let queue = device.family(self.kind).queues[self.queue].lock();
        // SAFETY: the queue is externally synchronised by its lock; the command buffer is fully recorded,
        // not pending (checked above) and keeps every resource it references alive; the semaphores waited
        // for are live (their tickets are held here, and by the list until it has run).
        let result = unsafe { device.raw.queue_submit(*queue, &[submit], vk::Fence::null()) };
        drop(queue);
        if let Err(result) = result {
            let error = Error::vk("vkQueueSubmit", result);
            if error.is_device_lost() {
                device.mark_lost();
            }
            return Err(error);
        }
        self.next_value += 1;
        // The semaphores waited for must outlive the submission (their streams may be dropped first).
        list.waited.clear();
        list.waited.extend(after.iter().map(|t| (*t).clone()));
        list.last = Some(ticket.clone());
        Ok(ticket)
    }

    /// Submits and waits, with a deadline.
    pub fn run(&mut self, list: &mut CommandList, deadline: Duration) -> Result<()> {
        self.submit(list)?.wait(deadline)
    }
}

/// A recorded command buffer with everything it references kept alive.
pub struct CommandList {
    device: Arc<DeviceShared>,
    family: u32,
    kind: QueueKind,
    pool: vk::CommandPool,
    raw: vk::CommandBuffer,
    keep: Vec<Keep>,
    last: Option<Ticket>,
    /// The tickets the last submission waited for (capacity kept: no allocation per submission).
    waited: Vec<Ticket>,
}

/// Resources a command list references; held, never read, so that they outlive GPU execution.
enum Keep {
    Buffer(#[allow(dead_code)] Buffer),
    BindGroup(#[allow(dead_code)] BindGroup),
    Timestamps(#[allow(dead_code)] Timestamps),
}

/// GPU timestamps, written by command lists, for measuring kernels without the host in the way.
#[derive(Clone)]
pub struct Timestamps {
    inner: Arc<TimestampsInner>,
}

struct TimestampsInner {
    device: Arc<DeviceShared>,
    pool: vk::QueryPool,
    count: u32,
    /// The last submission of a list that writes these slots (set before it is submitted), so that the
    /// host resets and reads them only once it has run; held while they are reset or read, since the
    /// host must not reset slots that another thread reads.
    in_use_until: parking_lot::Mutex<Option<Ticket>>,
}

impl Drop for TimestampsInner {
    fn drop(&mut self) {
        // SAFETY: the last handle is gone; command lists hold clones while they may run.
        unsafe { self.device.raw.destroy_query_pool(self.pool, None) };
    }
}

impl Device {
    /// Creates `count` timestamp slots. Fails on devices whose compute queues have no timestamps.
    pub fn create_timestamps(&self, count: u32) -> Result<Timestamps> {
        let shared = &self.shared;
        shared.check_lost()?;
        let family = shared.family(QueueKind::Compute).family;
        let valid_bits = shared
            .info
            .queue_families
            .get(family as usize)
            .map_or(0, |f| f.timestamp_valid_bits);
        if valid_bits == 0 {
            return Err(Error::Unsupported {
                device: shared.info.name.clone(),
                reason: "no timestamps on the compute queue".into(),
            });
        }
        let info = vk::QueryPoolCreateInfo::default()
            .query_type(vk::QueryType::TIMESTAMP)
            .query_count(count.max(1));
        // SAFETY: valid create info; destroyed with the last handle.
        let pool = unsafe { shared.raw.create_query_pool(&info, None) }.call("vkCreateQueryPool")?;
        Ok(Timestamps {
            inner: Arc::new(TimestampsInner {
                device: shared.clone(),
                pool,
                count: count.max(1),
                in_use_until: parking_lot::Mutex::new(None),
            }),
        })
    }
}

impl Timestamps {
    /// Reads every slot as nanoseconds (device clock; only differences are meaningful). Call after the
    /// ticket of the list that wrote them completed.
    pub fn read_ns(&self) -> Result<Vec<f64>> {
        let inner = &self.inner;
        let mut ticks = vec![0u64; inner.count as usize];
        // No reset from another thread while the slots are read.
        let _in_use = inner.in_use_until.lock();
        // SAFETY: the pool has `count` timestamp queries; results are 64-bit and waited for; the lock
        // keeps host resets of these slots out meanwhile.
        unsafe {
            inner.device.raw.get_query_pool_results(
                inner.pool,
                0,
                &mut ticks,
                vk::QueryResultFlags::TYPE_64 | vk::QueryResultFlags::WAIT,
            )
        }
        .call("vkGetQueryPoolResults")?;
        let period = inner.device.info.timestamp_period_ns as f64;
        Ok(ticks.into_iter().map(|t| t as f64 * period).collect())
    }

    /// Resets every slot from the host, for slots written on a queue that cannot reset them itself
    /// (a transfer queue). Fails with [`Error::StillExecuting`] while a submitted list that writes them
    /// has not run, and where the device lacks `hostQueryReset`.
    pub fn reset_on_host(&self) -> Result<()> {
        let inner = &self.inner;
        if !inner.device.host_query_reset {
            return Err(Error::Unsupported {
                device: inner.device.info.name.clone(),
                reason: "no host query reset (hostQueryReset)".into(),
            });
        }
        // Submissions record themselves here before they are submitted: holding the lock, a list that
        // writes these slots either has been submitted (and is checked) or waits until the reset is done.
        let in_use = inner.in_use_until.lock();
        if let Some(ticket) = in_use.as_ref()
            && !ticket.is_done()?
        {
            return Err(Error::StillExecuting);
        }
        // SAFETY: live pool, the whole range, the feature enabled at device creation; no submitted
        // command that writes the slots is pending and none is submitted nor any read made until the
        // lock is released (checked and held above).
        unsafe { inner.device.raw.reset_query_pool(inner.pool, 0, inner.count) };
        Ok(())
    }
}

impl CommandList {
    /// Re-records the list in place (no allocation), e.g. for a batch of another size. Fails with
    /// [`Error::StillExecuting`] if its last submission has not completed.
    pub fn rerecord(&mut self, record: impl FnOnce(&mut Recorder<'_>) -> Result<()>) -> Result<()> {
        self.device.check_lost()?;
        self.ensure_idle()?;
        self.fill(record)
    }

    /// The ticket of the last submission, if any.
    pub fn last_ticket(&self) -> Option<&Ticket> {
        self.last.as_ref()
    }

    fn ensure_idle(&self) -> Result<()> {
        match &self.last {
            Some(ticket) if !ticket.is_done()? => Err(Error::StillExecuting),
            _ => Ok(()),
        }
    }

    fn fill(&mut self, record: impl FnOnce(&mut Recorder<'_>) -> Result<()>) -> Result<()> {
        let device = self.device.clone();
        self.keep.clear();
        // SAFETY: the buffer is not pending (checked by callers) and its pool is owned by this list.
        unsafe {
            device
                .raw
                .reset_command_buffer(self.raw, vk::CommandBufferResetFlags::empty())
                .call("vkResetCommandBuffer")?;
            device
                .raw
                .begin_command_buffer(self.raw, &vk::CommandBufferBeginInfo::default())
                .call("vkBeginCommandBuffer")?;
        }
        let mut recorder = Recorder {
            device: &device,
            list: self,
        };
        let recorded = record(&mut recorder);
        // Make every device write visible to the host once the ticket completes.
        recorder.barrier_to(vk::PipelineStageFlags::HOST, vk::AccessFlags::HOST_READ);
        // SAFETY: recording began above.
        let ended = unsafe { device.raw.end_command_buffer(self.raw) }.call("vkEndCommandBuffer");
        recorded.and(ended)
    }
}

impl Drop for CommandList {
    fn drop(&mut self) {
        // The GPU may still be executing this list; its resources must outlive that.
        if let Some(ticket) = &self.last {
            while !self.device.lost.load(std::sync::atomic::Ordering::Acquire) && !ticket.is_done().unwrap_or(true) {
                if ticket.wait(Duration::from_secs(3600)).is_err() {
                    break;
                }
            }
            if self.device.lost.load(std::sync::atomic::Ordering::Acquire) {
                // A lost device may still be running the list (a missed deadline); wait for the whole
                // device before freeing what the list uses. Waiting for idle uses every queue: hold them
                // all, since other lanes of the device may be dropped (and wait) on other threads.
                let _queues: Vec<_> = self.device.all_queues().map(|q| q.lock()).collect();
                // SAFETY: every queue of the device is held (external synchronisation of vkDeviceWaitIdle).
                let _ = unsafe { self.device.raw.device_wait_idle() };
            }
        }
        // SAFETY: the list is no longer executing; freeing the pool frees its command buffer.
        unsafe { self.device.raw.destroy_command_pool(self.pool, None) };
    }
}

/// Records commands into a [`CommandList`].
pub struct Recorder<'a> {
    device: &'a DeviceShared,
    list: &'a mut CommandList,
}

impl Recorder<'_> {
    fn is_transfer_only(&self) -> bool {
        self.list.kind == QueueKind::Transfer && self.device.transfer.is_some()
    }

    fn stages(&self) -> vk::PipelineStageFlags {
        if self.is_transfer_only() {
            vk::PipelineStageFlags::TRANSFER
        } else {
            vk::PipelineStageFlags::TRANSFER | vk::PipelineStageFlags::COMPUTE_SHADER
        }
    }

    fn barrier_to(&mut self, dst_stage: vk::PipelineStageFlags, dst_access: vk::AccessFlags) {
        // Only writes of the stages waited for: a transfer-only queue has no shader stage, and naming
        // shader writes there is invalid (VUID-vkCmdPipelineBarrier-srcAccessMask-02815, which the
        // validation layer reports on NVIDIA's dedicated transfer family; lavapipe has none).
        let src_access = if self.is_transfer_only() {
            vk::AccessFlags::TRANSFER_WRITE
        } else {
            vk::AccessFlags::SHADER_WRITE | vk::AccessFlags::TRANSFER_WRITE
        };
        let barrier = vk::MemoryBarrier::default()
            .src_access_mask(src_access)
            .dst_access_mask(dst_access);
        // SAFETY: the command buffer is in the recording state for the recorder's lifetime.
        unsafe {
            self.device.raw.cmd_pipeline_barrier(
                self.list.raw,
                self.stages(),
                dst_stage,
                vk::DependencyFlags::empty(),
                &[barrier],
                &[],
                &[],
            )
        };
    }

    /// Orders everything recorded before against everything after (copies and dispatches).
    pub fn barrier(&mut self) {
        let access = if self.is_transfer_only() {
            vk::AccessFlags::TRANSFER_READ | vk::AccessFlags::TRANSFER_WRITE
        } else {
            // Uniform buffers are read through their own access type (a kernel may bind one).
            vk::AccessFlags::SHADER_READ
                | vk::AccessFlags::UNIFORM_READ
                | vk::AccessFlags::SHADER_WRITE
                | vk::AccessFlags::TRANSFER_READ
                | vk::AccessFlags::TRANSFER_WRITE
        };
        let stages = self.stages();
        self.barrier_to(stages, access);
    }

    fn check_buffer(&self, buffer: &Buffer, offset: u64, size: u64) -> Result<()> {
        if !Arc::ptr_eq(&buffer.inner.device, &self.list.device) {
            return Err(Error::Binding(format!(
                "buffer {:?} belongs to another device",
                buffer.name()
            )));
        }
        if offset.checked_add(size).is_none_or(|end| end > buffer.size()) || offset % 4 != 0 || size % 4 != 0 {
            return Err(Error::BufferAccess {
                name: buffer.name().to_string(),
                problem: format!(
                    "range {offset}..+{size} is outside its {} bytes or not 4-byte aligned",
                    buffer.size()
                ),
            });
        }
        Ok(())
    }

    /// Resets every timestamp slot (record before writing them in this list). Not on a transfer-only
    /// queue, which cannot reset them: use [`Timestamps::reset_on_host`] there.
    pub fn reset_timestamps(&mut self, timestamps: &Timestamps) -> Result<()> {
        if self.is_transfer_only() {
            return Err(Error::Unsupported {
                device: self.device.info.name.clone(),
                reason: "a transfer queue cannot reset timestamps (reset them on the host)".into(),
            });
        }
        // SAFETY: live pool owned by `timestamps`, kept by the list; a compute queue's list.
        unsafe {
            self.device
                .raw
                .cmd_reset_query_pool(self.list.raw, timestamps.inner.pool, 0, timestamps.inner.count)
        };
        self.list.keep.push(Keep::Timestamps(timestamps.clone()));
        Ok(())
    }

    /// Writes slot `index` once all previously recorded work has completed.
    pub fn write_timestamp(&mut self, timestamps: &Timestamps, index: u32) -> Result<()> {
        self.timestamp_at(timestamps, index, vk::PipelineStageFlags::BOTTOM_OF_PIPE)
    }

    /// Writes slot `index` as soon as the queue reaches it, without waiting for earlier work to
    /// complete: the moment a list starts executing (after the semaphores it waits for).
    pub fn write_start_timestamp(&mut self, timestamps: &Timestamps, index: u32) -> Result<()> {
        self.timestamp_at(timestamps, index, vk::PipelineStageFlags::TOP_OF_PIPE)
    }

    fn timestamp_at(&mut self, timestamps: &Timestamps, index: u32, stage: vk::PipelineStageFlags) -> Result<()> {
        if index >= timestamps.inner.count {
            return Err(Error::Binding(format!(
                "timestamp slot {index} of {}",
                timestamps.inner.count
            )));
        }
        let valid_bits = self
            .device
            .info
            .queue_families
            .get(self.list.family as usize)
            .map_or(0, |f| f.timestamp_valid_bits);
        if valid_bits == 0 {
            return Err(Error::Unsupported {
                device: self.device.info.name.clone(),
                reason: format!("no timestamps on the {:?} queue", self.list.kind),
            });
        }
        // SAFETY: live pool, slot in range, reset earlier (in the list or on the host) by the caller's
        // protocol; the list's family has timestamps (checked above).
        unsafe {
            self.device
                .raw
                .cmd_write_timestamp(self.list.raw, stage, timestamps.inner.pool, index)
        };
        self.list.keep.push(Keep::Timestamps(timestamps.clone()));
        Ok(())
    }

    /// Copies `size` bytes between buffers (offsets and size multiples of 4).
    pub fn copy(&mut self, src: &Buffer, src_offset: u64, dst: &Buffer, dst_offset: u64, size: u64) -> Result<()> {
        self.check_buffer(src, src_offset, size)?;
        self.check_buffer(dst, dst_offset, size)?;
        if size == 0 {
            return Ok(());
        }
        let region = vk::BufferCopy {
            src_offset,
            dst_offset,
            size,
        };
        // SAFETY: both buffers are live (kept by the list) and the ranges were checked.
        unsafe {
            self.device
                .raw
                .cmd_copy_buffer(self.list.raw, src.inner.raw, dst.inner.raw, &[region])
        };
        self.list.keep.push(Keep::Buffer(src.clone()));
        self.list.keep.push(Keep::Buffer(dst.clone()));
        Ok(())
    }

    /// Fills `size` bytes at `offset` with the 32-bit `value`.
    pub fn fill(&mut self, buffer: &Buffer, offset: u64, size: u64, value: u32) -> Result<()> {
        self.check_buffer(buffer, offset, size)?;
        if size == 0 {
            return Ok(());
        }
        // SAFETY: live buffer, checked range.
        unsafe {
            self.device
                .raw
                .cmd_fill_buffer(self.list.raw, buffer.inner.raw, offset, size, value)
        };
        self.list.keep.push(Keep::Buffer(buffer.clone()));
        Ok(())
    }

    /// Dispatches the bind group's pipeline over `groups` workgroups with push constants `push` (their
    /// size must equal the kernel's push-constant block; use `&()`-like empty data for none).
    pub fn dispatch<P: Pod>(&mut self, bind_group: &BindGroup, push: &P, groups: [u32; 3]) -> Result<()> {
        self.dispatch_bytes(bind_group, bytemuck::bytes_of(push), groups)
    }

    /// [`Recorder::dispatch`] with raw push-constant bytes.
    pub fn dispatch_bytes(&mut self, bind_group: &BindGroup, push: &[u8], groups: [u32; 3]) -> Result<()> {
        if self.is_transfer_only() {
            return Err(Error::Binding(
                "dispatches need a compute stream, not a transfer stream".into(),
            ));
        }
        let pipeline: &Pipeline = &bind_group.inner.pipeline;
        let inner = &pipeline.inner;
        if !Arc::ptr_eq(&inner.device, &self.list.device) {
            return Err(Error::Binding("the pipeline belongs to another device".into()));
        }
        let expected = pipeline.info().push_constant_size as usize;
        if push.len() != expected {
            return Err(Error::PushConstants(format!(
                "{} bytes given, the kernel declares {expected} bytes ({:?})",
                push.len(),
                pipeline.info().push_constant_fields
            )));
        }
        let max = self.device.info.max_workgroup_count;
        if groups.iter().zip(max).any(|(&g, m)| g > m) || groups.contains(&0) {
            return Err(Error::Binding(format!(
                "{groups:?} workgroups: each must be between 1 and {max:?}"
            )));
        }
        let raw = self.list.raw;
        // SAFETY: pipeline, layout and sets are live (kept by the list) and match each other; push data
        // size equals the layout's range.
        unsafe {
            self.device
                .raw
                .cmd_bind_pipeline(raw, vk::PipelineBindPoint::COMPUTE, inner.raw);
            if !bind_group.inner.sets.is_empty() {
                self.device.raw.cmd_bind_descriptor_sets(
                    raw,
                    vk::PipelineBindPoint::COMPUTE,
                    inner.layout,
                    0,
                    &bind_group.inner.sets,
                    &[],
                );
            }
            if !push.is_empty() {
                self.device
                    .raw
                    .cmd_push_constants(raw, inner.layout, vk::ShaderStageFlags::COMPUTE, 0, push);
            }
            self.device.raw.cmd_dispatch(raw, groups[0], groups[1], groups[2]);
        }
        self.list.keep.push(Keep::BindGroup(bind_group.clone()));
        Ok(())
    }
}
