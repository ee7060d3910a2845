// The source of build/testdata/*-static-smem.log: a kernel with static shared memory that calls a
// device function ptxas keeps out of line, so the report has an "N bytes smem" item and a "Function
// properties" block that is not an entry.
__device__ __noinline__ float scaled(float x, float s) { return x * s + 1.0f; }

extern "C" __global__ void __launch_bounds__(128) static_smem_kernel(float* out, const float* in, float s) {
    __shared__ float tile[1024];
    for (int i = threadIdx.x; i < 1024; i += blockDim.x) tile[i] = in[i];
    __syncthreads();
    out[threadIdx.x] = scaled(tile[1023 - threadIdx.x], s);
}
