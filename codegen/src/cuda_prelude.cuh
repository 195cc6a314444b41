// ---- attnc CUDA tile library (the same tile ops the CPU emitter lowers to attnc_runtime::tile) --
// Every op is called by all threads of the block and is followed by __syncthreads() in the
// kernel. Tiles are row-major float arrays in shared memory (or, when too large, in a per-block
// global scratch area), rows pitch(W) floats apart; R, W, ... are compile-time tile sizes,
// `rows` the live token rows. ATTNC_SH marks an access to a tile: nothing on a GPU, a record for
// the host emulation's bank-conflict counter; ATTNC_SH_IF one that only lanes where `live` make
// (a predicated load: the others sit the instruction out).
#ifndef ATTNC_HOST_EMULATION
// 16-byte aligned: the products read tiles as float4.
#define ATTNC_DYN_SMEM(name) extern __shared__ __align__(16) float name[]
#define ATTNC_SH(...) (__VA_ARGS__)
#define ATTNC_SH_IF(live, ...) (__VA_ARGS__)
#endif

namespace attnc {

// NVRTC has no <math.h> macros: -infinity spelled from its bits.
__device__ __forceinline__ float neg_inf() { return -__int_as_float(0x7f800000); }

__device__ __forceinline__ int imin(int a, int b) { return a < b ? a : b; }

// The distance between rows of a tile W columns wide, in floats: the least P >= W with P = 4
// (mod 8) when W is a multiple of 4 (at least 8), else W. Shared memory has 32 banks of 4 bytes;
// rows a multiple of 32 floats apart put a column of a tile in one bank. With P = 4 (mod 8) the
// tensor-core A fragment (8 rows x 4 columns per warp) reads 32 banks and the B fragment (4 rows x
// 8 columns) at most 2 per bank. attnc_codegen's cuda_pitch is the same rule.
__host__ __device__ constexpr int pitch(int w) {
  return w % 4 != 0 || w < 8 ? w : w + (12 - w % 8) % 8;
}

// Row-per-thread loops visit column (cc + r) mod w at step cc rather than cc: at each step the
// threads of a warp read 32 different banks instead of one (rows of a tile are w floats apart,
// w usually a multiple of 32). The sum of a row then starts at its column r mod w.
__device__ __forceinline__ int skew(int cc, int r, int w) {
  const int c = cc + r % w;
  return c >= w ? c - w : c;
}

// x^n for an integer n (closures' powi), by repeated squaring.
__device__ __forceinline__ float powi(float x, int n) {
  float base = n < 0 ? 1.0f / x : x;
  unsigned int e = n < 0 ? (unsigned int)(-(long)n) : (unsigned int)n;
  float acc = 1.0f;
  while (e) {
    if (e & 1u) acc *= base;
    base *= base;
    e >>= 1u;
  }
  return acc;
}

// Rows of a token tensor of one (batch, head): row t at base[t * stride].
template <typename T>
struct Tok {
  T* base;
  long stride;
};

// Token rows of a (B, H, N, D) or (B, N, H, D) tensor for batch x head `bh`.
template <bool BNHD, typename T>
__device__ __forceinline__ Tok<T> tok(T* p, int d, int bh, int n, int heads) {
  Tok<T> t;
  if (BNHD) {
    const int b = bh / heads, h = bh - b * heads;
    t.base = p + ((long)b * n * heads + h) * d;
    t.stride = (long)heads * d;
  } else {
    t.base = p + (long)bh * n * d;
    t.stride = d;
  }
  return t;
}

// dst (R x W) <- rows t0.. of src (columns col0..col0+W); rows past `rows` become zero.
template <int R, int W, typename T>
__device__ void load_rows(float* dst, Tok<T> src, int col0, int t0, int rows) {
  for (int i = threadIdx.x; i < R * W; i += blockDim.x) {
    const int r = i / W, c = i - r * W;
    *ATTNC_SH(dst + r * pitch(W) + c) =
        r < rows ? src.base[(long)(t0 + r) * src.stride + col0 + c] : 0.0f;
  }
}

// dst (R) <- entries t0.. of a per-token scalar input; past `rows`, zero.
template <int R>
__device__ void load_vec(float* dst, Tok<const float> src, int t0, int rows) {
  for (int r = threadIdx.x; r < R; r += blockDim.x)
    dst[r] = r < rows ? src.base[(long)(t0 + r) * src.stride] : 0.0f;
}

// The first `rows` rows of src (R x W) -> rows t0.. of the output.
template <int R, int W>
__device__ void store_rows(const float* src, Tok<float> dst, int col0, int t0, int rows) {
  for (int i = threadIdx.x; i < R * W; i += blockDim.x) {
    const int r = i / W, c = i - r * W;
    if (r < rows) dst.base[(long)(t0 + r) * dst.stride + col0 + c] = *ATTNC_SH(src + r * pitch(W) + c);
  }
}

// dst (R x W, leading dim dld) <- src (R x W, leading dim sld): tiles to and from workspaces
// (a tile's leading dim is its pitch).
template <int R, int W>
__device__ void copy_2d(float* dst, long dld, const float* src, long sld) {
  for (int i = threadIdx.x; i < R * W; i += blockDim.x) {
    const int r = i / W, c = i - r * W;
    dst[r * dld + c] = src[r * sld + c];
  }
}

// Whole tiles of the same shape (N counts the rows' padding too), or vectors.
template <int N>
__device__ void copy(float* dst, const float* src) {
  for (int i = threadIdx.x; i < N; i += blockDim.x) dst[i] = src[i];
}

template <int N>
__device__ void zero(float* dst) {
  for (int i = threadIdx.x; i < N; i += blockDim.x) dst[i] = 0.0f;
}

template <int N>
__device__ void add_to(float* dst, const float* src) {
  for (int i = threadIdx.x; i < N; i += blockDim.x) dst[i] += src[i];
}

// x / sqrt(|x|^2 + eps) per live row (flash-linear-attention's form).
template <int R, int W>
__device__ void l2norm_rows(float* x, int rows, float eps) {
  for (int r = threadIdx.x; r < rows; r += blockDim.x) {
    float s = 0.0f;
    for (int cc = 0; cc < W; ++cc) {
      const float v = *ATTNC_SH(x + r * pitch(W) + skew(cc, r, W));
      s = fmaf(v, v, s);
    }
    const float inv = 1.0f / sqrtf(s + eps);
    for (int cc = 0; cc < W; ++cc) *ATTNC_SH(x + r * pitch(W) + skew(cc, r, W)) *= inv;
  }
}

// x <- phi(x) on live rows.
template <int R, int W, typename Phi>
__device__ void map_rows(float* x, int rows, Phi phi) {
  for (int i = threadIdx.x; i < rows * W; i += blockDim.x) {
    float* e = ATTNC_SH(x + i / W * pitch(W) + i % W);
    *e = phi(*e);
  }
}

template <int R, int W>
__device__ void scale_rows(float* x, int rows, float s) {
  for (int i = threadIdx.x; i < rows * W; i += blockDim.x) *ATTNC_SH(x + i / W * pitch(W) + i % W) *= s;
}

// Based's Taylor map: [1, x / D^(1/4), x_i^2 / (sqrt(D) sqrt(2)), x_i x_j / sqrt(D) for i < j]
// (pairs in row-major order, as torch.triu_indices(D, D, 1)); rows past `rows` become zero.
template <int R, int D, int F>
__device__ void taylor2_rows(const float* x, int rows, float* out) {
  const float rd = sqrtf((float)D);
  const float inv_rrd = 1.0f / sqrtf(rd), inv_diag = 1.0f / (rd * sqrtf(2.0f)), inv_rd = 1.0f / rd;
  for (int i = threadIdx.x; i < R * F; i += blockDim.x) {
    const int r = i / F, j = i - r * F;
    const float* xr = x + r * pitch(D);
    float v;
    if (r >= rows) v = 0.0f;
    else if (j == 0) v = 1.0f;
    else if (j <= D) v = *ATTNC_SH(xr + j - 1) * inv_rrd;
    else if (j <= 2 * D) {
      const float e = *ATTNC_SH(xr + j - 1 - D);
      v = e * e * inv_diag;
    }
    else {
      int p = j - 1 - 2 * D, a = 0;
      while (p >= D - 1 - a) { p -= D - 1 - a; ++a; }
      v = *ATTNC_SH(xr + a) * *ATTNC_SH(xr + a + 1 + p) * inv_rd;
    }
    *ATTNC_SH(out + r * pitch(F) + j) = v;
  }
}

// DPFP: r = [relu(x), relu(-x)], phi = concat_{j=1..NU} r * roll(r, j); rows past `rows`, zero.
template <int R, int D, int F, int NU>
__device__ void dpfp_rows(const float* x, int rows, float* out) {
  for (int i = threadIdx.x; i < R * F; i += blockDim.x) {
    const int r = i / F, idx = i - r * F;
    float v = 0.0f;
    if (r < rows) {
      const float* xr = x + r * pitch(D);
      const int j = idx / (2 * D) + 1, a = idx % (2 * D);
      const int b = (a + 2 * D - j % (2 * D)) % (2 * D);
      const float ra = a < D ? fmaxf(xr[a], 0.0f) : fmaxf(-xr[a - D], 0.0f);
      const float rb = b < D ? fmaxf(xr[b], 0.0f) : fmaxf(-xr[b - D], 0.0f);
      v = ra * rb;
    }
    *ATTNC_SH(out + r * pitch(F) + idx) = v;
  }
}

// FAVOR+ positive random features: with x' = x / D^(1/4), out[r][i] = exp(w_i . x'_r -
// |x'_r|^2 / 2) / sqrt(F) (the stabiliser is 0: the exponent is at most |w_i|^2 / 2 for any x).
// w (F x D, row-major) is read in place from global memory; rows past `rows` become zero.
template <int R, int D, int F>
__device__ void favor_rows(const float* x, int rows, const float* w, float* out) {
  const float s = 1.0f / sqrtf(sqrtf((float)D)), inv_sqrt_f = 1.0f / sqrtf((float)F);
  for (int i = threadIdx.x; i < R * F; i += blockDim.x) {
    const int r = i / F, j = i - r * F;
    float v = 0.0f;
    if (r < rows) {
      const float* xr = x + r * pitch(D);
      const float* wj = w + (long)j * D;
      float dot = 0.0f, sq = 0.0f;
      for (int c = 0; c < D; ++c) {
        dot = fmaf(wj[c], xr[c], dot);
        sq = fmaf(xr[c], xr[c], sq);
      }
      v = expf(fmaf(s, dot, -0.5f * s * s * sq)) * inv_sqrt_f;
    }
    *ATTNC_SH(out + r * pitch(F) + j) = v;
  }
}

// g[t] <- g[0] + ... + g[t] over live rows.
template <int R>
__device__ void cumsum(float* g, int rows) {
  if (R > (int)blockDim.x) {
    if (threadIdx.x == 0) {
      float acc = 0.0f;
      for (int t = 0; t < rows; ++t) { acc += g[t]; g[t] = acc; }
    }
    return;
  }
  // Hillis-Steele: log2(R) steps of one add per thread instead of R serial adds.
  const int t = threadIdx.x;
  for (int off = 1; off < R; off *= 2) {
    const float add = t < rows && t >= off ? g[t - off] : 0.0f;
    __syncthreads();
    if (t < rows) g[t] += add;
    __syncthreads();
  }
}

// dst (W x R) <- src (R x W)^T; columns past `rows` become zero.
template <int R, int W>
__device__ void transpose(const float* src, int rows, float* dst) {
  // Diagonal order: thread i takes t = i mod R and k = (i / R + t) mod W, so a warp reads
  // src[t][k] and writes dst[k][t] at 32 different banks each (R, W multiples of 32: rows
  // pitch = 4 (mod 32) apart, the address steps by pitch + 1, odd, from lane to lane).
  for (int i = threadIdx.x; i < R * W; i += blockDim.x) {
    const int t = i % R, k = (i / R + t) % W;
    *ATTNC_SH(dst + k * pitch(R) + t) = t < rows ? *ATTNC_SH(src + t * pitch(W) + k) : 0.0f;
  }
}

enum { FULL = 0, LOWER_OUT = 1, LOWER_A = 2 };

// Entry (k, j) of a product's right operand: b is K x N, or N x K when BT (a key tile read in
// place of its transpose).
template <bool BT, int K, int N>
__device__ __forceinline__ const float* b_at(const float* b, int k, int j) {
  return BT ? b + j * pitch(K) + k : b + k * pitch(N) + j;
}

// dst (M x N) (= or +=) a (M x K) . b (K x N; with BT, b is N x K and the product is a . b^T)
// over the first `rows` rows and `depth` of K. LOWER_OUT: only j <= i is computed, the rest set
// to zero; LOWER_A: a is lower triangular. Rows past `rows` are zeroed (or left, when
// accumulating). Every output sums its k in order with fmaf, so both SIMT forms below give the
// same bits.
template <int M, int K, int N, int TRI, bool ACC, bool BT>
__device__ void gemm_scalar(const float* a, const float* b, float* dst, int rows, int depth) {
  constexpr int PA = pitch(K), PB = pitch(N);
  for (int i = threadIdx.x; i < M * N; i += blockDim.x) {
    const int r = i / N, j = i - r * N;
    float* out = ATTNC_SH(dst + r * PB + j);
    if (r >= rows || (TRI == LOWER_OUT && j > r)) {
      if (!ACC) *out = 0.0f;
      continue;
    }
    const int kend = TRI == LOWER_A ? imin(depth, r + 1) : depth;
    float acc = 0.0f;
    for (int k = 0; k < kend; ++k)
      acc = fmaf(*ATTNC_SH(a + r * PA + k), *ATTNC_SH(b_at<BT, K, N>(b, k, j)), acc);
    *out = ACC ? *out + acc : acc;
  }
}

// Component i of a float4 (i is a constant once the loops around it are unrolled).
__device__ __forceinline__ float lane(float4 v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// One k step of a 4 x 4 micro-tile: a column of a (4 rows, scalars) times a row of b (one
// float4), masked to k <= row under LOWER_A.
template <int TRI>
__device__ __forceinline__ void micro_step(float (&acc)[4][4], const float (&av)[4], float4 bv,
                                           int r0, int k) {
#pragma unroll
  for (int ii = 0; ii < 4; ++ii) {
    const float x = (TRI == LOWER_A && k > r0 + ii) ? 0.0f : av[ii];
    acc[ii][0] = fmaf(x, bv.x, acc[ii][0]);
    acc[ii][1] = fmaf(x, bv.y, acc[ii][1]);
    acc[ii][2] = fmaf(x, bv.z, acc[ii][2]);
    acc[ii][3] = fmaf(x, bv.w, acc[ii][3]);
  }
}

// The register-tiled product: each thread owns 4 x 4 outputs; per 4 steps of k it reads four
// float4 of a (one per row) and four of b (one per k, or with BT one per column) for 64 fmaf.
// A thread's columns are a quad c0..c0+3, consecutive threads taking consecutive quads (a
// warp's b reads contiguous, its a reads broadcast). With BT they are q, q + N/4, q + 2N/4,
// q + 3N/4 instead: the rows of b a quarter-warp reads as float4 are then consecutive, pitch(K)
// = 4 (mod 8) floats apart, 8 different groups of 4 banks (rows 4 apart would fall in 2 groups:
// 4-way). Needs M, K, N multiples of 4 and 16-byte aligned tiles (tile places are
// SLOT_ALIGN-aligned, pitches multiples of 4).
template <int M, int K, int N, int TRI, bool ACC, bool BT>
__device__ void gemm_tiled(const float* a, const float* b, float* dst, int rows, int depth) {
  constexpr int QN = N / 4, TILES = (M / 4) * QN, PA = pitch(K), PB = pitch(N);
  constexpr int STEP = BT ? QN : 1;  // between a thread's columns
  for (int u = threadIdx.x; u < TILES; u += blockDim.x) {
    const int r0 = (u / QN) * 4, q = u - (u / QN) * QN, c0 = BT ? q : 4 * q;
    float acc[4][4] = {};
    const bool above = TRI == LOWER_OUT && c0 > r0 + 3;  // every output above the diagonal
    const int kend = TRI == LOWER_A ? imin(depth, r0 + 4) : depth;
    if (r0 < rows && !above) {
      const int k4 = kend & ~3;
      for (int k = 0; k < k4; k += 4) {
        float4 ar[4];
#pragma unroll
        for (int ii = 0; ii < 4; ++ii)
          ar[ii] = *ATTNC_SH(reinterpret_cast<const float4*>(a + (r0 + ii) * PA + k));
        float4 br[4];  // with BT: four columns' k..k+3
        if (BT) {
#pragma unroll
          for (int jj = 0; jj < 4; ++jj)
            br[jj] = *ATTNC_SH(
                reinterpret_cast<const float4*>(b_at<BT, K, N>(b, k, c0 + jj * STEP)));
        }
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
          const float4 bv =
              BT ? make_float4(lane(br[0], kk), lane(br[1], kk), lane(br[2], kk), lane(br[3], kk))
                 : *ATTNC_SH(reinterpret_cast<const float4*>(b_at<BT, K, N>(b, k + kk, c0)));
          const float av[4] = {lane(ar[0], kk), lane(ar[1], kk), lane(ar[2], kk), lane(ar[3], kk)};
          micro_step<TRI>(acc, av, bv, r0, k + kk);
        }
      }
#pragma unroll 1
      for (int k = k4; k < kend; ++k) {
        float av[4], bj[4];
#pragma unroll
        for (int ii = 0; ii < 4; ++ii) {
          av[ii] = *ATTNC_SH(a + (r0 + ii) * PA + k);
          bj[ii] = *ATTNC_SH(b_at<BT, K, N>(b, k, c0 + ii * STEP));
        }
        micro_step<TRI>(acc, av, make_float4(bj[0], bj[1], bj[2], bj[3]), r0, k);
      }
    }
#pragma unroll
    for (int ii = 0; ii < 4; ++ii) {
      const int r = r0 + ii;
      if (BT || TRI == LOWER_OUT) {
        // Column by column: spread columns (BT) or the diagonal's mask.
#pragma unroll
        for (int jj = 0; jj < 4; ++jj) {
          const int c = c0 + jj * STEP;
          float* o = ATTNC_SH(dst + r * PB + c);
          if (r >= rows || (TRI == LOWER_OUT && c > r)) {
            if (!ACC) *o = 0.0f;
          } else {
            *o = ACC ? *o + acc[ii][jj] : acc[ii][jj];
          }
        }
        continue;
      }
      float4* out4 = ATTNC_SH(reinterpret_cast<float4*>(dst + r * PB + c0));
      if (r >= rows) {
        if (!ACC) *out4 = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        continue;
      }
      float4 o = make_float4(acc[ii][0], acc[ii][1], acc[ii][2], acc[ii][3]);
      if (ACC) {
        const float4 d = *out4;
        o = make_float4(d.x + o.x, d.y + o.y, d.z + o.z, d.w + o.w);
      }
      *out4 = o;
    }
  }
}

}  // namespace attnc

