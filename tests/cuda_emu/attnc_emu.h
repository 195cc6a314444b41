// Host emulation of the CUDA subset the attnc emitter generates (tests only).
//
// Force-included (`-include`) before a generated source and before harness.cpp, which runs the
// kernels: a few blocks of a grid at once (handed out in a shuffled order), the threads of a
// block in parallel on real threads, `__syncthreads()` being a barrier over them. See
// tests/common/cuda_emu.rs.
#pragma once

// The generated source's own CUDA definition of ATTNC_DYN_SMEM steps aside.
#define ATTNC_HOST_EMULATION 1

#include <math.h>  // expf, logf, ..., INFINITY in the global namespace, as CUDA has them
#include <cmath>
#include <cstddef>

#define __global__
#define __device__
#define __host__
#define __forceinline__

// Dynamic shared memory: each running block's own buffer (harness.cpp runs a few blocks at once),
// refilled with NaN before every block so that reading shared memory the block never wrote
// shows up in the results. (Function-static __shared__ arrays have no emulation: the generated
// code uses dynamic shared memory only.)
#define ATTNC_DYN_SMEM(name) float* const name = attnc_dyn_smem_ptr
inline constexpr std::size_t attnc_dyn_smem_bytes = 256 * 1024;
inline thread_local float* attnc_dyn_smem_ptr;  // set by the harness per worker

// CUDA's dim3, unsigned like the built-ins (so `threadIdx.x - 1` wraps as on a GPU).
struct attnc_dim3 {
  unsigned int x, y, z;
};
inline thread_local attnc_dim3 threadIdx;  // per worker thread
inline thread_local attnc_dim3 blockIdx;   // per worker: the block its team runs
inline attnc_dim3 blockDim;
inline attnc_dim3 gridDim;

// A barrier over the block's threads; defined in harness.cpp.
void __syncthreads();

// Not in the C library; a macro so a libm that one day declares rsqrtf does not clash.
inline float attnc_rsqrtf(float x) { return 1.0f / sqrtf(x); }
#define rsqrtf attnc_rsqrtf

// CUDA's vector type for 16-byte loads (tiles are 16-byte aligned, as on a GPU).
struct alignas(16) float4 {
  float x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
struct alignas(8) float2 {
  float x, y;
};
inline float2 make_float2(float x, float y) { return {x, y}; }

// Bit casts CUDA provides as intrinsics.
#include <cstring>
inline float __int_as_float(int i) {
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
}

// cvt.rna.tf32.f32: to nearest, ties away from zero, on the 13 low mantissa bits (inf and NaN
// unchanged).
inline float attnc_tf32(float x) {
  unsigned int u;
  std::memcpy(&u, &x, sizeof u);
  if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

// Bank-conflict counting, when the job asks for it (harness.cpp): each access the tile library
// marks with ATTNC_SH is recorded per thread (shared memory only), and when a block ends its
// records become warp instructions: a thread's k-th access at one source line is one instruction
// with every other lane's k-th access there.
inline bool attnc_count_banks = false;
void attnc_record_access(const void* p, unsigned bytes, const char* op, int line);
template <class T>
inline T* attnc_sh(T* p, const char* op, int line) {
  if (attnc_count_banks) attnc_record_access(p, sizeof(T), op, line);
  return p;
}
#define ATTNC_SH(...) attnc_sh((__VA_ARGS__), __func__, __LINE__)
// A predicated access: lanes where `live` is false take part in the instruction without touching
// a bank (recorded with no bytes, so the warp's instructions still line up).
template <class T>
inline T* attnc_sh_if(bool live, T* p, const char* op, int line) {
  if (attnc_count_banks) attnc_record_access(p, live ? sizeof(T) : 0, op, line);
  return p;
}
#define ATTNC_SH_IF(live, ...) attnc_sh_if((live), (__VA_ARGS__), __func__, __LINE__)

// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 with d as both C and D, in the PTX ISA's
// fragment layout; defined in harness.cpp. Every lane of the warp must call it together: each
// posts its fragments, waits for its warp, computes its four outputs from the whole tiles
// (products summed in k order, then added to C), and waits again.
void attnc_mma_tf32(float (&d)[4], const float (&a)[4], const float (&b)[2]);
