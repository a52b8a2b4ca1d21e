//! The Vulkan instance: loads the Vulkan library at run time, optionally enables the Khronos validation
//! layer (collecting every error it reports), and describes the physical devices.

use std::ffi::{CStr, CString, c_void};
use std::sync::Arc;

use ash::vk;
use parking_lot::Mutex;
use serde::Serialize;

use crate::error::{Error, Result, VkResultExt};

const VALIDATION_LAYER: &CStr = c"VK_LAYER_KHRONOS_validation";

/// How the instance is created.
#[derive(Debug, Clone)]
pub struct InstanceOptions {
    /// Enable the Khronos validation layer; every error it reports is recorded (see
    /// [`Instance::take_validation_errors`]). Creation fails if the layer is not installed.
    pub validation: bool,
    /// Application name reported to drivers.
    pub application_name: String,
    /// Where devices keep their pipeline caches. `None`: `$VKNF_CACHE_DIR` (`off` disables caching),
    /// else `$XDG_CACHE_HOME/vknf`, else `~/.cache/vknf`.
    pub pipeline_cache_dir: Option<std::path::PathBuf>,
}

impl Default for InstanceOptions {
    fn default() -> Self {
        InstanceOptions {
            validation: std::env::var_os("VKNF_VALIDATE").is_some_and(|v| v != "0"),
            application_name: "vknf".to_string(),
            pipeline_cache_dir: None,
        }
    }
}

/// Errors and warnings the validation layer reported, shared with its callback.
#[derive(Default)]
struct ValidationLog {
    errors: Mutex<Vec<String>>,
}

/// A loaded Vulkan instance. Cheap to clone; devices keep it alive.
#[derive(Clone)]
pub struct Instance {
    pub(crate) shared: Arc<InstanceShared>,
}

pub(crate) struct InstanceShared {
    // Never read, but the instance's function pointers live in this loaded library.
    _entry: ash::Entry,
    pub(crate) raw: ash::Instance,
    debug: Option<(ash::ext::debug_utils::Instance, vk::DebugUtilsMessengerEXT)>,
    // Boxed so that its address, handed to the driver as callback user data, never moves.
    log: Box<ValidationLog>,
    pub(crate) pipeline_cache_dir: Option<std::path::PathBuf>,
    adapters: Vec<(vk::PhysicalDevice, AdapterInfo)>,
}