// ---- Tensor cores (sm_80+): mma.sync m16n8k8 on TF32 operands, fp32 accumulation ----------
// On by default where the hardware has them (and in the host emulation); ATTNC_NO_MMA keeps
// every product on the FP32 pipes. ATTNC_MMA_PASSES = 3 (default) is 3xTF32: each operand x
// splits into hi = tf32(x) and lo = tf32(x - hi), and a b ~ a_hi b_hi + a_hi b_lo + a_lo b_hi,
// whose error per product (about 2^-21 relative) is fp32's order; 1 is plain TF32 (2^-11).
#if !defined(ATTNC_NO_MMA) && \
    (defined(ATTNC_HOST_EMULATION) || (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800))
#define ATTNC_MMA 1
#endif
#ifndef ATTNC_MMA_PASSES
#define ATTNC_MMA_PASSES 3
#endif

#if defined(ATTNC_MMA) && !defined(ATTNC_HOST_EMULATION)
// x rounded to TF32 (to nearest, ties away from zero), as a float with 13 zero low bits.
__device__ __forceinline__ float attnc_tf32(float x) {
  unsigned int u;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(u) : "f"(x));
  return __uint_as_float(u & 0xffffe000u);
}

// d += a b on one warp's 16 x 8 x 8 tile. Lane l = 4 g + t holds a[i] = A[g + 8 (i & 1)]
// [t + 4 (i >> 1)], b[i] = B[t + 4 i][g], d[i] = D[g + 8 (i >> 1)][2 t + (i & 1)] (the PTX ISA's
// fragment layout for m16n8k8 .tf32); the host emulation implements the same contract.
__device__ __forceinline__ void attnc_mma_tf32(float (&d)[4], const float (&a)[4],
                                               const float (&b)[2]) {
  asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(__float_as_uint(a[0])), "r"(__float_as_uint(a[1])), "r"(__float_as_uint(a[2])),
        "r"(__float_as_uint(a[3])), "r"(__float_as_uint(b[0])), "r"(__float_as_uint(b[1])));
}
#endif

