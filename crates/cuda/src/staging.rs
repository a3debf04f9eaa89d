//! Page-locked (pinned) host buffers that large uploads pass through. A copy from pageable
//! memory makes the driver wait for the stream's earlier work and copy through its own
//! small bounce buffers while the host blocks, so a streamed batch (38 MB of bytes at 224 px,
//! batch 256) stalled both sides between steps. From a pinned buffer the copy is truly
//! asynchronous: the host hands it to the stream and goes on to launch the step, and the
//! copy engine moves it at full bus speed. Two buffers alternate; each carries an event
//! recorded after the copy that reads it, and is refilled only after that event.

use cudarc::driver::{result, sys};
use std::ffi::c_void;

/// Uploads smaller than this go straight from pageable memory (the pinned detour does not pay).
pub const PINNED_MIN_BYTES: usize = 1 << 20;

/// Buffers in rotation: one being copied from while the next is filled.
const SLOTS: usize = 2;

struct Slot {
    host: *mut c_void,
    capacity: usize,
    /// Recorded after the last copy that read `host`.
    done: sys::CUevent,
}

/// The rotation of pinned buffers of one backend (used behind its mutex).
pub struct Staging {
    slots: Vec<Slot>,
    next: usize,
}

// SAFETY: the raw pointers are owned by this struct and used by one thread at a time (the
// backend keeps it behind a mutex).
unsafe impl Send for Staging {}

impl Staging {
    pub fn new() -> Staging {
        Staging { slots: Vec::new(), next: 0 }
    }

    /// Copies `bytes` to device address `dst` on `stream` through the next pinned buffer;
    /// `tail` zero bytes follow them (the padding of a packed tensor's last slot).
    ///
    /// # Safety
    /// The context must be current on this thread; `dst` must hold `bytes.len() + tail`
    /// bytes on that context's device; `stream` must belong to it.
    pub unsafe fn upload(
        &mut self,
        bytes: &[u8],
        tail: usize,
        dst: sys::CUdeviceptr,
        stream: sys::CUstream,
    ) -> Result<(), result::DriverError> {
        let len = bytes.len() + tail;
        if self.slots.len() < SLOTS {
            let done = result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)?;
            self.slots.push(Slot { host: std::ptr::null_mut(), capacity: 0, done });
        }
        let i = self.next % self.slots.len();
        self.next = (i + 1) % SLOTS;
        let slot = &mut self.slots[i];
        // SAFETY: the event was created above; recorded or never recorded (then it is done).
        unsafe { result::event::synchronize(slot.done)? };
        if slot.capacity < len {
            if !slot.host.is_null() {
                // SAFETY: allocated by malloc_host below, and its last copy has finished.
                unsafe { result::free_host(slot.host)? };
                slot.host = std::ptr::null_mut();
                slot.capacity = 0;
            }
            // round up so that slightly larger batches reuse the buffer
            let capacity = len.next_multiple_of(1 << 20);
            // SAFETY: a plain page-locked allocation in the current context.
            slot.host = unsafe { result::malloc_host(capacity, 0)? };
            slot.capacity = capacity;
        }
        // SAFETY: host holds `capacity` ≥ len bytes that no copy reads any more (the event).
        let staged = unsafe { std::slice::from_raw_parts_mut(slot.host as *mut u8, len) };
        staged[..bytes.len()].copy_from_slice(bytes);
        staged[bytes.len()..].fill(0);
        // SAFETY: dst holds len bytes (the caller); the pinned source stays untouched until
        // `done` has passed, which the next use of this slot waits for.
        unsafe {
            result::memcpy_htod_async(dst, &*staged, stream)?;
            result::event::record(slot.done, stream)?;
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        for s in &self.slots {
            // SAFETY: each event and buffer was created by `upload`; the copies reading the
            // buffer are waited for before it is freed.
            unsafe {
                let _ = result::event::synchronize(s.done);
                if !s.host.is_null() {
                    let _ = result::free_host(s.host);
                }
                let _ = result::event::destroy(s.done);
            }
        }
    }
}
