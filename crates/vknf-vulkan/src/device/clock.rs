//! The device's clock read beside the host's (`VK_KHR_calibrated_timestamps`, or its EXT original), so
//! that GPU timestamps can be placed on the host's timeline: where a batch waits for the driver (a
//! copy that starts long after it was submitted, a completion the host sees late) rather than for the
//! GPU's work.

use std::time::Instant;

use ash::vk;

use super::Device;
use crate::error::VkResultExt;

/// The loaded entry point of whichever extension the device offers.
pub(crate) enum Calibration {
    Khr(ash::khr::calibrated_timestamps::Device),
    Ext(ash::ext::calibrated_timestamps::Device),
}

impl Calibration {
    /// The extension to enable among those `physical` offers (`offered`), KHR first: only where the
    /// device's own clock is among its calibrateable time domains, as reading it requires.
    pub(crate) fn extension(
        entry: &ash::Entry,
        instance: &ash::Instance,
        physical: vk::PhysicalDevice,
        offered: &[vk::ExtensionProperties],
    ) -> Option<&'static std::ffi::CStr> {
        let has = |name: &std::ffi::CStr| offered.iter().any(|e| e.extension_name_as_c_str() == Ok(name));
        let name = [
            ash::khr::calibrated_timestamps::NAME,
            ash::ext::calibrated_timestamps::NAME,
        ]
        .into_iter()
        .find(|name| has(name))?;
        let domains = if name == ash::khr::calibrated_timestamps::NAME {
            let loaded = ash::khr::calibrated_timestamps::Instance::new(entry, instance);
            // SAFETY: `physical` belongs to `instance`, which offers the extension's command through the
            // device extension `physical` reports; the query writes only into the returned vector.
            unsafe { loaded.get_physical_device_calibrateable_time_domains(physical) }
        } else {
            let loaded = ash::ext::calibrated_timestamps::Instance::new(entry, instance);
            // SAFETY: as above, for the EXT original.
            unsafe { loaded.get_physical_device_calibrateable_time_domains(physical) }
        };
        domains.ok()?.contains(&vk::TimeDomainKHR::DEVICE).then_some(name)
    }

    /// Loads the entry point of `extension` (as [`Calibration::extension`] chose and the device enabled).
    pub(crate) fn load(instance: &ash::Instance, device: &ash::Device, extension: &std::ffi::CStr) -> Calibration {
        if extension == ash::khr::calibrated_timestamps::NAME {
            Calibration::Khr(ash::khr::calibrated_timestamps::Device::new(instance, device))
        } else {
            Calibration::Ext(ash::ext::calibrated_timestamps::Device::new(instance, device))
        }
    }
}

/// One reading of the device's clock and the host's at (about) the same moment.
#[derive(Debug, Clone, Copy)]
pub struct ClockReading {
    /// The device's clock in nanoseconds, in the units of [`crate::Timestamps::read_ns`].
    pub device_ns: f64,
    /// The host's clock, read right after the device's.
    pub host: Instant,
    /// How far apart the two readings may be, in nanoseconds (the driver's bound on its own reading,
    /// plus the time until the host's clock was read).
    pub uncertainty_ns: f64,
}

impl ClockReading {
    /// The host moment a device timestamp of `device_ns` stands for.
    pub fn host_moment(&self, device_ns: f64) -> Instant {
        let offset = device_ns - self.device_ns;
        let magnitude = std::time::Duration::from_nanos(offset.abs().min(u64::MAX as f64) as u64);
        match offset >= 0.0 {
            true => self.host + magnitude,
            false => self.host.checked_sub(magnitude).unwrap_or(self.host),
        }
    }
}

impl Device {
    /// Reads the device's clock beside the host's, where the device can (`None` where it offers neither
    /// calibrated-timestamp extension).
    pub fn read_clocks(&self) -> crate::Result<Option<ClockReading>> {
        let shared = &self.shared;
        let Some(calibration) = &shared.calibration else {
            return Ok(None);
        };
        shared.check_lost()?;
        let info = [vk::CalibratedTimestampInfoKHR::default().time_domain(vk::TimeDomainKHR::DEVICE)];
        let before = Instant::now();
        let (stamps, deviation) = match calibration {
            // SAFETY: the extension was enabled on this device (only where the device's clock is a
            // calibrateable time domain, `Calibration::extension`) and its entry point loaded from it;
            // the info array is valid for the call.
            Calibration::Khr(loaded) => unsafe { loaded.get_calibrated_timestamps(&info) },
            // SAFETY: as above, for the EXT original.
            Calibration::Ext(loaded) => unsafe { loaded.get_calibrated_timestamps(&info) },
        }
        .call("vkGetCalibratedTimestamps")?;
        let host = Instant::now();
        let period = shared.info.timestamp_period_ns as f64;
        Ok(Some(ClockReading {
            device_ns: stamps[0] as f64 * period,
            host,
            uncertainty_ns: deviation as f64 + (host - before).as_nanos() as f64,
        }))
    }
}
