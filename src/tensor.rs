//! Tensors as "storage + shape + strides in elements": the storage is anything that can tell the address
//! of its element 0 and its length ([`Memory`]), so host slices and device buffers go through the same
//! validation.

use crate::error::{GsdpaError, Result};
use crate::problem::DType;

/// Bytes of every [`Element`] type: the kernels move 16-bit values only.
pub const ELEMENT_BYTES: usize = 2;

/// Shape and strides of a tensor, in elements. The kernels need the last dimension contiguous
/// (stride 1); that, the rank and the bounds are checked by validation, not here, so building a
/// layout never fails except for mismatched lengths.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Layout {
    shape: Vec<usize>,
    strides: Vec<usize>,
}

impl Layout {
    /// Row-major (C order) layout of `shape`. Strides saturate on overflow; validation then reports
    /// the size as overflowing.
    pub fn contiguous(shape: &[usize]) -> Layout {
        let mut strides = vec![0usize; shape.len()];
        let mut acc = 1usize;
        for (stride, &extent) in strides.iter_mut().zip(shape).rev() {
            *stride = acc;
            acc = acc.saturating_mul(extent);
        }
        Layout {
            shape: shape.to_vec(),
            strides,
        }
    }

    /// A layout with explicit strides (in elements). Fails if `shape` and `strides` differ in length.
    pub fn strided(shape: &[usize], strides: &[usize]) -> Result<Layout> {
        if shape.len() != strides.len() {
            return Err(GsdpaError::BadStrides {
                tensor: "layout",
                reason: format!(
                    "shape has {} dimensions but strides has {}",
                    shape.len(),
                    strides.len()
                ),
            });
        }
        Ok(Layout {
            shape: shape.to_vec(),
            strides: strides.to_vec(),
        })
    }