namespace attnc {

#ifdef ATTNC_MMA
// x as the TF32 pair (hi, lo) of 3xTF32 (lo = 0 in plain TF32).
__device__ __forceinline__ void split_tf32(float x, float& hi, float& lo) {
  hi = attnc_tf32(x);
  lo = ATTNC_MMA_PASSES == 3 ? attnc_tf32(x - hi) : 0.0f;
}

// The tensor-core product. Each warp owns 16 x 8 NT outputs; per 8 steps of k it loads one A
// fragment (4 values per lane) and NT B fragments (2 each) from shared memory and issues
// ATTNC_MMA_PASSES mma per B fragment, the small terms first. Entries past `rows`, past
// `depth` (and above the diagonal under LOWER_A) enter as zeros, so no uninitialised value
// reaches a sum. Loops are warp-uniform, as mma.sync requires. Needs M % 16, K % 8, N % 8 = 0
// and whole warps.
template <int M, int K, int N, int TRI, bool ACC, bool BT>
__device__ void gemm_mma(const float* a, const float* b, float* dst, int rows, int depth) {
  constexpr int NT = N % 32 == 0 ? 4 : N % 16 == 0 ? 2 : 1;
  constexpr int QN = N / (8 * NT), TILES = (M / 16) * QN, PA = pitch(K), PB = pitch(N);
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  for (int u = threadIdx.x / 32; u < TILES; u += blockDim.x / 32) {
    const int r0 = (u / QN) * 16, c0 = (u % QN) * 8 * NT;
    float acc[NT][4] = {};
    const bool above = TRI == LOWER_OUT && c0 > r0 + 15;  // every output above the diagonal
    const int kend = TRI == LOWER_A ? imin(depth, r0 + 16) : depth;
    if (r0 < rows && !above) {
      for (int k0 = 0; k0 < kend; k0 += 8) {
        float ahi[4], alo[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int r = r0 + g + 8 * (i & 1), k = k0 + t + 4 * (i >> 1);
          const bool live = r < rows && k < kend && !(TRI == LOWER_A && k > r);
          const float* at = ATTNC_SH_IF(live, a + r * PA + k);
          split_tf32(live ? *at : 0.0f, ahi[i], alo[i]);
        }
#pragma unroll
        for (int j = 0; j < NT; ++j) {
          float bhi[2], blo[2];
#pragma unroll
          for (int i = 0; i < 2; ++i) {
            const int k = k0 + t + 4 * i;
            const float* at = ATTNC_SH_IF(k < kend, b_at<BT, K, N>(b, k, c0 + 8 * j + g));
            split_tf32(k < kend ? *at : 0.0f, bhi[i], blo[i]);
          }
          if (ATTNC_MMA_PASSES == 3) {
            attnc_mma_tf32(acc[j], alo, bhi);
            attnc_mma_tf32(acc[j], ahi, blo);
          }
          attnc_mma_tf32(acc[j], ahi, bhi);
        }
      }
    }
    // Each lane's outputs come in pairs of adjacent columns: one float2 each where no mask
    // applies.
#pragma unroll
    for (int j = 0; j < NT; ++j) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = r0 + g + 8 * h, c = c0 + 8 * j + 2 * t;
        float* out = dst + r * PB + c;
        if (r < rows && TRI != LOWER_OUT) {
          float2* out2 = ATTNC_SH(reinterpret_cast<float2*>(out));
          float2 v = make_float2(acc[j][2 * h], acc[j][2 * h + 1]);
          if (ACC) {
            const float2 d = *out2;
            v = make_float2(d.x + v.x, d.y + v.y);
          }
          *out2 = v;
          continue;
        }
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float* o = ATTNC_SH(out + e);
          if (r >= rows || (TRI == LOWER_OUT && c + e > r)) {
            if (!ACC) *o = 0.0f;
          } else {
            *o = ACC ? *o + acc[j][2 * h + e] : acc[j][2 * h + e];
          }
        }
      }
    }
  }
}
#endif

