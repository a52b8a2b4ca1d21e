//! Buffers, sub-allocated from large device-memory blocks by gpu-allocator and, when host-visible,
//! persistently mapped. A caller allocates once and reuses: nothing here runs per dispatch.

use std::sync::Arc;

use ash::vk;
use bytemuck::Pod;
use gpu_allocator::MemoryLocation;
use gpu_allocator::vulkan::{Allocation, AllocationCreateDesc, AllocationScheme};
use parking_lot::Mutex;
use serde::Serialize;

use crate::device::{Device, DeviceShared};
use crate::error::{Error, Result, VkResultExt};

/// Deadline of the runtime's own one-off transfers (initial data uploads).
const SETUP_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

/// Where a buffer lives and who touches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemoryKind {
    /// Device-local, not host-visible: resident model data, intermediate results.
    DeviceLocal,
    /// Host-visible and written by the host, read by the GPU; device-local when the driver offers such
    /// memory (resizable BAR), so the GPU reads it at full speed.
    Upload,
    /// Host-visible, host-cached system memory: results the host reads back, and a DMA source for
    /// transfers.
    Readback,
}

impl MemoryKind {
    fn location(self) -> MemoryLocation {
        match self {
            MemoryKind::DeviceLocal => MemoryLocation::GpuOnly,
            MemoryKind::Upload => MemoryLocation::CpuToGpu,
            MemoryKind::Readback => MemoryLocation::GpuToCpu,
        }
    }
}

/// A GPU buffer usable as a storage buffer, uniform buffer and copy source/destination.
/// Cheap to clone (shared handle).
#[derive(Clone)]
pub struct Buffer {
    pub(crate) inner: Arc<BufferInner>,
}

pub(crate) struct BufferInner {
    pub(crate) device: Arc<DeviceShared>,
    pub(crate) raw: vk::Buffer,
    allocation: Mutex<Option<Allocation>>,
    mapped: Option<std::ptr::NonNull<u8>>,
    // Serialises host access to the mapped memory across clones of the handle.
    host_access: Mutex<()>,
    size: u64,
    kind: MemoryKind,
    name: String,
    device_local: bool,
}

// SAFETY: the mapped pointer refers to memory owned by this buffer for its whole life; every host access
// goes through `&self`/`&mut self` methods that copy with bounds checks, so sharing across threads is
// as safe as sharing a `Mutex<Vec<u8>>`'s contents would be.
unsafe impl Send for BufferInner {}
// SAFETY: see above.
unsafe impl Sync for BufferInner {}

