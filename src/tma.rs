//! TMA tensor maps: the parameters of `cuTensorMapEncodeTiled`, built once for both backends.
//!
//! A Hopper kernel receives each tensor it loads or stores with TMA as a [`ffi::GsdpaTensorMap`] (the
//! driver's opaque 128-byte `CUtensorMap`) inside its params. [`TensorMapParams`] describes the tensor
//! (element type, address, dims, strides, box, swizzle, out-of-bounds fill); [`TensorMapParams::validate`]
//! checks what the driver would refuse, with a typed error, and the same parameters are then encoded by
//! the driver on a GPU ([`TensorMapParams::encode_cuda`]) or by the emulator's encoder on the host
//! (`encode_emulator`), which implements the same semantics (docs/ptx-primitives.md).

use crate::error::{GsdpaError, Result};
use crate::ffi;

/// Element type of a TMA tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TmaElement {
    /// bfloat16.
    Bf16,
    /// IEEE binary16.
    F16,
    /// IEEE binary32.
    F32,
}

impl TmaElement {
    /// Bytes per element.
    pub fn bytes(self) -> u32 {
        match self {
            TmaElement::Bf16 | TmaElement::F16 => 2,
            TmaElement::F32 => 4,
        }
    }
}

/// How a box's rows are swizzled in shared memory: the 16-byte chunks of each span of 32, 64 or 128
/// bytes are permuted by address bits 7 and up (the same patterns as the wgmma descriptors').
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TmaSwizzle {
    /// Rows as they are.
    None,
    /// 32-byte span.
    B32,
    /// 64-byte span.
    B64,
    /// 128-byte span.
    B128,
}

impl TmaSwizzle {
    /// The swizzle span in bytes (0 for none).
    pub fn span_bytes(self) -> u32 {
        match self {
            TmaSwizzle::None => 0,
            TmaSwizzle::B32 => 32,
            TmaSwizzle::B64 => 64,
            TmaSwizzle::B128 => 128,
        }
    }

    fn ffi(self) -> u32 {
        match self {
            TmaSwizzle::None => ffi::GSDPA_SWIZZLE_NONE,
            TmaSwizzle::B32 => ffi::GSDPA_SWIZZLE_32B,
            TmaSwizzle::B64 => ffi::GSDPA_SWIZZLE_64B,
            TmaSwizzle::B128 => ffi::GSDPA_SWIZZLE_128B,
        }
    }
}

/// The parameters of a tiled tensor map (`cuTensorMapEncodeTiled`), dimension 0 innermost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorMapParams {
    /// Element type.
    pub element: TmaElement,
    /// The tensor's base address (device address on the GPU, host address on the emulator); 16-byte
    /// aligned.
    pub global_address: u64,
    /// Elements per dimension (rank 1..=5).
    pub dims: Vec<u64>,
    /// Byte strides of dimensions 1..rank (dimension 0 is contiguous): rank - 1 values, multiples of 16.
    pub strides_bytes: Vec<u64>,
    /// Box extent per dimension, 1..=256 elements; dimension 0 spans a multiple of 16 bytes.
    pub box_dims: Vec<u32>,
    /// Traversal stride per dimension, 1..=8 (the emulator models 1 in dimension 0 only).
    pub element_strides: Vec<u32>,
    /// Shared-memory swizzle of the box.
    pub swizzle: TmaSwizzle,
    /// Out-of-bounds elements read as NaN instead of zero.
    pub oob_nan: bool,
}

impl TensorMapParams {
    /// A tiled map with unit element strides, zero fill and no swizzle.
    pub fn tiled(
        element: TmaElement,
        global_address: u64,
        dims: &[u64],
        strides_bytes: &[u64],
        box_dims: &[u32],
    ) -> Self {
        TensorMapParams {
            element,
            global_address,
            dims: dims.to_vec(),
            strides_bytes: strides_bytes.to_vec(),
            box_dims: box_dims.to_vec(),
            element_strides: vec![1; dims.len()],
            swizzle: TmaSwizzle::None,
            oob_nan: false,
        }
    }

    /// The same with a swizzle.
    pub fn with_swizzle(mut self, swizzle: TmaSwizzle) -> Self {
        self.swizzle = swizzle;
        self
    }

    /// Rank (number of dimensions).
    pub fn rank(&self) -> usize {
        self.dims.len()
    }

    /// Bytes a box occupies in shared memory, which is also the transaction count a load completes on
    /// its mbarrier (out-of-bounds elements included).
    pub fn box_bytes(&self) -> u32 {
        self.box_dims
            .iter()
            .zip(&self.element_strides)
            .map(|(&b, &s)| b.div_ceil(s.max(1)))
            .product::<u32>()
            * self.element.bytes()
    }