// Tensor cores where the shape allows, else the register-tiled SIMT product, else one output
// per thread. BT: b is stored N x K (gemm_bt).
template <int M, int K, int N, int TRI, bool ACC, bool BT = false>
__device__ void gemm(const float* a, const float* b, float* dst, int rows, int depth) {
#ifdef ATTNC_MMA
  if constexpr (M % 16 == 0 && K % 8 == 0 && N % 8 == 0) {
    gemm_mma<M, K, N, TRI, ACC, BT>(a, b, dst, rows, depth);
    return;
  }
#endif
  if constexpr (M % 4 == 0 && K % 4 == 0 && N % 4 == 0) {
    gemm_tiled<M, K, N, TRI, ACC, BT>(a, b, dst, rows, depth);
  } else {
    gemm_scalar<M, K, N, TRI, ACC, BT>(a, b, dst, rows, depth);
  }
}

// dst (= or +=) a (M x K) . b^T, b stored N x K: a product over the key tile itself where the
// plan would otherwise transpose it first. In the tensor-core B fragment a lane reads
// b[g][t + 4i]: rows pitch(K) = 4 (mod 8) apart, 32 banks.
template <int M, int K, int N, int TRI, bool ACC>
__device__ void gemm_bt(const float* a, const float* b, float* dst, int rows, int depth) {
  gemm<M, K, N, TRI, ACC, true>(a, b, dst, rows, depth);
}

