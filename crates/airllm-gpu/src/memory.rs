//! How much device memory an adapter has. wgpu does not report it, so on Vulkan
//! we ask the driver through wgpu-hal (the largest DEVICE_LOCAL heap); other
//! backends report `None` and the engine then needs `--max-vram` to stream.

/// Bytes of the adapter's largest device-local memory heap, when known.
pub fn device_memory_bytes(adapter: &wgpu::Adapter) -> Option<u64> {
    #[cfg(any(target_os = "linux", target_os = "windows", target_os = "android", target_os = "freebsd"))]
    {
        if adapter.get_info().backend == wgpu::Backend::Vulkan {
            // SAFETY: we only read the physical device's memory properties through the
            // live instance; nothing is created, destroyed or retained past this call.
            let hal = unsafe { adapter.as_hal::<wgpu::hal::api::Vulkan>() }?;
            let instance = hal.shared_instance().raw_instance();
            // SAFETY: the physical device belongs to this instance, which outlives the call.
            let props = unsafe { instance.get_physical_device_memory_properties(hal.raw_physical_device()) };
            let n = (props.memory_heap_count as usize).min(props.memory_heaps.len());
            return props.memory_heaps[..n]
                .iter()
                .filter(|h| h.flags.contains(ash::vk::MemoryHeapFlags::DEVICE_LOCAL))
                .map(|h| h.size)
                .max();
        }
    }
    let _ = adapter;
    None
}