impl Instance {
    /// Loads the Vulkan library and creates an instance.
    pub fn new(options: &InstanceOptions) -> Result<Instance> {
        // SAFETY: loading the system Vulkan loader runs its initialisers; this is the documented way
        // to use a loader found at run time.
        let entry = unsafe { ash::Entry::load() }.map_err(|err| Error::LoaderMissing(err.to_string()))?;
        let app_name = CString::new(options.application_name.replace('\0', "")).unwrap_or_default();
        let app_info = vk::ApplicationInfo::default()
            .application_name(&app_name)
            .engine_name(c"vknf")
            .api_version(vk::API_VERSION_1_2);

        // SAFETY: `entry` is a loaded Vulkan entry; enumerate calls take no pointers of ours.
        let available_layers =
            unsafe { entry.enumerate_instance_layer_properties() }.call("vkEnumerateInstanceLayerProperties")?;
        // SAFETY: as above.
        let available_extensions = unsafe { entry.enumerate_instance_extension_properties(None) }
            .call("vkEnumerateInstanceExtensionProperties")?;
        let has_extension = |name: &CStr| {
            available_extensions
                .iter()
                .any(|ext| ext.extension_name_as_c_str().is_ok_and(|n| n == name))
        };

        let mut layers = Vec::new();
        let mut extensions = Vec::new();
        if options.validation {
            let present = available_layers
                .iter()
                .any(|layer| layer.layer_name_as_c_str().is_ok_and(|n| n == VALIDATION_LAYER));
            if !present {
                return Err(Error::Unsupported {
                    device: "instance".into(),
                    reason: "validation was requested but VK_LAYER_KHRONOS_validation is not installed \
                             (Debian: `apt-get install vulkan-validationlayers`)"
                        .into(),
                });
            }
            layers.push(VALIDATION_LAYER.as_ptr());
            extensions.push(ash::ext::debug_utils::NAME.as_ptr());
        }
        let mut flags = vk::InstanceCreateFlags::empty();
        // MoltenVK only shows its devices to applications that accept portability drivers.
        if has_extension(ash::khr::portability_enumeration::NAME) {
            extensions.push(ash::khr::portability_enumeration::NAME.as_ptr());
            flags |= vk::InstanceCreateFlags::ENUMERATE_PORTABILITY_KHR;
        }

        let log = Box::<ValidationLog>::default();
        let mut messenger_info = vk::DebugUtilsMessengerCreateInfoEXT::default()
            .message_severity(
                vk::DebugUtilsMessageSeverityFlagsEXT::ERROR | vk::DebugUtilsMessageSeverityFlagsEXT::WARNING,
            )
            .message_type(
                vk::DebugUtilsMessageTypeFlagsEXT::VALIDATION
                    | vk::DebugUtilsMessageTypeFlagsEXT::GENERAL
                    | vk::DebugUtilsMessageTypeFlagsEXT::PERFORMANCE,
            )
            .pfn_user_callback(Some(debug_callback))
            .user_data(&*log as *const ValidationLog as *mut c_void);

        let mut create_info = vk::InstanceCreateInfo::default()
            .application_info(&app_info)
            .enabled_layer_names(&layers)
            .enabled_extension_names(&extensions)
            .flags(flags);
        if options.validation {
            // Chained so that instance creation and destruction are validated too.
            create_info = create_info.push_next(&mut messenger_info);
        }
        // SAFETY: every pointer in `create_info` refers to locals that outlive the call.
        let raw = unsafe { entry.create_instance(&create_info, None) }.call("vkCreateInstance")?;

        let debug = if options.validation {
            let loader = ash::ext::debug_utils::Instance::new(&entry, &raw);
            // SAFETY: `messenger_info` points at `log`, which the instance owns and frees after the
            // messenger is destroyed (see Drop).
            let messenger = unsafe { loader.create_debug_utils_messenger(&messenger_info, None) }
                .call("vkCreateDebugUtilsMessengerEXT")?;
            Some((loader, messenger))
        } else {
            None
        };

        let mut shared = InstanceShared {
            _entry: entry,
            raw,
            debug,
            log,
            pipeline_cache_dir: options.pipeline_cache_dir.clone(),
            adapters: Vec::new(),
        };
        shared.adapters = crate::adapter::enumerate(&shared)?;
        Ok(Instance {
            shared: Arc::new(shared),
        })
    }

    /// Every physical device that supports Vulkan 1.2 compute, in the driver's order.
    pub fn adapters(&self) -> Vec<AdapterInfo> {
        self.shared.adapters.iter().map(|(_, info)| info.clone()).collect()
    }

    /// Chooses a device by selector (see [`DeviceSelector`]).
    pub fn select(&self, selector: &DeviceSelector) -> Result<AdapterInfo> {
        crate::adapter::select(&self.adapters(), selector)
    }

    pub(crate) fn physical_device(&self, index: usize) -> Option<vk::PhysicalDevice> {
        self.shared.adapters.get(index).map(|(pd, _)| *pd)
    }

    /// True when the validation layer is enabled.
    pub fn validation_enabled(&self) -> bool {
        self.shared.debug.is_some()
    }

    /// Returns, and clears, the errors the validation layer reported so far.
    pub fn take_validation_errors(&self) -> Vec<String> {
        std::mem::take(&mut *self.shared.log.errors.lock())
    }

    /// Fails with [`Error::Validation`] if the validation layer reported any error so far.
    pub fn check_validation(&self) -> Result<()> {
        let errors = self.take_validation_errors();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Validation(errors))
        }
    }
}

