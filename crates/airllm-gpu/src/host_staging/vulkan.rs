//! The Vulkan side of host staging, through wgpu-hal: opening a device with
//! `VK_EXT_external_memory_host`, importing page-aligned host memory (or
//! allocating host-visible memory) into a `VkBuffer`, and handing that buffer
//! to wgpu with a drop guard that frees it once wgpu (and the GPU) are done.

use std::alloc::Layout;
use std::ptr::NonNull;

use ash::vk;
use wgpu::hal::api::Vulkan;

use super::HostMemory;
use crate::device::GpuContext;
use crate::error::{GpuError, Result};

const EXT: &std::ffi::CStr = ash::ext::external_memory_host::NAME;
const HANDLE: vk::ExternalMemoryHandleTypeFlags = vk::ExternalMemoryHandleTypeFlags::HOST_ALLOCATION_EXT;

fn err(op: &'static str, reason: impl Into<String>) -> GpuError {
    GpuError::HostStaging { op, reason: reason.into() }
}

pub(crate) fn adapter_supports_host_import(adapter: &wgpu::Adapter) -> bool {
    if adapter.get_info().backend != wgpu::Backend::Vulkan {
        return false;
    }
    // SAFETY: only reads the adapter's cached physical-device properties.
    let Some(hal) = (unsafe { adapter.as_hal::<Vulkan>() }) else { return false };
    let caps = hal.physical_device_capabilities();
    // VK_EXT_external_memory_host builds on VK_KHR_external_memory (core in 1.1).
    caps.supports_extension(EXT)
        && caps.properties().api_version >= vk::API_VERSION_1_1
        && hal.shared_instance().instance_api_version() >= vk::API_VERSION_1_1
}

/// Opens `adapter` as wgpu would for `desc`, with `VK_EXT_external_memory_host`
/// added to the device extensions.
pub(crate) fn request_device_with_host_import(
    adapter: &wgpu::Adapter,
    desc: &wgpu::DeviceDescriptor<'_>,
) -> Result<(wgpu::Device, wgpu::Queue)> {
    let name = adapter.get_info().name;
    let open = {
        // SAFETY: the hal adapter is used only to open a device, while `adapter` lives.
        let hal = unsafe { adapter.as_hal::<Vulkan>() }
            .ok_or_else(|| err("opening the device", format!("{name:?} is not a Vulkan adapter")))?;
        let add_ext: Box<wgpu::hal::vulkan::CreateDeviceCallback<'_>> =
            Box::new(|args: wgpu::hal::vulkan::CreateDeviceCallbackArgs<'_, '_, '_>| {
                if !args.extensions.contains(&EXT) {
                    args.extensions.push(EXT);
                }
            });
        // SAFETY: features and limits are the adapter's own (already
        // intersected with what it offers, as wgpu's request_device checks);
        // the callback only adds an extension the adapter reports.
        unsafe {
            hal.open_with_callback(desc.required_features, &desc.required_limits, &desc.memory_hints, Some(add_ext))
        }
        .map_err(|e| err("opening the device with VK_EXT_external_memory_host", format!("{name:?}: {e}")))?
    };
    // SAFETY: `open` was created from this adapter's hal adapter with `desc`'s
    // features and limits.
    unsafe { adapter.create_device_from_hal::<Vulkan>(open, desc) }
        .map_err(|source| GpuError::RequestDevice { adapter: name, source })
}

/// The alignment an imported host pointer and its size must have.
pub(crate) fn import_alignment(adapter: &wgpu::Adapter) -> Option<u64> {
    // SAFETY: only queries physical-device properties through the live instance.
    let hal = unsafe { adapter.as_hal::<Vulkan>() }?;
    let instance = hal.shared_instance().raw_instance();
    let mut host = vk::PhysicalDeviceExternalMemoryHostPropertiesEXT::default();
    let mut props = vk::PhysicalDeviceProperties2::default().push_next(&mut host);
    // SAFETY: Vulkan 1.1 instance (checked by adapter_supports_host_import by
    // every caller), valid physical device, well-formed pNext chain.
    unsafe { instance.get_physical_device_properties2(hal.raw_physical_device(), &mut props) };
    Some(host.min_imported_host_pointer_alignment.max(1))
}