    /// The layout of q (or g) viewed inside a Qwen3-Next `q_proj` output: `q_shape` is the shape of q
    /// (`[B, S, H, D]` or varlen `[T, H, D]`), the buffer is `[.., H, 2 D]` in C order, so the strides are
    /// those of that buffer and the last dimension covers only the first (q) or second (g) half of each
    /// head. q starts at element 0 of the buffer, g at element `D` (see [`split_q_proj`]).
    pub fn q_proj_view(q_shape: &[usize]) -> Layout {
        let mut buffer_shape = q_shape.to_vec();
        if let Some(last) = buffer_shape.last_mut() {
            *last = last.saturating_mul(2);
        }
        let buffer = Layout::contiguous(&buffer_shape);
        Layout {
            shape: q_shape.to_vec(),
            strides: buffer.strides,
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn strides(&self) -> &[usize] {
        &self.strides
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Number of elements (product of the shape), `None` on overflow.
    pub fn num_elements(&self) -> Option<usize> {
        self.shape
            .iter()
            .try_fold(1usize, |acc, &e| acc.checked_mul(e))
    }

    /// True when the tensor has no element.
    pub fn is_empty(&self) -> bool {
        self.shape.contains(&0)
    }

    /// The largest element offset the layout addresses, `Ok(None)` for an empty tensor.
    pub fn max_offset(&self) -> std::result::Result<Option<usize>, OffsetOverflow> {
        if self.is_empty() {
            return Ok(None);
        }
        let mut max = 0usize;
        for (&extent, &stride) in self.shape.iter().zip(&self.strides) {
            let term = (extent - 1).checked_mul(stride).ok_or(OffsetOverflow)?;
            max = max.checked_add(term).ok_or(OffsetOverflow)?;
        }
        Ok(Some(max))
    }

    /// True when the layout is C-order contiguous (ignoring the strides of extent-1 dimensions).
    pub fn is_contiguous(&self) -> bool {
        let dense = Layout::contiguous(&self.shape);
        self.shape
            .iter()
            .zip(self.strides.iter().zip(&dense.strides))
            .all(|(&extent, (&s, &d))| extent <= 1 || s == d)
    }

    /// True when no two distinct indices map to the same offset (required of outputs). Sufficient
    /// test: sorted by stride, every stride exceeds the span of the dimensions before it.
    pub fn is_non_overlapping(&self) -> bool {
        let mut dims: Vec<(usize, usize)> = self
            .shape
            .iter()
            .zip(&self.strides)
            .filter(|(&extent, _)| extent > 1)
            .map(|(&extent, &stride)| (stride, extent))
            .collect();
        dims.sort_unstable();
        let mut span = 0usize; // largest offset reachable with the dimensions seen so far
        for (stride, extent) in dims {
            if stride <= span {
                return false;
            }
            match (extent - 1)
                .checked_mul(stride)
                .and_then(|t| t.checked_add(span))
            {
                Some(s) => span = s,
                None => return false,
            }
        }
        true
    }

    /// Element offset of a multi-index (no bounds check beyond debug assertions). Host code that reads
    /// single elements of a strided tensor (the reference's page gather, tests) uses it.
    pub fn offset(&self, index: &[usize]) -> usize {
        debug_assert_eq!(index.len(), self.shape.len());
        index.iter().zip(&self.strides).map(|(&i, &s)| i * s).sum()
    }

    /// Calls `f(linear, offset)` for every element in C order, where `linear` is the index in a dense
    /// copy and `offset` the element offset in this layout.
    pub fn for_each_offset(&self, mut f: impl FnMut(usize, usize)) {
        if self.is_empty() {
            return;
        }
        let rank = self.shape.len();
        if rank == 0 {
            f(0, 0);
            return;
        }
        let mut index = vec![0usize; rank];
        let mut offset = 0usize;
        let mut linear = 0usize;
        loop {
            f(linear, offset);
            linear += 1;
            // Odometer increment, updating the offset incrementally.
            let mut dim = rank;
            loop {
                if dim == 0 {
                    return;
                }
                dim -= 1;
                index[dim] += 1;
                offset += self.strides[dim];
                if index[dim] < self.shape[dim] {
                    break;
                }
                offset -= self.strides[dim] * self.shape[dim];
                index[dim] = 0;
            }
        }
    }
}

/// The largest offset of a layout does not fit in `usize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetOverflow;

/// Storage a tensor can live in: anything with a stable address of element 0 and a length in elements.
/// Implemented for host slices here and for device buffers by the CUDA backend.
pub trait Memory {
    type Elem;
    /// Address of element 0 (used for alignment and overlap checks and for the kernels' pointers).
    fn addr(&self) -> usize;
    /// Number of elements the storage holds.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T> Memory for &[T] {
    type Elem = T;
    fn addr(&self) -> usize {
        self.as_ptr() as usize
    }
    fn len(&self) -> usize {
        <[T]>::len(self)
    }
}

impl<T> Memory for &mut [T] {
    type Elem = T;
    fn addr(&self) -> usize {
        self.as_ptr() as usize
    }
    fn len(&self) -> usize {
        <[T]>::len(self)
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for half::bf16 {}
    impl Sealed for half::f16 {}
}

/// The 16-bit element types the kernels support: `half::bf16` and `half::f16`.
pub trait Element:
    Copy + Default + Send + Sync + std::fmt::Debug + 'static + sealed::Sealed
{
    const DTYPE: DType;
    /// Round to nearest even.
    fn from_f32(x: f32) -> Self;
    /// Round to nearest even, correctly from f64: `half`'s own f64 conversions round through f32 (or
    /// truncate the low mantissa bits) and can land on the wrong side of a 16-bit midpoint.
    fn from_f64(x: f64) -> Self;
    fn to_f32(self) -> f32;
    fn to_f64(self) -> f64;
}

// ELEMENT_BYTES is what validation and the workspace layout assume of every element type.
const _: () = assert!(std::mem::size_of::<half::bf16>() == ELEMENT_BYTES);
const _: () = assert!(std::mem::size_of::<half::f16>() == ELEMENT_BYTES);

/// `x` rounded to f32 with round-to-odd: truncated, with the last bit set when inexact. Rounding that
/// to a 16-bit type (nearest even) is then the correct rounding of `x` itself, because f32 keeps at
/// least two more bits than bf16 and f16 at every magnitude they represent; plain `x as f32` could
/// land exactly on a 16-bit midpoint and round the wrong way (`half`'s `from_f64` does that).
fn f32_round_to_odd(x: f64) -> f32 {
    let nearest = x as f32;
    if !x.is_finite() || nearest.is_infinite() || f64::from(nearest) == x {
        return nearest;
    }
    // The neighbour of `nearest` toward zero when `nearest` rounded away from zero.
    let truncated = if f64::from(nearest).abs() > x.abs() {
        f32::from_bits(nearest.to_bits() - 1)
    } else {
        nearest
    };
    f32::from_bits(truncated.to_bits() | 1)
}

impl Element for half::bf16 {
    const DTYPE: DType = DType::BF16;
    fn from_f32(x: f32) -> Self {
        half::bf16::from_f32(x)
    }
    fn from_f64(x: f64) -> Self {
        half::bf16::from_f32(f32_round_to_odd(x))
    }
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
    fn to_f64(self) -> f64 {
        half::bf16::to_f64(self)
    }
}

impl Element for half::f16 {
    const DTYPE: DType = DType::F16;
    fn from_f32(x: f32) -> Self {
        half::f16::from_f32(x)
    }
    fn from_f64(x: f64) -> Self {
        half::f16::from_f32(f32_round_to_odd(x))
    }
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
    fn to_f64(self) -> f64 {
        half::f16::to_f64(self)
    }
}

/// A tensor: storage plus layout. Cheap to build; checked only when a backend validates a call.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor<S> {
    pub data: S,
    pub layout: Layout,
}

impl<S> Tensor<S> {
    pub fn new(data: S, layout: Layout) -> Self {
        Tensor { data, layout }
    }

    /// A C-order tensor of `shape` over `data`.
    pub fn contiguous(data: S, shape: &[usize]) -> Self {
        Tensor {
            data,
            layout: Layout::contiguous(shape),
        }
    }

    pub fn shape(&self) -> &[usize] {
        self.layout.shape()
    }
}

/// Splits a Qwen3-Next `q_proj` output into the q and g views, without a copy.
///
/// `q_shape` is the shape of q (`[B, S, H, D]`, or varlen `[T, H, D]`); `buffer` holds the `q_proj`
/// output `[.., H, 2 D]` in C order, each head being `[q_h | g_h]`. Both views use
/// [`Layout::q_proj_view`]; g starts `D` elements into the buffer.
pub fn split_q_proj<'a, T>(buffer: &'a [T], q_shape: &[usize]) -> Result<QProjViews<'a, T>> {
    let layout = Layout::q_proj_view(q_shape);
    let head_dim = q_shape.last().copied().unwrap_or(0);
    let mut buffer_shape = q_shape.to_vec();
    if let Some(last) = buffer_shape.last_mut() {
        *last = last.saturating_mul(2);
    }
    let expected = Layout::contiguous(&buffer_shape).num_elements();
    if q_shape.is_empty() || expected != Some(buffer.len()) {
        return Err(GsdpaError::ShapeMismatch {
            tensor: "q_proj",
            expected: buffer_shape,
            actual: vec![buffer.len()],
        });
    }
    // An empty buffer has no element D; both views are empty then and any slice will do.
    let g_data = buffer.get(head_dim..).unwrap_or(&buffer[..0]);
    Ok(QProjViews {
        q: Tensor::new(buffer, layout.clone()),
        g: Tensor::new(g_data, layout),
    })
}

/// The q and g views of one Qwen3-Next `q_proj` buffer (see [`split_q_proj`]).
#[derive(Debug, Clone)]
pub struct QProjViews<'a, T> {
    pub q: Tensor<&'a [T]>,
    pub g: Tensor<&'a [T]>,
}