impl Drop for InstanceShared {
    fn drop(&mut self) {
        // SAFETY: every device holds an `Arc<InstanceShared>`, so none is alive any more; the messenger
        // was created from this instance.
        unsafe {
            if let Some((loader, messenger)) = self.debug.take() {
                loader.destroy_debug_utils_messenger(messenger, None);
            }
            self.raw.destroy_instance(None);
        }
    }
}

unsafe extern "system" fn debug_callback(
    severity: vk::DebugUtilsMessageSeverityFlagsEXT,
    _kind: vk::DebugUtilsMessageTypeFlagsEXT,
    data: *const vk::DebugUtilsMessengerCallbackDataEXT<'_>,
    user_data: *mut c_void,
) -> vk::Bool32 {
    // SAFETY: the driver passes valid callback data for the duration of the call (or null).
    let message = unsafe { data.as_ref() }
        .and_then(|data| unsafe { data.message_as_c_str() })
        .map(|m| m.to_string_lossy().into_owned())
        .unwrap_or_default();
    if severity.contains(vk::DebugUtilsMessageSeverityFlagsEXT::ERROR) {
        tracing::error!(target: "vulkan", "{message}");
        // SAFETY: `user_data` is the `ValidationLog` boxed inside the live instance.
        if let Some(log) = unsafe { (user_data as *const ValidationLog).as_ref() } {
            log.errors.lock().push(message);
        }
    } else {
        tracing::warn!(target: "vulkan", "{message}");
    }
    vk::FALSE
}

/// How to pick a device: by policy or explicitly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSelector {
    /// Prefer a discrete GPU, then integrated, virtual, and finally CPU devices (such as lavapipe).
    Auto,
    /// The n-th device in the driver's order (as `vknf devices` numbers them).
    Index(usize),
    /// The device whose UUID matches.
    Uuid([u8; 16]),
    /// The first device whose name contains this text (case-insensitive).
    Name(String),
}

impl DeviceSelector {
    /// Reads `VKNF_DEVICE`, falling back to [`DeviceSelector::Auto`].
    pub fn from_env() -> Result<DeviceSelector> {
        match std::env::var("VKNF_DEVICE") {
            Ok(value) if !value.trim().is_empty() => value.parse(),
            _ => Ok(DeviceSelector::Auto),
        }
    }
}

impl std::str::FromStr for DeviceSelector {
    type Err = Error;

    /// `auto`, an index (`0`), a UUID (32 hex digits, dashes allowed), or part of a name.
    fn from_str(text: &str) -> Result<Self> {
        let text = text.trim();
        if text.is_empty() {
            return Err(Error::BadSelector(text.to_string()));
        }
        if text.eq_ignore_ascii_case("auto") {
            return Ok(DeviceSelector::Auto);
        }
        if let Ok(index) = text.parse::<usize>() {
            return Ok(DeviceSelector::Index(index));
        }
        let hex: String = text.chars().filter(|c| *c != '-').collect();
        if hex.len() == 32 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
            let mut uuid = [0u8; 16];
            for (i, byte) in uuid.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| Error::BadSelector(text.into()))?;
            }
            return Ok(DeviceSelector::Uuid(uuid));
        }
        Ok(DeviceSelector::Name(text.to_string()))
    }
}

/// The kind of a physical device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceType {
    /// A discrete GPU.
    DiscreteGpu,
    /// A GPU sharing memory with the host.
    IntegratedGpu,
    /// A virtualised GPU.
    VirtualGpu,
    /// A CPU implementation such as lavapipe.
    Cpu,
    /// Anything else.
    Other,
}

impl DeviceType {
    /// Preference order of [`DeviceSelector::Auto`]: lower is better.
    pub(crate) fn rank(self) -> u8 {
        match self {
            DeviceType::DiscreteGpu => 0,
            DeviceType::IntegratedGpu => 1,
            DeviceType::VirtualGpu => 2,
            DeviceType::Other => 3,
            DeviceType::Cpu => 4,
        }
    }
}