template <int R, int W>
__device__ void row_sums(const float* a, int rows, float* out) {
  for (int r = threadIdx.x; r < rows; r += blockDim.x) {
    float s = 0.0f;
    for (int cc = 0; cc < W; ++cc) s += *ATTNC_SH(a + r * pitch(W) + skew(cc, r, W));
    out[r] = s;
  }
}

template <int R, int W, bool ACC>
__device__ void dot_rows(const float* x, const float* z, int rows, float* out) {
  for (int r = threadIdx.x; r < rows; r += blockDim.x) {
    float s = 0.0f;
    for (int cc = 0; cc < W; ++cc) {
      const int c = skew(cc, r, W);
      s = fmaf(*ATTNC_SH(x + r * pitch(W) + c), *ATTNC_SH(z + c), s);
    }
    out[r] = ACC ? out[r] + s : s;
  }
}

template <int R, int W>
__device__ void add_col_sums(const float* k, int rows, float* z) {
  for (int c = threadIdx.x; c < W; c += blockDim.x) {
    float s = z[c];
    for (int r = 0; r < rows; ++r) s += *ATTNC_SH(k + r * pitch(W) + c);
    z[c] = s;
  }
}

template <int R, int W>
__device__ void divide_rows(float* o, const float* den, int rows, float eps) {
  for (int i = threadIdx.x; i < rows * W; i += blockDim.x)
    *ATTNC_SH(o + i / W * pitch(W) + i % W) *= 1.0f / (den[i / W] + eps);
}

