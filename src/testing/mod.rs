//! Entry points for the crate's own tests, benchmarks and CLI: the GPU benchmark harness, the
//! conformance kernel and the emulator's self-tests. Hidden from the documentation and not part of the
//! API: they allocate, synchronize and change without notice.

pub mod bench;
pub mod conformance;
pub mod decode_bench;
pub mod hopper;
#[cfg(feature = "emulator")]
pub mod selftest;

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits};

use crate::cuda::cuda_error;
use crate::error::Result;

/// Copies `buffer` back to the host and waits for `stream`: the tail of every GPU runner here (they
/// are synchronous test helpers).
pub(crate) fn download<T: DeviceRepr + ValidAsZeroBits + Default + Clone>(
    stream: &Arc<CudaStream>,
    buffer: &CudaSlice<T>,
) -> Result<Vec<T>> {
    let host = stream
        .clone_dtoh(buffer)
        .map_err(|e| cuda_error("download", e))?;
    stream
        .synchronize()
        .map_err(|e| cuda_error("synchronize", e))?;
    Ok(host)
}
