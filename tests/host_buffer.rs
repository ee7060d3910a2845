//! `HostBuffer`: aligned host storage. Sizes that cannot be allocated are typed errors from the `try_`
//! constructors, and the value semantics (clone, equality, debug) are those of the aligned slice.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use gated_sdpa::tensor::HOST_BUFFER_ALIGN;
use gated_sdpa::{GsdpaError, HostBuffer};
use half::bf16;

/// The system allocator returns 16-byte aligned blocks for everything, which would let a buffer that
/// ignores its alignment duty pass. This one hands out, for alignments below 16, addresses that are
/// only as aligned as asked and vary from one allocation to the next: the worst case the
/// buffer's slack must absorb, and a clone that copied its original's start offset would land wrong.
struct MisaligningAllocator;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

/// Bytes in front of the returned block: 16 plus a varying multiple of the requested alignment.
/// The byte just before the block records it so that `dealloc` can find the system block again.
const FRONT: usize = 16;

unsafe impl GlobalAlloc for MisaligningAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() >= 16 {
            // SAFETY: forwarded unchanged.
            return unsafe { System.alloc(layout) };
        }
        let Ok(inner) = Layout::from_size_align(layout.size() + 2 * FRONT, 16) else {
            return std::ptr::null_mut();
        };
        // SAFETY: `inner` has a non-zero size.
        let base = unsafe { System.alloc(inner) };
        if base.is_null() {
            return base;
        }
        let steps = 16 / layout.align();
        let offset = FRONT + layout.align() * (ALLOCATIONS.fetch_add(1, Ordering::Relaxed) % steps);
        // SAFETY: offset < 2 * FRONT, so the block and the byte before it lie inside `inner`.
        unsafe {
            let block = base.add(offset);
            *block.sub(1) = offset as u8;
            block
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.align() >= 16 {
            // SAFETY: allocated by `System.alloc(layout)` above.
            return unsafe { System.dealloc(ptr, layout) };
        }
        // SAFETY: `alloc` stored the offset in the byte before the block and allocated `inner`.
        unsafe {
            let offset = *ptr.sub(1) as usize;
            let inner = Layout::from_size_align_unchecked(layout.size() + 2 * FRONT, 16);
            System.dealloc(ptr.sub(offset), inner);
        }
    }
}

#[global_allocator]
static ALLOCATOR: MisaligningAllocator = MisaligningAllocator;

fn is_aligned<T>(buffer: &HostBuffer<T>) -> bool {
    buffer.as_slice().as_ptr() as usize % HOST_BUFFER_ALIGN == 0
}

#[test]
fn sizes_that_overflow_are_size_overflow_errors() {
    // Element count + alignment slack wraps usize.
    assert!(matches!(
        HostBuffer::<bf16>::try_new(usize::MAX),
        Err(GsdpaError::SizeOverflow(_))
    ));
    assert!(matches!(
        HostBuffer::<u8>::try_new(usize::MAX),
        Err(GsdpaError::SizeOverflow(_))
    ));
    // The element count fits but the byte size exceeds isize::MAX.
    assert!(matches!(
        HostBuffer::<f32>::try_new(usize::MAX / 4),
        Err(GsdpaError::SizeOverflow(_))
    ));
    assert!(matches!(
        HostBuffer::<bf16>::try_filled(isize::MAX as usize, bf16::ONE),
        Err(GsdpaError::SizeOverflow(_))
    ));
}

#[test]
fn allocations_the_system_refuses_are_out_of_memory_errors() {
    // 2^62 bytes is a valid size (below isize::MAX) that no address space holds.
    let len = 1usize << 61;
    match HostBuffer::<bf16>::try_new(len) {
        Err(GsdpaError::OutOfMemory { bytes }) => assert!(bytes >= len * 2, "{bytes}"),
        other => panic!("expected OutOfMemory, got {:?}", other.map(|b| b.len())),
    }
    assert!(matches!(
        HostBuffer::<u8>::try_new(1 << 62),
        Err(GsdpaError::OutOfMemory { .. })
    ));
}

#[test]
#[should_panic(expected = "HostBuffer of")]
fn new_panics_with_a_message_instead_of_wrapping() {
    let _ = HostBuffer::<bf16>::new(usize::MAX);
}

#[test]
fn buffers_are_aligned_and_sized() {
    for len in [0, 1, 7, 8, 9, 1000] {
        let b = HostBuffer::<bf16>::try_new(len).unwrap();
        assert_eq!(b.len(), len);
        assert_eq!(b.is_empty(), len == 0);
        assert!(is_aligned(&b));
        assert!(b.as_slice().iter().all(|&x| x == bf16::ZERO));
        let f = HostBuffer::<f32>::try_filled(len, 2.5).unwrap();
        assert!(is_aligned(&f));
        assert!(f.as_slice().iter().all(|&x| x == 2.5));
        let u = HostBuffer::<u8>::new(len);
        assert!(is_aligned(&u));
        // A type whose size (3) shares no factor with the alignment still gets an aligned start.
        let odd = HostBuffer::<[u8; 3]>::new(len);
        assert!(is_aligned(&odd));
    }
    let data: Vec<f32> = (0..37).map(|i| i as f32).collect();
    let b = HostBuffer::try_from_slice(&data).unwrap();
    assert_eq!(b.as_slice(), &data[..]);
    assert_eq!(b.to_vec(), data);
    assert!(is_aligned(&b));
}

#[test]
fn clones_are_aligned_and_equal() {
    // The allocator places each storage differently: a clone that copied the storage together with
    // the original's start offset would be misaligned in most of these.
    let data: Vec<bf16> = (0..23).map(|i| bf16::from_f32(i as f32)).collect();
    let original = HostBuffer::from_slice(&data);
    assert!(is_aligned(&original));
    for i in 0..16 {
        let clone = original.clone();
        assert!(is_aligned(&clone), "clone {i} is misaligned");
        assert_eq!(clone.as_slice(), original.as_slice());
        assert_eq!(clone, original);
    }
}

#[test]
fn equality_and_debug_ignore_the_padding() {
    // Same elements, different padding (the slack is filled with the fill value): equal.
    let mut a = HostBuffer::<bf16>::filled(3, bf16::ONE);
    let b = HostBuffer::<bf16>::filled(3, bf16::ZERO);
    assert_ne!(a, b);
    a.as_mut_slice().fill(bf16::ZERO);
    assert_eq!(a, b);
    // Different lengths are unequal even when one is a prefix of the other.
    assert_ne!(HostBuffer::<f32>::new(2), HostBuffer::<f32>::new(3));
    let shown = format!("{:?}", HostBuffer::from_slice(&[1.0f32, 2.0]));
    assert_eq!(shown, "HostBuffer([1.0, 2.0])");
}