    /// Checks what `cuTensorMapEncodeTiled` refuses, plus what the emulator does not model.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: &str| {
            Err(GsdpaError::InvalidArgument(format!(
                "TMA tensor map: {why}"
            )))
        };
        let rank = self.rank();
        if !(1..=5).contains(&rank) {
            return bad("rank must be 1..=5");
        }
        if self.strides_bytes.len() != rank - 1
            || self.box_dims.len() != rank
            || self.element_strides.len() != rank
        {
            return bad("dims, strides (rank - 1), box and element strides disagree on the rank");
        }
        if self.global_address % 16 != 0 {
            return bad("the global address must be 16-byte aligned");
        }
        if self.dims.iter().any(|&d| d == 0 || d > 1 << 32) {
            return bad("dims must be 1..=2^32");
        }
        if self
            .strides_bytes
            .iter()
            .any(|&s| s % 16 != 0 || s >= 1 << 40)
        {
            return bad("strides must be multiples of 16 bytes below 2^40");
        }
        if self.box_dims.iter().any(|&b| b == 0 || b > 256) {
            return bad("box dims must be 1..=256");
        }
        if self.element_strides.iter().any(|&s| s == 0 || s > 8) {
            return bad("element strides must be 1..=8");
        }
        let inner = self.box_dims[0] * self.element.bytes();
        if inner % 16 != 0 {
            return bad("the box's dimension 0 must span a multiple of 16 bytes");
        }
        let span = self.swizzle.span_bytes();
        if span != 0 && inner > span {
            return bad("the box's dimension 0 spans more bytes than the swizzle");
        }
        Ok(())
    }

    /// The parameters as the emulator's encoder takes them.
    pub fn to_ffi(&self) -> Result<ffi::GsdpaTensorMapParams> {
        self.validate()?;
        let mut p = ffi::GsdpaTensorMapParams {
            global_address: self.global_address,
            global_dims: [1; 5],
            global_strides: [0; 4],
            box_dims: [1; 5],
            element_strides: [1; 5],
            rank: self.rank() as u32,
            element_bytes: self.element.bytes(),
            element_kind: match self.element {
                TmaElement::Bf16 => ffi::GSDPA_TMA_BF16,
                TmaElement::F16 => ffi::GSDPA_TMA_F16,
                TmaElement::F32 => ffi::GSDPA_TMA_F32,
            },
            swizzle: self.swizzle.ffi(),
            oob_fill_nan: self.oob_nan as u32,
        };
        p.global_dims[..self.rank()].copy_from_slice(&self.dims);
        p.global_strides[..self.rank() - 1].copy_from_slice(&self.strides_bytes);
        p.box_dims[..self.rank()].copy_from_slice(&self.box_dims);
        p.element_strides[..self.rank()].copy_from_slice(&self.element_strides);
        Ok(p)
    }

    /// The emulator's tensor map for these parameters (the tensor is host memory).
    #[cfg(feature = "emulator")]
    pub fn encode_emulator(&self) -> Result<ffi::GsdpaTensorMap> {
        let params = self.to_ffi()?;
        let mut map = ffi::GsdpaTensorMap { opaque: [0; 16] };
        let mut err = vec![0 as std::ffi::c_char; 512];
        // SAFETY: map is a 64-byte aligned GsdpaTensorMap, params a valid struct, err a writable buffer of
        // the length passed.
        let rc = unsafe {
            gsdpa_emu_encode_tensor_map(
                (&mut map as *mut ffi::GsdpaTensorMap).cast(),
                &params,
                err.as_mut_ptr(),
                err.len(),
            )
        };
        if rc != 0 {
            let bytes: Vec<u8> = err
                .iter()
                .take_while(|&&c| c != 0)
                .map(|&c| c as u8)
                .collect();
            return Err(GsdpaError::InvalidArgument(
                String::from_utf8_lossy(&bytes).into_owned(),
            ));
        }
        Ok(map)
    }

    /// The driver's tensor map for these parameters (`cuTensorMapEncodeTiled`; the tensor is device
    /// memory). `_gpu` proves the driver is loaded.
    pub fn encode_cuda(&self, _gpu: &crate::cuda::CudaBackend) -> Result<ffi::GsdpaTensorMap> {
        use cudarc::driver::sys;
        self.validate()?;
        let rank = self.rank();
        let data_type = match self.element {
            TmaElement::Bf16 => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
            TmaElement::F16 => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
            TmaElement::F32 => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT32,
        };
        let swizzle = match self.swizzle {
            TmaSwizzle::None => sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_NONE,
            TmaSwizzle::B32 => sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_32B,
            TmaSwizzle::B64 => sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_64B,
            TmaSwizzle::B128 => sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
        };
        let fill = if self.oob_nan {
            sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NAN_REQUEST_ZERO_FMA
        } else {
            sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE
        };
        let mut map = sys::CUtensorMap { opaque: [0; 16] };
        // SAFETY: every array holds `rank` (strides: rank - 1) values, as validated; the map is written by
        // the driver; the address is only recorded, not dereferenced.
        let rc = unsafe {
            sys::cuTensorMapEncodeTiled(
                &mut map,
                data_type,
                rank as u32,
                self.global_address as *mut std::ffi::c_void,
                self.dims.as_ptr(),
                self.strides_bytes.as_ptr(),
                self.box_dims.as_ptr(),
                self.element_strides.as_ptr(),
                sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
                swizzle,
                sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
                fill,
            )
        };
        if rc != sys::CUresult::CUDA_SUCCESS {
            return Err(GsdpaError::Cuda(format!("cuTensorMapEncodeTiled: {rc:?}")));
        }
        Ok(ffi::GsdpaTensorMap { opaque: map.opaque })
    }
}

#[cfg(feature = "emulator")]
extern "C" {
    fn gsdpa_emu_encode_tensor_map(
        map: *mut std::ffi::c_void,
        params: *const ffi::GsdpaTensorMapParams,
        err: *mut std::ffi::c_char,
        err_len: usize,
    ) -> i32;
}