// a[t][s] *= exp(G_t - G_s) for s <= t.
template <int R>
__device__ void decay_scores(float* a, const float* g, int rows) {
  for (int i = threadIdx.x; i < rows * R; i += blockDim.x) {
    const int t = i / R, s = i - t * R;
    if (s <= t) *ATTNC_SH(a + t * pitch(R) + s) *= expf(g[t] - g[s]);
  }
}

// x[t] *= exp(G_t).
template <int R, int W>
__device__ void decay_rows(float* x, const float* g, int rows) {
  for (int i = threadIdx.x; i < rows * W; i += blockDim.x)
    *ATTNC_SH(x + i / W * pitch(W) + i % W) *= expf(g[i / W]);
}

// kt (F x R): column s *= exp(G_last - G_s); columns past `rows` become zero.
template <int F, int R>
__device__ void decay_cols_to_end(float* kt, const float* g, int rows) {
  if (rows <= 0) return;
  const float last = g[rows - 1];
  for (int i = threadIdx.x; i < F * R; i += blockDim.x) {
    const int s = i % R;
    float* e = ATTNC_SH(kt + i / R * pitch(R) + s);
    *e = s < rows ? *e * expf(last - g[s]) : 0.0f;
  }
}

// x *= exp(G_last), the whole tile (N counts the rows' padding too).
template <int N>
__device__ void decay_all(float* x, const float* g, int rows) {
  if (rows <= 0) return;
  const float f = expf(g[rows - 1]);
  for (int i = threadIdx.x; i < N; i += blockDim.x) x[i] *= f;
}

// dst <- src - dst on live rows.
template <int R, int W>
__device__ void sub_from(float* dst, const float* src, int rows) {
  for (int i = threadIdx.x; i < rows * W; i += blockDim.x) {
    const int at = i / W * pitch(W) + i % W;
    *ATTNC_SH(dst + at) = *ATTNC_SH(src + at) - dst[at];
  }
}

// Forward substitution, in place: X_t = beta_t (R_t - sum_{s<t} L_ts X_s), by blocks of 16
// rows (flash-linear-attention's solve_tril blocking, without forming an inverse). Per block:
// first every (row, column) of the block drops the rows solved in earlier blocks, all threads
// at once (a product: lanes read consecutive columns of X and one broadcast entry of L); then
// substitution inside the block, one thread per column, at most 15 terms per row. The serial
// chain of a 64-row chunk is 48 + 4 x 120 fmaf instead of 2016.
template <int R, int W>
__device__ void solve(float* x, const float* lower, const float* beta, int rows) {
  constexpr int BLOCK = 16, PX = pitch(W), PL = pitch(R);
  for (int b0 = 0; b0 < rows; b0 += BLOCK) {
    const int bend = imin(b0 + BLOCK, rows);
    if (b0 > 0) {
      for (int i = threadIdx.x; i < (bend - b0) * W; i += blockDim.x) {
        const int t = b0 + i / W, c = i % W;
        float acc = 0.0f;
        for (int s = 0; s < b0; ++s)
          acc = fmaf(*ATTNC_SH(lower + t * PL + s), *ATTNC_SH(x + s * PX + c), acc);
        *ATTNC_SH(x + t * PX + c) -= acc;
      }
      __syncthreads();
    }
    for (int c = threadIdx.x; c < W; c += blockDim.x) {
      for (int t = b0; t < bend; ++t) {
        float acc = *ATTNC_SH(x + t * PX + c);
        for (int s = b0; s < t; ++s)
          acc = fmaf(-*ATTNC_SH(lower + t * PL + s), *ATTNC_SH(x + s * PX + c), acc);
        x[t * PX + c] = beta[t] * acc;
      }
    }
    __syncthreads();
  }
}

// The recurrent step in one pass over the state (one token): S <- d S + k^T v with
// d = exp(g) when DECAY, then o = q S; one thread per value column.
template <int F, int DV, bool DECAY>
__device__ void step_update(float* s, const float* k, const float* v, const float* q, float* o,
                            const float* g) {
  const float d = DECAY ? expf(g[0]) : 1.0f;
  for (int c = threadIdx.x; c < DV; c += blockDim.x) {
    const float vc = v[c];
    float acc = 0.0f;
    for (int f = 0; f < F; ++f) {
      float* e = ATTNC_SH(s + f * pitch(DV) + c);
      const float x = fmaf(k[f], vc, d * *e);
      *e = x;
      acc = fmaf(q[f], x, acc);
    }
    o[c] = acc;
  }
}

