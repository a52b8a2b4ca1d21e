//! The Vulkan instance: loads the Vulkan library at run time, optionally enables the Khronos validation
//! layer (collecting every error it reports), and describes the physical devices.

use std::ffi::{CStr, CString, c_void};
use std::sync::Arc;

use ash::vk;
use parking_lot::Mutex;

use crate::adapter::{AdapterInfo, DeviceSelector};
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
    /// Devices keep what their driver reports about each compiled pipeline (registers a thread, and
    /// whatever else it offers: [`Pipeline::statistics`](crate::Pipeline::statistics), through
    /// `VK_KHR_pipeline_executable_properties`) where the driver offers it: for work on kernels, since
    /// a driver may compile more slowly or cache less while it keeps them. Default: on when
    /// `$VKNF_PIPELINE_STATISTICS` is set (other than `0`).
    pub pipeline_statistics: bool,
}

impl Default for InstanceOptions {
    fn default() -> Self {
        InstanceOptions {
            validation: std::env::var_os("VKNF_VALIDATE").is_some_and(|v| v != "0"),
            application_name: "vknf".to_string(),
            pipeline_cache_dir: None,
            pipeline_statistics: std::env::var_os("VKNF_PIPELINE_STATISTICS").is_some_and(|v| v != "0"),
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
    // The loaded library the instance's function pointers live in; devices load instance-level extension
    // commands through it (calibrated timestamps).
    pub(crate) entry: ash::Entry,
    pub(crate) raw: ash::Instance,
    debug: Option<(ash::ext::debug_utils::Instance, vk::DebugUtilsMessengerEXT)>,
    // Boxed so that its address, handed to the driver as callback user data, never moves.
    log: Box<ValidationLog>,
    pub(crate) pipeline_cache_dir: Option<std::path::PathBuf>,
    pub(crate) pipeline_statistics: bool,
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
            entry,
            raw,
            debug,
            log,
            pipeline_cache_dir: options.pipeline_cache_dir.clone(),
            pipeline_statistics: options.pipeline_statistics,
            adapters: Vec::new(),
        };
        shared.adapters = crate::adapter::enumerate(&shared.raw)?;
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
