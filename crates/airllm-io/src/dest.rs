//! Memory the reader writes shards into: the [`Destination`] trait and
//! [`AlignedBuf`], a 4096-aligned heap buffer.

use std::alloc::{self, Layout};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// Alignment O_DIRECT needs for buffers, offsets and lengths (a page; larger
/// than any common logical block size).
pub const DIRECT_ALIGN: usize = 4096;

/// Memory the reader writes a shard into. The facade implements it over a
/// mapped wgpu staging buffer; [`Vec<u8>`], `Box<[u8]>` and [`AlignedBuf`]
/// implement it for tests, tools and benchmarks.
///
/// The reader calls [`as_mut_ptr`](Destination::as_mut_ptr) and
/// [`capacity`](Destination::capacity) exactly once each when it starts a read
/// into the value, then its worker threads write through that pointer until
/// the read completes. It never reads memory it did not write, except to hash
/// the shard's bytes after they were written.
///
/// # Safety
///
/// An implementation promises that:
///
/// 1. `as_mut_ptr()` points to at least `capacity()` bytes that may be written
///    (and, once written, read) from any thread.
/// 2. That memory stays valid, at the same address, for as long as the value
///    lives, **including while the value is moved**: the bytes must not live
///    inside the value itself (use the heap, a mapping, a GPU staging buffer).
///    If the value is leaked, the memory must stay valid forever.
/// 3. Nothing else reads or writes that memory while the reader holds the
///    value: it is lent exclusively, from the moment it is handed to
///    [`Reader::new`](crate::Reader::new) or
///    [`Reader::recycle`](crate::Reader::recycle) until `next()` returns it
///    in a [`Filled`](crate::Filled) (or the reader is dropped).
///
/// Borrowed memory (`&mut [u8]`) deliberately does not implement this trait:
/// a `Reader` can be leaked with `mem::forget`, which would let the borrow end
/// while worker threads still write into it.
pub unsafe trait Destination: Send {
    /// Start of the writable memory.
    fn as_mut_ptr(&mut self) -> *mut u8;
    /// Number of writable bytes at [`as_mut_ptr`](Destination::as_mut_ptr).
    fn capacity(&self) -> usize;
}

// SAFETY: a Vec's heap allocation does not move when the Vec is moved, and
// the reader only writes within `len()` (initialised) bytes. Creating it with
// `vec![0; n]` lends `n` bytes.
unsafe impl Destination for Vec<u8> {
    fn as_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_slice().as_mut_ptr()
    }
    fn capacity(&self) -> usize {
        self.len()
    }
}

// SAFETY: as for Vec<u8>: the boxed slice lives on the heap.
unsafe impl Destination for Box<[u8]> {
    fn as_mut_ptr(&mut self) -> *mut u8 {
        <[u8]>::as_mut_ptr(self)
    }
    fn capacity(&self) -> usize {
        self.len()
    }
}

// SAFETY: AlignedBuf owns a heap allocation of `len` zeroed bytes that never
// moves while the value lives.
unsafe impl Destination for AlignedBuf {
    fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
    fn capacity(&self) -> usize {
        self.len
    }
}

/// Buffers at least this large ask for transparent huge pages.
#[cfg(target_os = "linux")]
const HUGE_PAGE_MIN: usize = 4 << 20;

/// A zero-initialised heap buffer aligned to [`DIRECT_ALIGN`] (4096 bytes),
/// as O_DIRECT reads need. Derefs to `[u8]`.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: AlignedBuf uniquely owns its allocation, like Box<[u8]>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out `&[u8]`.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Allocates `len` zeroed bytes at a 4096-byte boundary.
    ///
    /// # Panics
    ///
    /// If `len` overflows a `Layout`; aborts through
    /// [`std::alloc::handle_alloc_error`] if memory is exhausted, like `Vec`.
    pub fn new(len: usize) -> Self {
        if len == 0 {
            // A dangling but aligned pointer, never dereferenced or freed.
            let ptr = NonNull::new(std::ptr::without_provenance_mut(DIRECT_ALIGN)).unwrap_or(NonNull::dangling());
            return Self { ptr, len };
        }
        let layout = Self::layout(len);
        // SAFETY: layout has a non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else { alloc::handle_alloc_error(layout) };
        #[cfg(target_os = "linux")]
        if len >= HUGE_PAGE_MIN {
            // Ask for transparent huge pages: fewer TLB misses when shards
            // are written into large buffers. Advisory; errors are ignored.
            // SAFETY: the range lies inside our own fresh allocation.
            unsafe { libc::madvise(ptr.as_ptr().cast(), len, libc::MADV_HUGEPAGE) };
        }
        Self { ptr, len }
    }

    fn layout(len: usize) -> Layout {
        match Layout::from_size_align(len, DIRECT_ALIGN) {
            Ok(layout) => layout,
            Err(_) => panic!("AlignedBuf of {len} bytes exceeds the address space"),
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.len != 0 {
            // SAFETY: allocated in `new` with exactly this layout.
            unsafe { alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.len)) };
        }
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `len` initialised (zeroed) bytes owned by self, or a
        // dangling aligned pointer with length 0.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl AsMut<[u8]> for AlignedBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        self
    }
}

impl fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlignedBuf").field("len", &self.len).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_zeroed() {
        for len in [0, 1, 4095, 4096, 1 << 20] {
            let mut b = AlignedBuf::new(len);
            assert_eq!(b.len(), len);
            assert_eq!(b.as_mut_ptr() as usize % DIRECT_ALIGN, 0);
            assert!(b.iter().all(|&x| x == 0));
            b.iter_mut().for_each(|x| *x = 7);
            assert!(b.iter().all(|&x| x == 7));
        }
    }

    #[test]
    fn vec_lends_its_length() {
        let v = vec![0u8; 123];
        assert_eq!(Destination::capacity(&v), 123);
    }
}
