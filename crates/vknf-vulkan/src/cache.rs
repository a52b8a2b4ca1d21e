//! The pipeline cache, persisted on disk per device so that pipelines compile once per driver.
//!
//! The file is keyed by the device UUID and the driver version: a new driver or another GPU starts
//! with an empty cache instead of feeding a driver data it did not write. The header is checked
//! before the data is handed to the driver, since drivers trust it.

use std::path::{Path, PathBuf};

use ash::vk;

use crate::adapter::AdapterInfo;
use crate::error::{Result, VkResultExt};

pub(crate) struct PipelineCache {
    pub(crate) raw: vk::PipelineCache,
    path: Option<PathBuf>,
}

/// `$VKNF_CACHE_DIR`, else `$XDG_CACHE_HOME/vknf`, else `~/.cache/vknf`. `VKNF_CACHE_DIR=off` disables it.
fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("VKNF_CACHE_DIR") {
        return (dir != "off").then(|| PathBuf::from(dir));
    }
    if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(xdg).join("vknf"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache").join("vknf"))
}

/// Checks the `VkPipelineCacheHeaderVersionOne` header against this device.
fn header_matches(data: &[u8], info: &AdapterInfo) -> bool {
    if data.len() < 32 {
        return false;
    }
    let word = |i: usize| u32::from_le_bytes(data[i..i + 4].try_into().expect("4 bytes"));
    let uuid: String = data[16..32].iter().map(|b| format!("{b:02x}")).collect();
    word(0) >= 32
        && word(4) == vk::PipelineCacheHeaderVersion::ONE.as_raw() as u32
        && word(8) == info.vendor_id
        && word(12) == info.device_id
        && uuid == info.pipeline_cache_uuid
}

impl PipelineCache {
    pub(crate) fn open(device: &ash::Device, info: &AdapterInfo, dir: Option<&Path>) -> PipelineCache {
        let path = dir
            .map(Path::to_path_buf)
            .or_else(cache_dir)
            .map(|dir| dir.join(format!("pipelines-{}-{:08x}.bin", info.uuid, info.driver_version)));
        let initial = path
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .filter(|data| header_matches(data, info))
            .unwrap_or_default();
        let create = |data: &[u8]| {
            let create_info = vk::PipelineCacheCreateInfo::default().initial_data(data);
            // SAFETY: `data` is either empty or carries a header matching this device.
            unsafe { device.create_pipeline_cache(&create_info, None) }
        };
        let raw = create(&initial)
            .or_else(|_| create(&[]))
            .unwrap_or(vk::PipelineCache::null());
        PipelineCache { raw, path }
    }

    pub(crate) fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub(crate) fn save(&self, device: &ash::Device) -> Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        if self.raw == vk::PipelineCache::null() {
            return Ok(());
        }
        // SAFETY: the cache belongs to this device.
        let data = unsafe { device.get_pipeline_cache_data(self.raw) }.call("vkGetPipelineCacheData")?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // Written beside and renamed, so that a crash never leaves a torn cache file.
        let temporary = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&temporary, &data)?;
        std::fs::rename(&temporary, path)?;
        Ok(())
    }

    /// # Safety
    /// No pipeline creation may be using the cache.
    pub(crate) unsafe fn destroy(&self, device: &ash::Device) {
        if self.raw != vk::PipelineCache::null() {
            // SAFETY: guaranteed by the caller.
            unsafe { device.destroy_pipeline_cache(self.raw, None) };
        }
    }
}