// update = momentum(mu), one token (one thread per value column): m <- mu m + k^T v,
// S <- S + m, o = q S. With mu = 0 the state takes additive's single fmaf, so S equals
// `update = additive`'s bit for bit.
template <int F, int DV>
__device__ void momentum_step(float* s, float* m, const float* k, const float* v, const float* q,
                              float* o, float mu) {
  for (int c = threadIdx.x; c < DV; c += blockDim.x) {
    const float vc = v[c];
    float acc = 0.0f;
    for (int f = 0; f < F; ++f) {
      const int i = f * pitch(DV) + c;
      float x;
      if (mu == 0.0f) {
        m[i] = k[f] * vc;
        x = fmaf(k[f], vc, s[i]);
      } else {
        const float mi = fmaf(k[f], vc, mu * m[i]);
        m[i] = mi;
        x = s[i] + mi;
      }
      s[i] = x;
      acc = fmaf(q[f], x, acc);
    }
    o[c] = acc;
  }
}

// update = momentum(mu), the key sum for one token: n <- mu n + k, z <- z + n.
template <int F>
__device__ void momentum_key_sum(float* z, float* n, const float* k, float mu) {
  for (int f = threadIdx.x; f < F; f += blockDim.x) {
    const float x = fmaf(mu, n[f], k[f]);
    n[f] = x;
    z[f] += x;
  }
}

// short_conv: dst (R x W) <- rows t0.. of a width-D input (columns col0..col0+W), convolved along
// the sequence per channel and through SiLU: row t is silu(sum_j w[c][j] x[t - KW + 1 + j][c]).
// Rows before the sequence come from the carried tail ((KW - 1) x D, oldest first); rows past
// `rows` become zero. Fused into the load: the convolved rows never go to global memory.
template <int R, int W, int KW>
__device__ void load_rows_conv(float* dst, Tok<const float> src, int col0, int t0, int rows,
                               const float* w, const float* tail, int d) {
  for (int i = threadIdx.x; i < R * W; i += blockDim.x) {
    const int r = i / W, c = col0 + i - r * W;
    float acc = 0.0f;
    if (r < rows) {
      for (int j = 0; j < KW; ++j) {
        const int t = t0 + r - (KW - 1) + j;
        const float x = t >= 0 ? src.base[(long)t * src.stride + c] : tail[(long)(KW - 1 + t) * d + c];
        acc = fmaf(w[c * KW + j], x, acc);
      }
      acc = acc / (1.0f + expf(-acc));
    }
    *ATTNC_SH(dst + r * pitch(W) + c - col0) = acc;
  }
}

// short_conv: tail ((KW - 1) x D, oldest first) <- the last KW - 1 raw rows of a sequence of n
// tokens, with the old tail's rows in front when n < KW - 1. One thread per column, rows in
// order: row i reads old row n + i >= i, which this thread has not overwritten yet.
template <int KW, int D>
__device__ void conv_tail(float* tail, Tok<const float> src, int n) {
  for (int c = threadIdx.x; c < D; c += blockDim.x)
    for (int i = 0; i < KW - 1; ++i) {
      const int t = n - (KW - 1) + i;
      tail[i * D + c] = t >= 0 ? src.base[(long)t * src.stride + c] : tail[(n + i) * D + c];
    }
}

// rpe: the FFT length for n tokens, the power of two >= 2n.
__device__ __forceinline__ long fft_len(int n) {
  long l = 1;
  while (l < 2L * n) l *= 2;
  return l;
}

// rpe: an in-place FFT of one complex f64 sequence of length l (re, im interleaved) by the whole
// block: radix-2 Stockham stages, ping-ponging with y (same length), twiddles in f64.
// `inverse`: conjugate twiddles, unscaled (the caller divides by l).
__device__ void fft(double* x, double* y, long l, bool inverse) {
  const double two_pi = 6.283185307179586;
  double* a = x;
  double* b = y;
  for (long len = l, st = 1; len > 1; len /= 2, st *= 2) {
    const long m = len / 2;
    for (long i = threadIdx.x; i < l / 2; i += blockDim.x) {
      const long p = i / st, q = i - p * st;
      const double th = two_pi * (double)p / (double)len;
      const double wr = cos(th), wi = inverse ? sin(th) : -sin(th);
      const long ia = 2 * (q + st * p), ib = 2 * (q + st * (p + m));
      const double ar = a[ia], ai = a[ia + 1], br = a[ib], bi = a[ib + 1];
      const long o0 = 2 * (q + st * 2 * p), o1 = 2 * (q + st * (2 * p + 1));
      b[o0] = ar + br;
      b[o0 + 1] = ai + bi;
      b[o1] = (ar - br) * wr - (ai - bi) * wi;
      b[o1 + 1] = (ar - br) * wi + (ai - bi) * wr;
    }
    __syncthreads();
    double* t = a;
    a = b;
    b = t;
  }
  if (a != x) {
    for (long i = threadIdx.x; i < 2 * l; i += blockDim.x) x[i] = a[i];
    __syncthreads();
  }
}

