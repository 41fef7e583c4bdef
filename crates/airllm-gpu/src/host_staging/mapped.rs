//! [`MappedPtr`]: the address and length of mapped staging memory, handed to
//! the threads that fill it (io workers). Writing through it is `unsafe`: the
//! owner (a [`Staging`](super::Staging)) keeps the mapping alive and each thread
//! writes its own range.

use std::ptr::NonNull;

use crate::error::{GpuError, Result};

/// Mapped staging bytes, to hand to filling threads.
#[derive(Clone, Copy, Debug)]
pub struct MappedPtr {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a MappedPtr is only an address and a length; writing through it is
// `unsafe` and the caller promises the mapping is alive and ranges disjoint.
unsafe impl Send for MappedPtr {}
// SAFETY: as above; shared copies only hand out the raw pointer.
unsafe impl Sync for MappedPtr {}

impl MappedPtr {
    /// # Safety
    /// `ptr` must address `len` bytes that stay writable for as long as the
    /// owner says (until its unmap or release).
    pub(crate) unsafe fn from_raw(ptr: NonNull<u8>, len: usize) -> Self {
        MappedPtr { ptr, len }
    }

    /// Start of the mapped range.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is mapped.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies `src` to byte `offset`.
    ///
    /// # Safety
    /// The staging buffer must still be mapped (no `unmap` since this pointer
    /// was taken), and no other thread may write the same bytes concurrently.
    pub unsafe fn write(&self, offset: usize, src: &[u8]) -> Result<()> {
        if offset.checked_add(src.len()).is_none_or(|e| e > self.len) {
            return Err(GpuError::arg(
                "MappedPtr::write",
                "offset",
                format!("{offset}+{} exceeds the {} mapped bytes", src.len(), self.len),
            ));
        }
        // SAFETY: in bounds (checked above); mapping alive and range
        // exclusive per the caller's contract; src cannot overlap GPU-mapped memory.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.as_ptr().add(offset), src.len()) };
        Ok(())
    }
}