/// Frees, in order, whatever of a host buffer was created; runs from wgpu's
/// drop guard or on a failed creation.
struct Parts {
    device: ash::Device,
    buffer: vk::Buffer,
    memory: vk::DeviceMemory,
    mapped: bool,
    /// The heap allocation (address, layout) of an imported buffer.
    host: Option<(usize, Layout)>,
}

impl Parts {
    fn free(self) {
        // SAFETY: each handle was created on `device` by `create_host_buffer`,
        // is no longer used by the GPU (wgpu runs the guard after the last
        // submission using the buffer finished; a failed creation never
        // submitted it) and is freed once, buffer before memory before the
        // host pages the memory imported.
        unsafe {
            if self.buffer != vk::Buffer::null() {
                self.device.destroy_buffer(self.buffer, None);
            }
            if self.memory != vk::DeviceMemory::null() {
                if self.mapped {
                    self.device.unmap_memory(self.memory);
                }
                self.device.free_memory(self.memory, None);
            }
            if let Some((addr, layout)) = self.host {
                std::alloc::dealloc(addr as *mut u8, layout);
            }
        }
    }
}

/// Creates a COPY_SRC wgpu buffer over host RAM: imported heap memory
/// (`import`) or a persistently mapped host-visible allocation.
pub(crate) fn create_host_buffer(
    ctx: &GpuContext,
    label: &str,
    size: u64,
    import: bool,
) -> Result<(wgpu::Buffer, HostMemory)> {
    let op = if import { "importing host memory" } else { "allocating host-visible memory" };
    let (parts, host) = {
        // SAFETY: the hal device is used only to create objects on it, while `ctx` lives.
        let hal = unsafe { ctx.device().as_hal::<Vulkan>() }.ok_or_else(|| err(op, "not a Vulkan device"))?;
        let device = hal.raw_device().clone();
        let instance = hal.shared_instance().raw_instance();
        let phys = hal.raw_physical_device();
        let mut parts =
            Parts { device, buffer: vk::Buffer::null(), memory: vk::DeviceMemory::null(), mapped: false, host: None };
        match build(&mut parts, instance, phys, ctx, size, import) {
            Ok(host) => (parts, host),
            Err(e) => {
                parts.free();
                return Err(err(op, format!("{label}: {e}")));
            }
        }
    };
    let buffer = parts.buffer;
    let len = host.len as u64;
    let guard: wgpu::hal::DropCallback = Box::new(move || parts.free());
    // SAFETY: `buffer` is a live VkBuffer with its memory bound, owned by the
    // guard (wgpu-hal neither destroys it nor maps it); the guard runs when
    // wgpu drops the buffer, after the GPU's last use.
    let hal_buffer = unsafe { wgpu::hal::vulkan::Buffer::from_raw_externally_owned(buffer, guard) };
    // SAFETY: created on this device with TRANSFER_SRC | TRANSFER_DST usage and `len` bytes bound.
    let buffer = unsafe {
        ctx.device().create_buffer_from_hal::<Vulkan>(
            hal_buffer,
            &wgpu::BufferDescriptor {
                label: Some(label),
                size: len,
                usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            },
        )
    };
    Ok((buffer, host))
}