// rpe, one block per (pair of value columns, batch x head): for columns j0 = 2 pair, j1 = j0 + 1
// of v (column DV is the normaliser's ones column when NORM), o[t][j] = sum_f q~[t][f] y_fj[t]
// with y_fj[t] = sum_s exp(bias[head][s - t + n - 1]) k~[s][f] v[s][j] (s <= t when CAUSAL):
// per f, two real sequences as one complex one, FFT, times the weights' spectrum, inverse FFT.
// q~, k~, v come from the chunks' workspace slots (at SQ, SK, SV); `buf` holds 6 l + 2 n
// doubles; the normaliser's column goes to `den` (bh x n).
template <int C, int F, int DV, int WORK, int SQ, int SK, int SV, bool NORM, bool CAUSAL>
__device__ void rpe_columns(const float* work, const float* bias, Tok<float> out, float* den,
                            double* buf, int n, int heads, int bh, int pair) {
  const long l = fft_len(n);
  const int head = bh % heads, chunks = (n - 1) / C + 1;
  const float* b = bias + (long)head * (2 * n - 1);
  double* spec = buf;
  double* x = buf + 2 * l;
  double* y = buf + 4 * l;
  double* acc = buf + 6 * l;
  const int j0 = 2 * pair, j1 = j0 + 1, cols = DV + (NORM ? 1 : 0);
  // The weights as a convolution kernel: w[m] = exp(bias[n - 1 - m]) for the offset m = t - s,
  // m >= 0 at index m, m < 0 (not causal) at l + m.
  for (long i = threadIdx.x; i < l; i += blockDim.x) {
    double w = 0.0;
    if (i < n) w = exp((double)b[n - 1 - i]);
    else if (!CAUSAL && i > l - n) w = exp((double)b[n - 1 - (i - l)]);
    spec[2 * i] = w;
    spec[2 * i + 1] = 0.0;
  }
  for (long i = threadIdx.x; i < 2L * n; i += blockDim.x) acc[i] = 0.0;
  __syncthreads();
  fft(spec, y, l, false);
  auto row = [&](long s) { return work + ((long)bh * chunks + s / C) * WORK; };
  auto value = [&](const float* slot, long r, int j) -> double {
    return j < DV ? (double)slot[SV + r * DV + j] : 1.0;
  };
  for (int f = 0; f < F; ++f) {
    for (long s = threadIdx.x; s < l; s += blockDim.x) {
      double re = 0.0, im = 0.0;
      if (s < n) {
        const float* slot = row(s);
        const long r = s % C;
        const double kf = slot[SK + r * F + f];
        re = kf * value(slot, r, j0);
        im = j1 < cols ? kf * value(slot, r, j1) : 0.0;
      }
      x[2 * s] = re;
      x[2 * s + 1] = im;
    }
    __syncthreads();
    fft(x, y, l, false);
    for (long i = threadIdx.x; i < l; i += blockDim.x) {
      const double xr = x[2 * i], xi = x[2 * i + 1], sr = spec[2 * i], si = spec[2 * i + 1];
      x[2 * i] = xr * sr - xi * si;
      x[2 * i + 1] = xr * si + xi * sr;
    }
    __syncthreads();
    fft(x, y, l, true);
    for (long t = threadIdx.x; t < n; t += blockDim.x) {
      const double qf = row(t)[SQ + (t % C) * F + f];
      acc[2 * t] += qf * x[2 * t];
      acc[2 * t + 1] += qf * x[2 * t + 1];
    }
    __syncthreads();
  }
  for (long t = threadIdx.x; t < n; t += blockDim.x) {
    for (int e = 0; e < 2; ++e) {
      const int j = j0 + e;
      const float o = (float)(acc[2 * t + e] / (double)l);
      if (j < DV) out.base[t * out.stride + j] = o;
      else if (NORM && j == DV) den[(long)bh * n + t] = o;
    }
  }
}

// rpe with normalize = sum: rows c0.. of the output over their denominators.
template <int C, int DV>
__device__ void rpe_divide(Tok<float> out, const float* den, int c0, int rows, float eps) {
  for (int i = threadIdx.x; i < rows * DV; i += blockDim.x) {
    const int r = i / DV, j = i - r * DV;
    out.base[(long)(c0 + r) * out.stride + j] /= den[c0 + r] + eps;
  }
}

// Softmax: running maxima -inf, running sums and the accumulator zero.
template <int R, int W>
__device__ void softmax_init(float* m, float* l, float* o) {
  for (int i = threadIdx.x; i < R * pitch(W); i += blockDim.x) o[i] = 0.0f;
  for (int r = threadIdx.x; r < R; r += blockDim.x) { m[r] = neg_inf(); l[r] = 0.0f; }
}

template <int R>
__device__ void mask_above_diagonal(float* a, int rows) {
  for (int i = threadIdx.x; i < rows * R; i += blockDim.x) {
    const int t = i / R, s = i - t * R;
    if (s > t) *ATTNC_SH(a + t * pitch(R) + s) = neg_inf();
  }
}

// One key tile of the online softmax, one thread per query row: rescale what was accumulated
// to the new running maximum and turn the scores into exp(a - max) (zero past `cols`).
template <int R, int W>
__device__ void online_softmax(float* a, int rows, int cols, float* m, float* l, float* o) {
  for (int r = threadIdx.x; r < rows; r += blockDim.x) {
    float* row = a + r * pitch(R);
    float tile_max = neg_inf();
    for (int ss = 0; ss < R; ++ss) {
      const int s = skew(ss, r, R);
      const float* at = ATTNC_SH_IF(s < cols, row + s);
      if (s < cols) tile_max = fmaxf(tile_max, *at);
    }
    const float new_max = fmaxf(m[r], tile_max);
    if (new_max == neg_inf()) {
      for (int ss = 0; ss < R; ++ss) *ATTNC_SH(row + skew(ss, r, R)) = 0.0f;
      continue;
    }
    const float alpha = expf(m[r] - new_max);
    float sum = 0.0f;
    for (int ss = 0; ss < R; ++ss) {
      const int s = skew(ss, r, R);
      float* e = ATTNC_SH(row + s);
      const float p = s < cols ? expf(*e - new_max) : 0.0f;
      *e = p;
      sum += p;
    }
    l[r] = l[r] * alpha + sum;
    for (int cc = 0; cc < W; ++cc) *ATTNC_SH(o + r * pitch(W) + skew(cc, r, W)) *= alpha;
    m[r] = new_max;
  }
}

}  // namespace attnc
// ---- end of the tile library ------------------------------------------------------------------