impl Device {
    /// Allocates a buffer of `size` bytes (rounded up to 4). `name` appears in errors and reports.
    pub fn create_buffer(&self, name: &str, size: u64, kind: MemoryKind) -> Result<Buffer> {
        let shared = &self.shared;
        shared.check_lost()?;
        let size = size.max(4).next_multiple_of(4);
        let families = shared.sharing_families();
        let sharing = if families.len() > 1 {
            vk::SharingMode::CONCURRENT
        } else {
            vk::SharingMode::EXCLUSIVE
        };
        let create_info = vk::BufferCreateInfo::default()
            .size(size)
            .usage(
                vk::BufferUsageFlags::STORAGE_BUFFER
                    | vk::BufferUsageFlags::UNIFORM_BUFFER
                    | vk::BufferUsageFlags::TRANSFER_SRC
                    | vk::BufferUsageFlags::TRANSFER_DST,
            )
            .sharing_mode(sharing)
            .queue_family_indices(&families);
        // SAFETY: valid create info; the buffer is destroyed in `BufferInner::drop`.
        let raw = unsafe { shared.raw.create_buffer(&create_info, None) }.call("vkCreateBuffer")?;
        // SAFETY: `raw` was just created on this device.
        let requirements = unsafe { shared.raw.get_buffer_memory_requirements(raw) };
        let allocated = {
            let mut guard = shared.allocator.lock();
            let allocator = guard.as_mut().expect("allocator lives as long as the device");
            allocator.allocate(&AllocationCreateDesc {
                name,
                requirements,
                location: kind.location(),
                linear: true,
                allocation_scheme: AllocationScheme::GpuAllocatorManaged,
            })
        };
        let allocation = match allocated {
            Ok(allocation) => allocation,
            Err(err) => {
                // SAFETY: the buffer has no memory bound and is not in use.
                unsafe { shared.raw.destroy_buffer(raw, None) };
                let message = err.to_string();
                return Err(match err {
                    gpu_allocator::AllocationError::OutOfMemory => Error::OutOfMemory {
                        name: name.into(),
                        size,
                        message,
                    },
                    _ => Error::Allocation {
                        name: name.into(),
                        message,
                    },
                });
            }
        };
        // SAFETY: the allocation satisfies `requirements` of this buffer and is not bound elsewhere.
        let bound = unsafe {
            shared
                .raw
                .bind_buffer_memory(raw, allocation.memory(), allocation.offset())
        };
        if let Err(result) = bound {
            let mut guard = shared.allocator.lock();
            if let Some(allocator) = guard.as_mut() {
                let _ = allocator.free(allocation);
            }
            // SAFETY: not in use.
            unsafe { shared.raw.destroy_buffer(raw, None) };
            return Err(Error::vk("vkBindBufferMemory", result));
        }
        let mapped = allocation.mapped_ptr().map(|p| p.cast::<u8>());
        if kind != MemoryKind::DeviceLocal && mapped.is_none() {
            return Err(Error::Allocation {
                name: name.into(),
                message: "host-visible memory was not mapped".into(),
            });
        }
        let device_local = allocation
            .memory_properties()
            .contains(vk::MemoryPropertyFlags::DEVICE_LOCAL);
        Ok(Buffer {
            inner: Arc::new(BufferInner {
                device: shared.clone(),
                raw,
                allocation: Mutex::new(Some(allocation)),
                mapped,
                host_access: Mutex::new(()),
                size,
                kind,
                name: name.to_string(),
                device_local,
            }),
        })
    }

    /// Creates a buffer and fills it with `data` in one step (host-visible kinds write directly;
    /// device-local buffers go through a temporary staging buffer and a one-off transfer).
    pub fn create_buffer_with<T: Pod>(&self, name: &str, data: &[T], kind: MemoryKind) -> Result<Buffer> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let buffer = self.create_buffer(name, bytes.len() as u64, kind)?;
        if kind == MemoryKind::DeviceLocal {
            let staging = self.create_buffer(&format!("{name} (staging)"), bytes.len() as u64, MemoryKind::Readback)?;
            staging.write(0, bytes)?;
            let mut stream = self.stream(crate::QueueKind::Transfer)?;
            let mut commands = stream.record(|rec| rec.copy(&staging, 0, &buffer, 0, bytes.len() as u64))?;
            stream.run(&mut commands, SETUP_DEADLINE)?;
        } else {
            buffer.write(0, bytes)?;
        }
        Ok(buffer)
    }
}