/// A host buffer whose first element is 16-byte aligned, as the kernels' vector loads need (a `Vec` of
/// a 2-byte type only guarantees 2-byte alignment). Implemented without `unsafe`: the storage holds a
/// few extra elements and the buffer starts at the first aligned one.
///
/// The alignment is guaranteed whenever `align_of::<T>()` is at least `gcd(size_of::<T>(), 16)`,
/// which holds for every primitive (`bf16`, `f16`, `f32`, `f64`, `i32`, `u8`, ...); for an odd type
/// such as `[u8; 2]` the buffer starts at element 0 of its storage when no element is aligned.
///
/// `Clone`, `PartialEq` and `Debug` go through the aligned slice: a clone is a fresh aligned buffer
/// (not a copy of the storage, whose padding sits at a different offset in a new allocation), and
/// the padding is never compared or printed.
pub struct HostBuffer<T> {
    storage: Vec<T>,
    start: usize,
    len: usize,
}

/// Alignment of [`HostBuffer`]'s first element, in bytes.
pub const HOST_BUFFER_ALIGN: usize = 16;

/// Greatest common divisor (for the alignment arithmetic of [`HostBuffer`]).
const fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl<T> HostBuffer<T> {
    /// Extra elements allocated so that one of the first `slack + 1` lies on a [`HOST_BUFFER_ALIGN`]
    /// boundary: element offsets `k * size` cover every residue modulo the alignment that is a multiple
    /// of `gcd(size, align)`, so `align / gcd - 1` extra elements always suffice when the allocation
    /// itself starts on a multiple of that gcd.
    fn slack() -> usize {
        let size = std::mem::size_of::<T>();
        if size == 0 {
            return 0;
        }
        HOST_BUFFER_ALIGN / gcd(size, HOST_BUFFER_ALIGN) - 1
    }

    /// The first element of `storage` at or before `slack` whose address is aligned (0 when none is).
    fn aligned_start(storage: &[T], slack: usize) -> usize {
        let size = std::mem::size_of::<T>();
        let base = storage.as_ptr() as usize;
        (0..=slack)
            .find(|&k| (base + k * size) % HOST_BUFFER_ALIGN == 0)
            .unwrap_or(0)
    }

    pub fn as_slice(&self) -> &[T] {
        &self.storage[self.start..self.start + self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [T] {
        &mut self.storage[self.start..self.start + self.len]
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<T: Copy + Default> HostBuffer<T> {
    /// `len` elements of `T::default()`.
    ///
    /// # Panics
    /// Like `Vec`, when the size in bytes overflows `isize::MAX` or the allocation fails; use
    /// [`HostBuffer::try_new`] to get a typed error instead.
    pub fn new(len: usize) -> Self {
        Self::filled(len, T::default())
    }

    /// `len` elements of `T::default()`, or [`GsdpaError::SizeOverflow`] when the size in bytes
    /// overflows `isize::MAX`, [`GsdpaError::OutOfMemory`] when the allocation fails.
    pub fn try_new(len: usize) -> Result<Self> {
        Self::try_filled(len, T::default())
    }

    /// `len` copies of `value`.
    ///
    /// # Panics
    /// As [`HostBuffer::new`]; [`HostBuffer::try_filled`] is the fallible form.
    pub fn filled(len: usize, value: T) -> Self {
        Self::try_filled(len, value).unwrap_or_else(|e| panic!("HostBuffer of {len} elements: {e}"))
    }

    /// `len` copies of `value`, failing as [`HostBuffer::try_new`] does.
    pub fn try_filled(len: usize, value: T) -> Result<Self> {
        let slack = Self::slack();
        let elements = len.checked_add(slack);
        let bytes = elements.and_then(|n| n.checked_mul(std::mem::size_of::<T>()));
        let (elements, bytes) = match (elements, bytes) {
            (Some(n), Some(b)) if b <= isize::MAX as usize => (n, b),
            _ => {
                return Err(GsdpaError::SizeOverflow(format!(
                    "a host buffer of {len} elements of {} bytes does not fit in memory's address range",
                    std::mem::size_of::<T>()
                )))
            }
        };
        let mut storage = Vec::new();
        // The byte size was checked above, so the only failure left is the allocator's.
        storage
            .try_reserve_exact(elements)
            .map_err(|_| GsdpaError::OutOfMemory { bytes })?;
        storage.resize(elements, value);
        let start = Self::aligned_start(&storage, slack);
        Ok(HostBuffer {
            storage,
            start,
            len,
        })
    }

    /// An aligned copy of `data`.
    ///
    /// # Panics
    /// When the allocation fails; [`HostBuffer::try_from_slice`] is the fallible form.
    pub fn from_slice(data: &[T]) -> Self {
        let mut buffer = Self::new(data.len());
        buffer.as_mut_slice().copy_from_slice(data);
        buffer
    }

    /// An aligned copy of `data`, or [`GsdpaError::OutOfMemory`] when the allocation fails.
    pub fn try_from_slice(data: &[T]) -> Result<Self> {
        let mut buffer = Self::try_new(data.len())?;
        buffer.as_mut_slice().copy_from_slice(data);
        Ok(buffer)
    }

    /// The elements as a `Vec` (a copy).
    pub fn to_vec(&self) -> Vec<T> {
        self.as_slice().to_vec()
    }
}

impl<T: Copy + Default> Clone for HostBuffer<T> {
    /// A fresh aligned buffer holding the same elements.
    fn clone(&self) -> Self {
        Self::from_slice(self.as_slice())
    }
}

impl<T: PartialEq> PartialEq for HostBuffer<T> {
    /// Equal when the elements are (the alignment padding is not part of the value).
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl<T: Eq> Eq for HostBuffer<T> {}

impl<T: std::fmt::Debug> std::fmt::Debug for HostBuffer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("HostBuffer").field(&self.as_slice()).finish()
    }
}