fn build(
    parts: &mut Parts,
    instance: &ash::Instance,
    phys: vk::PhysicalDevice,
    ctx: &GpuContext,
    size: u64,
    import: bool,
) -> std::result::Result<HostMemory, String> {
    let vkerr = |what: &'static str| move |e: vk::Result| format!("{what}: {e}");
    let align = if import { ctx.caps().host_import_align.max(4096) } else { 4 };
    let len = size.div_ceil(align) * align;
    let len_usize = usize::try_from(len).map_err(|_| format!("{len} bytes do not fit this address space"))?;

    // 1. the host pages, for an import
    let mut host_ptr = std::ptr::null_mut::<u8>();
    if import {
        let layout = Layout::from_size_align(len_usize, align as usize)
            .map_err(|e| format!("layout of {len} bytes aligned to {align}: {e}"))?;
        // SAFETY: non-zero size (len >= align >= 4096).
        host_ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if host_ptr.is_null() {
            return Err(format!("out of host memory allocating {len} bytes"));
        }
        parts.host = Some((host_ptr as usize, layout));
    }

    // 2. the buffer
    let usage = vk::BufferUsageFlags::TRANSFER_SRC | vk::BufferUsageFlags::TRANSFER_DST;
    let mut external = vk::ExternalMemoryBufferCreateInfo::default().handle_types(HANDLE);
    let mut info = vk::BufferCreateInfo::default().size(len).usage(usage).sharing_mode(vk::SharingMode::EXCLUSIVE);
    if import {
        info = info.push_next(&mut external);
    }
    // SAFETY: valid device and create info.
    parts.buffer = unsafe { parts.device.create_buffer(&info, None) }.map_err(vkerr("vkCreateBuffer"))?;
    // SAFETY: the buffer was just created on this device.
    let reqs = unsafe { parts.device.get_buffer_memory_requirements(parts.buffer) };

    // 3. a memory type
    // SAFETY: valid physical device of this instance.
    let mem = unsafe { instance.get_physical_device_memory_properties(phys) };
    let mut allowed = reqs.memory_type_bits;
    if import {
        let ext = ash::ext::external_memory_host::Device::new(instance, &parts.device);
        let mut props = vk::MemoryHostPointerPropertiesEXT::default();
        // SAFETY: the extension is enabled on this device (caps.host_import),
        // host_ptr is a live allocation aligned to minImportedHostPointerAlignment.
        let r = unsafe {
            (ext.fp().get_memory_host_pointer_properties_ext)(
                parts.device.handle(),
                HANDLE,
                host_ptr.cast_const().cast(),
                &mut props,
            )
        };
        if r != vk::Result::SUCCESS {
            return Err(format!("vkGetMemoryHostPointerPropertiesEXT: {r}"));
        }
        allowed &= props.memory_type_bits;
        if reqs.size > len {
            return Err(format!("the buffer needs {} bytes, more than the {len} imported", reqs.size));
        }
    }
    let wanted = vk::MemoryPropertyFlags::HOST_VISIBLE | vk::MemoryPropertyFlags::HOST_COHERENT;
    let n = (mem.memory_type_count as usize).min(mem.memory_types.len());
    let type_index = (0..n)
        .filter(|&i| allowed & (1 << i) != 0 && mem.memory_types[i].property_flags.contains(wanted))
        // host RAM first (a heap that is not device-local), then cached memory
        .min_by_key(|&i| {
            let t = mem.memory_types[i];
            let heap_local = mem.memory_heaps[t.heap_index as usize].flags.contains(vk::MemoryHeapFlags::DEVICE_LOCAL);
            (heap_local, !t.property_flags.contains(vk::MemoryPropertyFlags::HOST_CACHED))
        })
        .ok_or_else(|| format!("no host-visible, host-coherent memory type among {allowed:#b}"))?;

    // 4. the memory, bound (and mapped, when allocated)
    let mut import_info =
        vk::ImportMemoryHostPointerInfoEXT::default().handle_type(HANDLE).host_pointer(host_ptr.cast());
    let mut alloc = vk::MemoryAllocateInfo::default()
        .allocation_size(if import { len } else { reqs.size })
        .memory_type_index(type_index as u32);
    if import {
        alloc = alloc.push_next(&mut import_info);
    }
    // SAFETY: valid allocate info; for an import, the host range stays
    // allocated until after vkFreeMemory (Parts::free order).
    parts.memory = unsafe { parts.device.allocate_memory(&alloc, None) }.map_err(vkerr("vkAllocateMemory"))?;
    // SAFETY: buffer and memory on this device, memory large enough (checked above / sized by reqs).
    unsafe { parts.device.bind_buffer_memory(parts.buffer, parts.memory, 0) }.map_err(vkerr("vkBindBufferMemory"))?;
    let ptr = if import {
        host_ptr
    } else {
        // SAFETY: host-visible memory, mapped once for its whole lifetime.
        let p = unsafe { parts.device.map_memory(parts.memory, 0, vk::WHOLE_SIZE, vk::MemoryMapFlags::empty()) }
            .map_err(vkerr("vkMapMemory"))?;
        parts.mapped = true;
        p.cast::<u8>()
    };
    let ptr = NonNull::new(ptr).ok_or("null host pointer")?;
    Ok(HostMemory { ptr, len: len_usize })
}
