// Reductions across a warp and a thread block, shared by dgrid's row kernels.
#ifndef DGRID_KERNELS_CUDA_BLOCK_REDUCE_CUH_
#define DGRID_KERNELS_CUDA_BLOCK_REDUCE_CUH_

namespace dgrid::kernels {

struct SumOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};
struct MaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

template <typename Op>
__device__ __forceinline__ float WarpReduce(float v, Op op) {
  for (int offset = 16; offset > 0; offset /= 2) v = op(v, __shfl_xor_sync(0xffffffff, v, offset));
  return v;
}

// `op` over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// `scratch` holds 32 floats and may be shared by several reductions of one kernel; `identity` is
// op's neutral value (0 for a sum, and for a max of non-negative values).
template <typename Op>
__device__ __forceinline__ float BlockReduce(float v, float* scratch, Op op, float identity) {
  v = WarpReduce(v, op);
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  __syncthreads();  // scratch may still be read from a previous reduction
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  const float total = lane < static_cast<int>(blockDim.x >> 5) ? scratch[lane] : identity;
  return WarpReduce(total, op);
}

}  // namespace dgrid::kernels

#endif  // DGRID_KERNELS_CUDA_BLOCK_REDUCE_CUH_