impl Buffer {
    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.inner.size
    }

    /// The memory kind asked for.
    pub fn kind(&self) -> MemoryKind {
        self.inner.kind
    }

    /// The name given at creation.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// True when the memory is device-local (for [`MemoryKind::Upload`]: the driver offered BAR memory).
    pub fn is_device_local(&self) -> bool {
        self.inner.device_local
    }

    fn check_range(&self, offset: u64, len: usize) -> Result<std::ptr::NonNull<u8>> {
        let mapped = self.inner.mapped.ok_or_else(|| Error::BufferAccess {
            name: self.inner.name.clone(),
            problem: "device-local buffers are not host-visible; copy through an Upload or Readback buffer".into(),
        })?;
        let end = offset.checked_add(len as u64);
        if end.is_none_or(|end| end > self.inner.size) {
            return Err(Error::BufferAccess {
                name: self.inner.name.clone(),
                problem: format!("range {offset}..+{len} exceeds its {} bytes", self.inner.size),
            });
        }
        Ok(mapped)
    }

    /// Copies `data` into the buffer at byte `offset` (host-visible kinds only). The caller makes sure
    /// no GPU work reading this range is executing.
    pub fn write<T: Pod>(&self, offset: u64, data: &[T]) -> Result<()> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let mapped = self.check_range(offset, bytes.len())?;
        let _guard = self.lock_host()?;
        // SAFETY: the range was checked to lie inside the persistently mapped allocation, which lives as
        // long as `self`; host access is exclusive under the lock; the memory is host-coherent.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), mapped.as_ptr().add(offset as usize), bytes.len()) };
        Ok(())
    }

    /// Copies from the buffer at byte `offset` into `out` (host-visible kinds only).
    pub fn read<T: Pod>(&self, offset: u64, out: &mut [T]) -> Result<()> {
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(out);
        let mapped = self.check_range(offset, bytes.len())?;
        let _guard = self.lock_host()?;
        // SAFETY: as in `write`; the memory is host-coherent, so completed GPU writes are visible.
        unsafe { std::ptr::copy_nonoverlapping(mapped.as_ptr().add(offset as usize), bytes.as_mut_ptr(), bytes.len()) };
        Ok(())
    }

    /// Reads `count` elements starting at element `first` into a new vector.
    pub fn read_vec<T: Pod>(&self, first: usize, count: usize) -> Result<Vec<T>> {
        let mut out = vec![T::zeroed(); count];
        self.read((first * std::mem::size_of::<T>()) as u64, &mut out)?;
        Ok(out)
    }

    fn lock_host(&self) -> Result<parking_lot::MutexGuard<'_, ()>> {
        // A handle mapped on this thread and accessed again would deadlock; refuse instead.
        self.inner
            .host_access
            .try_lock_for(std::time::Duration::from_secs(10))
            .ok_or_else(|| Error::BufferAccess {
                name: self.inner.name.clone(),
                problem: "the buffer is mapped elsewhere (a `Mapped` guard is alive)".into(),
            })
    }

    /// Maps the whole buffer as `T`s for reading and writing in place (zero-copy: e.g. producing input
    /// rows straight into an upload buffer). Host access through other clones waits until the guard is
    /// dropped. GPU work touching the buffer must not be executing meanwhile (the caller's protocol, as
    /// for [`Buffer::write`]).
    pub fn map<T: Pod>(&self) -> Result<Mapped<'_, T>> {
        let size = self.inner.size as usize;
        let mapped = self.check_range(0, size)?;
        let guard = self.lock_host()?;
        let whole = size / std::mem::size_of::<T>().max(1);
        if (mapped.as_ptr() as usize) % std::mem::align_of::<T>() != 0 {
            return Err(Error::BufferAccess {
                name: self.inner.name.clone(),
                problem: "mapping is misaligned".into(),
            });
        }
        // SAFETY: the mapping covers `size` bytes, lives as long as `self` (the guard borrows `self`),
        // is aligned for `T` (checked), and host access is exclusive while the lock guard lives. Pod types
        // accept any bit pattern.
        let slice = unsafe { std::slice::from_raw_parts_mut(mapped.as_ptr().cast::<T>(), whole) };
        Ok(Mapped { _guard: guard, slice })
    }
}

/// Exclusive host access to a buffer's mapped memory; see [`Buffer::map`].
pub struct Mapped<'a, T> {
    _guard: parking_lot::MutexGuard<'a, ()>,
    slice: &'a mut [T],
}

impl<T> std::ops::Deref for Mapped<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.slice
    }
}

impl<T> std::ops::DerefMut for Mapped<'_, T> {
    fn deref_mut(&mut self) -> &mut [T] {
        self.slice
    }
}

impl Drop for BufferInner {
    fn drop(&mut self) {
        // SAFETY: the last handle is gone; command lists and bind groups hold clones, so no recorded
        // GPU work can still reference the buffer... except work submitted and never waited for, which
        // is why streams wait for their outstanding tickets before releasing their command lists.
        unsafe { self.device.raw.destroy_buffer(self.raw, None) };
        if let Some(allocation) = self.allocation.lock().take() {
            if let Some(allocator) = self.device.allocator.lock().as_mut() {
                if let Err(err) = allocator.free(allocation) {
                    tracing::warn!(buffer = %self.name, "freeing buffer memory failed: {err}");
                }
            }
        }
    }
}
