// The source of build/testdata/*-static-smem.log: a kernel with static shared memory that calls a
// device function ptxas keeps out of line. That function indexes a local array at run time, so it has
// a stack frame of its own. The report then has an "N bytes smem" item and a "Function properties"
// block that is not an entry's.
__device__ __noinline__ float pick(const float* in, int i) {
    float local[16];
    for (int j = 0; j < 16; ++j) local[j] = in[j] * 2.0f;
    return local[i & 15];
}

extern "C" __global__ void __launch_bounds__(128) static_smem_kernel(float* out, const float* in, int i) {
    __shared__ float tile[1024];
    for (int j = threadIdx.x; j < 1024; j += blockDim.x) tile[j] = in[j];
    __syncthreads();
    out[threadIdx.x] = pick(tile + (threadIdx.x & 31), i + threadIdx.x);
}
