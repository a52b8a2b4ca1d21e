//! `vknf devices`.

use vknf_vulkan::AdapterInfo;

/// Arguments of `vknf devices`.
#[derive(clap::Args)]
pub struct DevicesArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Lists every Vulkan device.
pub fn run(global: &super::Global, args: DevicesArgs) -> anyhow::Result<()> {
    let instance = global.instance()?;
    let adapters = instance.adapters();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&adapters)?);
    } else if adapters.is_empty() {
        println!("no Vulkan 1.2 compute device found");
    } else {
        let chosen = instance
            .select(&vknf_vulkan::DeviceSelector::from_env()?)
            .ok()
            .map(|a| a.index);
        for adapter in &adapters {
            print_adapter(adapter, chosen == Some(adapter.index));
        }
    }
    global.finish(&instance)
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

fn print_adapter(a: &AdapterInfo, chosen: bool) {
    println!("[{}] {}{}", a.index, a.name, if chosen { "  (default)" } else { "" });
    println!(
        "    type: {:?}, vendor {:#06x}, device {:#06x}",
        a.device_type, a.vendor_id, a.device_id
    );
    println!(
        "    driver: {} ({}), Vulkan {}",
        a.driver_name, a.driver_info, a.api_version
    );
    println!("    uuid: {}", a.uuid);
    println!(
        "    subgroup: {} lanes, ops: {}",
        a.subgroup_size,
        a.subgroup_operations.join(" ")
    );
    println!(
        "    compute: shared memory {} KiB, workgroup <= {} invocations {:?}",
        a.max_shared_memory / 1024,
        a.max_workgroup_invocations,
        a.max_workgroup_size,
    );
    println!(
        "    multiprocessors: {}",
        a.compute_units.map_or("not reported".to_string(), |units| format!(
            "{} of {} invocations at once",
            units.count, units.invocations_each
        )),
    );
    println!(
        "    pipeline statistics: {}",
        match a.pipeline_statistics {
            true => "listed by the driver (kept with VKNF_PIPELINE_STATISTICS=1)",
            false => "not listed",
        }
    );
    println!("    queue families:");
    for family in &a.queue_families {
        let flags: Vec<&str> = [
            (family.graphics, "graphics"),
            (family.compute, "compute"),
            (family.transfer, "transfer"),
            (family.sparse_binding, "sparse"),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| name)
        .collect();
        println!(
            "      [{}] {} queue(s): {}",
            family.index,
            family.count,
            flags.join(", ")
        );
    }
    println!("    memory heaps:");
    for (index, heap) in a.memory_heaps.iter().enumerate() {
        let types: Vec<String> = heap.memory_types.iter().map(|t| format!("[{}]", t.join(" "))).collect();
        println!(
            "      [{index}] {}{}: {}",
            gib(heap.size),
            if heap.device_local { " device-local" } else { "" },
            types.join(" ")
        );
    }
}