/// One queue family.
#[derive(Debug, Clone, Serialize)]
pub struct QueueFamilyInfo {
    /// Family index.
    pub index: u32,
    /// Number of queues.
    pub count: u32,
    /// Supports graphics.
    pub graphics: bool,
    /// Supports compute.
    pub compute: bool,
    /// Supports transfer.
    pub transfer: bool,
    /// Supports sparse binding.
    pub sparse_binding: bool,
    /// Bits of valid timestamps (0: none).
    pub timestamp_valid_bits: u32,
}

/// One memory heap.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryHeapInfo {
    /// Heap size in bytes.
    pub size: u64,
    /// Device-local heap.
    pub device_local: bool,
    /// Property flags of the memory types in this heap, e.g. `["device-local", "host-visible"]`.
    pub memory_types: Vec<Vec<&'static str>>,
}

/// Everything known about a physical device, as `vknf devices` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct AdapterInfo {
    /// Position in the driver's order.
    pub index: usize,
    /// Device name.
    pub name: String,
    /// Device type.
    pub device_type: DeviceType,
    /// PCI vendor id.
    pub vendor_id: u32,
    /// PCI device id.
    pub device_id: u32,
    /// Driver name (e.g. `llvmpipe`, `NVIDIA`).
    pub driver_name: String,
    /// Driver version text (e.g. `Mesa 22.3.6`).
    pub driver_info: String,
    /// Raw driver version number (vendor-specific encoding).
    pub driver_version: u32,
    /// Highest Vulkan version the device supports, e.g. `1.3.230`.
    pub api_version: String,
    /// Device UUID as 32 hex digits.
    pub uuid: String,
    /// Pipeline-cache UUID as 32 hex digits.
    pub pipeline_cache_uuid: String,
    /// Default subgroup size.
    pub subgroup_size: u32,
    /// Subgroup operations supported in compute shaders (e.g. `basic`, `arithmetic`).
    pub subgroup_operations: Vec<&'static str>,
    /// Largest shared memory per workgroup, bytes.
    pub max_shared_memory: u32,
    /// Largest workgroup, invocations.
    pub max_workgroup_invocations: u32,
    /// Largest workgroup size per axis.
    pub max_workgroup_size: [u32; 3],
    /// Largest dispatch per axis.
    pub max_workgroup_count: [u32; 3],
    /// Largest storage buffer binding, bytes.
    pub max_storage_buffer_range: u32,
    /// Largest push-constant block, bytes.
    pub max_push_constants_size: u32,
    /// Queue families.
    pub queue_families: Vec<QueueFamilyInfo>,
    /// Memory heaps.
    pub memory_heaps: Vec<MemoryHeapInfo>,
    /// Supports importing host memory (`VK_EXT_external_memory_host`).
    pub external_memory_host: bool,
    /// Nanoseconds per timestamp tick.
    pub timestamp_period_ns: f32,
}

impl AdapterInfo {
    /// UUID as bytes.
    pub fn uuid_bytes(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&self.uuid[2 * i..2 * i + 2], 16).unwrap_or(0);
        }
        out
    }

    /// A family with compute and no graphics if one exists, else any compute family.
    pub fn compute_family(&self) -> Option<&QueueFamilyInfo> {
        self.queue_families
            .iter()
            .find(|f| f.compute && !f.graphics && f.count > 0)
            .or_else(|| self.queue_families.iter().find(|f| f.compute && f.count > 0))
    }

    /// A transfer-only family (no compute, no graphics) if one exists.
    pub fn transfer_family(&self) -> Option<&QueueFamilyInfo> {
        self.queue_families
            .iter()
            .find(|f| f.transfer && !f.compute && !f.graphics && f.count > 0)
    }
}
