// tern's CUDA kernels, compiled at start-up by NVRTC (see kernels.rs). Every reduction has a
// fixed split and a fixed order (no float atomics), so a step gives the same bits every time.
// Index tensors (labels, argmax) hold u32 values in float slots.

typedef unsigned int u32;
typedef unsigned long long u64;

// NVRTC has no <math.h>: the constants and classification macros are spelled out here.
#define NEG_INF __int_as_float(0xff800000)
// finite: x − x is 0 for finite x, NaN for NaN and ±inf
#define IS_FINITE(x) ((x) - (x) == 0.0f)
#define GRID_STRIDE(i, n) for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (long long)blockDim.x * gridDim.x)

// The channel (i / inner) % c of element i of a grid-stride loop, kept up to date as i
// advances by the stride: no division per element (the loops are memory-bound only without).
struct ChannelOf {
    long long inner, pos, dpos;
    int c, ch, dch;
    __device__ ChannelOf(long long i, long long stride, long long inner_, int c_) {
        inner = inner_;
        c = c_;
        pos = i % inner;
        ch = (int)((i / inner) % c);
        dpos = stride % inner;
        dch = (int)((stride / inner) % c);
    }
    __device__ __forceinline__ void advance() {
        pos += dpos;
        ch += dch;
        if (pos >= inner) { pos -= inner; ch += 1; }
        if (ch >= c) ch -= c;
    }
};

// GRID_STRIDE with `chan.ch` the channel of element i, for [.., c, inner] data.
#define GRID_STRIDE_CH(i, n, inner, c, chan) \
    ChannelOf chan((long long)blockIdx.x * blockDim.x + threadIdx.x, (long long)blockDim.x * gridDim.x, inner, c); \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (long long)blockDim.x * gridDim.x, chan.advance())

// Reduction of v over the block with `op` (blockDim.x a multiple of 32, at most 1024; 0 the
// identity: sums, and maxima of non-negative values); the result is valid in thread 0. The
// tree order is fixed, so the result is deterministic.
template <typename T, typename Op>
__device__ T block_reduce(T v, Op op) {
    __shared__ T part[32];
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_down_sync(0xffffffff, v, o));
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    __syncthreads();
    if (lane == 0) part[warp] = v;
    __syncthreads();
    v = T(0);
    if (warp == 0) {
        int nw = blockDim.x >> 5;
        v = lane < nw ? part[lane] : T(0);
        for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_down_sync(0xffffffff, v, o));
    }
    return v;
}

struct Add {
    __device__ double operator()(double a, double b) const { return a + b; }
};
struct Max {
    __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

__device__ double block_sum(double v) { return block_reduce(v, Add()); }
__device__ float block_max(float v) { return block_reduce(v, Max()); }

// Sum of v over each warp in a fixed tree order; valid in lane 0.
__device__ double warp_sum(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffff, v, o);
    return v;
}

// Image tensors are [n, c, positions] (NCHW) or [n, positions, c] (NHWC, `nhwc` != 0).
// Element i's (image, channel, position), and the element at (image, channel, position).
struct Nc {
    long long img;
    int ch, pos;
};
__device__ __forceinline__ Nc split_index(long long i, int c, int positions, int nhwc) {
    Nc r;
    if (i < 0x7fffffffLL) {
        // 32-bit division: the 64-bit one costs tens of instructions and made the pooling
        // kernels compute-bound
        unsigned u = (unsigned)i, uc = (unsigned)c, up = (unsigned)positions;
        unsigned first = nhwc ? uc : up, rest = u / first;
        unsigned second = nhwc ? up : uc;
        unsigned a = u - rest * first, b = rest % second;
        r.img = rest / second;
        r.ch = (int)(nhwc ? a : b);
        r.pos = (int)(nhwc ? b : a);
    } else if (nhwc) {
        r.ch = (int)(i % c);
        long long rest = i / c;
        r.pos = (int)(rest % positions);
        r.img = rest / positions;
    } else {
        r.pos = (int)(i % positions);
        long long rest = i / positions;
        r.ch = (int)(rest % c);
        r.img = rest / c;
    }
    return r;
}
__device__ __forceinline__ long long at(long long img, int ch, int pos, int c, int positions, int nhwc) {
    return nhwc ? (img * positions + pos) * c + ch : (img * c + ch) * positions + pos;
}

// ---------------------------------------------------------------- storage types
// Activations are stored as FP32 or as bfloat16 (the upper half of an FP32: 8-bit exponent,
// 7-bit mantissa); kernels load them widened to FP32 with ld() and store them rounded to
// nearest-even with st(). The bf16 type is a plain 16-bit struct: NVRTC then needs no
// <cuda_bf16.h>.
struct bf16 {
    unsigned short bits;
};
__device__ __forceinline__ float ld(const float* p) { return *p; }
__device__ __forceinline__ float ld(const bf16* p) { return __uint_as_float(((unsigned)p->bits) << 16); }
__device__ __forceinline__ void st(float* p, float v) { *p = v; }
__device__ __forceinline__ unsigned short to_bf16(float v) {
#if __CUDA_ARCH__ >= 800
    unsigned short r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(v));
    return r;
#else
    unsigned u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;  // NaN stays NaN
    return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
#endif
}
__device__ __forceinline__ void st(bf16* p, float v) { p->bits = to_bf16(v); }
// Four consecutive values (16-byte aligned for f32, 8-byte for bf16: element indices that are
// multiples of 4 in buffers from the pool), for channels-last kernels that take 4 channels.
struct F4 {
    float v[4];
};
__device__ __forceinline__ F4 ld4(const float* p) {
    float4 q = *(const float4*)p;
    F4 r = {{q.x, q.y, q.z, q.w}};
    return r;
}
__device__ __forceinline__ F4 ld4(const bf16* p) {
    uint2 q = *(const uint2*)p;
    F4 r = {{__uint_as_float(q.x << 16), __uint_as_float(q.x & 0xffff0000u), __uint_as_float(q.y << 16),
             __uint_as_float(q.y & 0xffff0000u)}};
    return r;
}
__device__ __forceinline__ void st4(float* p, F4 a) { *(float4*)p = make_float4(a.v[0], a.v[1], a.v[2], a.v[3]); }
__device__ __forceinline__ void st4(bf16* p, F4 a) {
    uint2 q;
    q.x = (unsigned)to_bf16(a.v[0]) | ((unsigned)to_bf16(a.v[1]) << 16);
    q.y = (unsigned)to_bf16(a.v[2]) | ((unsigned)to_bf16(a.v[3]) << 16);
    *(uint2*)p = q;
}

// Element i of a buffer of either type (`bf`: bf16), for the few kernels that take both.
__device__ __forceinline__ float ld_any(const void* p, long long i, int bf) {
    return bf ? ld((const bf16*)p + i) : ((const float*)p)[i];
}
__device__ __forceinline__ void st_any(void* p, long long i, int bf, float v) {
    if (bf) st((bf16*)p + i, v); else ((float*)p)[i] = v;
}

// The output positions lo..=hi (clipped to 0..n_out-1) of a pooling window of k taps with
// this stride and padding that cover input position i (for the backward gather forms).
__device__ __forceinline__ void covering(int i, int pad, int k, int stride, int n_out, int& lo, int& hi) {
    lo = max(0, (i + pad - k + stride) / stride);
    hi = min(n_out - 1, (i + pad) / stride);
}

// dst = src converted between layouts (to_nhwc != 0 reads NCHW and writes NHWC, else back)
// and storage types.
extern "C" __global__ void convert_layout(const void* src, int src_bf, void* dst, int dst_bf, int c, int hw,
                                          int to_nhwc, long long total) {
    GRID_STRIDE(i, total) {
        Nc e = split_index(i, c, hw, to_nhwc);
        st_any(dst, i, dst_bf, ld_any(src, at(e.img, e.ch, e.pos, c, hw, !to_nhwc), src_bf));
    }
}

// dst = src, between storage types.
extern "C" __global__ void cast(const void* src, int src_bf, void* dst, int dst_bf, long long n) {
    GRID_STRIDE(i, n) st_any(dst, i, dst_bf, ld_any(src, i, src_bf));
}

extern "C" __global__ void fill(void* x, int bf, float v, long long n) {
    GRID_STRIDE(i, n) st_any(x, i, bf, v);
}

// ---------------------------------------------------------------- per-channel sums
// x: [n, c, hw]. Block (s, ch) sums images s·per .. (s+1)·per of channel ch; the partial
// results are added in split order by the finalising kernels (kernels_act.cu).

// The same partial sums of x viewed as [rows, c] (NHWC, or a linear layer's [n, c]): block
// (s, g) takes channels 32·g .. 32·g + 31 (one per lane, so reads are coalesced) over rows
// s·per .. (s+1)·per, each of its 8 warps every 8th row; `term` gives the two summands of
// element (index, channel). The warps' sums are added in warp order.
template <typename Term>
__device__ void rows_partial(Term term, double* partial, long long rows, int c, int splits) {
    __shared__ double sa[8][32], sb[8][32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int s = blockIdx.x, ch = blockIdx.y * 32 + lane;
    long long per = (rows + splits - 1) / splits;
    long long r0 = s * per, r1 = min(rows, r0 + per);
    double a = 0.0, b = 0.0;
    if (ch < c)
        for (long long r = r0 + warp; r < r1; r += 8) term(r * c + ch, ch, a, b);
    sa[warp][lane] = a;
    sb[warp][lane] = b;
    __syncthreads();
    if (warp == 0 && ch < c) {
        for (int k = 1; k < 8; k++) {
            a += sa[k][lane];
            b += sb[k][lane];
        }
        partial[((long long)ch * splits + s) * 2] = a;
        partial[((long long)ch * splits + s) * 2 + 1] = b;
    }
}

template <typename A>
struct SumTerm {
    const A* x;
    __device__ void operator()(long long i, int, double& a, double& b) const {
        float v = ld(x + i);
        a += v;
        b += (double)v * v;
    }
};

// Σ over splits of partial[(ch·splits + s)·2 + k], one warp per channel, in a fixed order.
__device__ double split_sum(const double* partial, int splits, int ch, int k) {
    int lane = threadIdx.x & 31;
    double a = 0.0;
    for (int s = lane; s < splits; s += 32) a += partial[((long long)ch * splits + s) * 2 + k];
    return warp_sum(a);
}

// One warp per channel: the channel and whether this lane writes its results.
#define WARP_CHANNEL(ch, c) \
    int ch = (int)(((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5); \
    if (ch >= (c)) return;
#define LANE0 ((threadIdx.x & 31) == 0)

// Column sums of dy over images and positions: a conv's (or linear's) bias gradient.
extern "C" __global__ void channel_sum_finalize(const double* partial, int splits, float* out, int c) {
    WARP_CHANNEL(ch, c)
    double a = split_sum(partial, splits, ch, 0);
    if (LANE0) out[ch] = (float)a;
}

// Batch statistics from the partial sums; running statistics as PyTorch updates them
// (momentum, unbiased variance); saved mean and 1/σ for the backward.
extern "C" __global__ void bn_finalize(const double* partial, int splits, double count, float eps, float momentum,
                                       float* running_mean, float* running_var, float* mean_out, float* inv_std_out, int c) {
    WARP_CHANNEL(ch, c)
    double a = split_sum(partial, splits, ch, 0), b = split_sum(partial, splits, ch, 1);
    if (!LANE0) return;
    double mean = a / count;
    double var = fmax(b / count - mean * mean, 0.0);
    double unbias = count > 1.0 ? count / (count - 1.0) : 1.0;
    mean_out[ch] = (float)mean;
    inv_std_out[ch] = 1.0f / sqrtf((float)var + eps);
    running_mean[ch] = (1.0f - momentum) * running_mean[ch] + momentum * (float)mean;
    running_var[ch] = (1.0f - momentum) * running_var[ch] + momentum * (float)(var * unbias);
}

// Saved statistics from the running ones (eval mode, frozen statistics).
extern "C" __global__ void bn_eval_stats(const float* running_mean, const float* running_var, float eps,
                                         float* mean_out, float* inv_std_out, int c) {
    int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= c) return;
    mean_out[ch] = running_mean[ch];
    inv_std_out[ch] = 1.0f / sqrtf(running_var[ch] + eps);
}

// dz = dy through the fused ReLU's mask (recomputed from x), or dy.
__device__ __forceinline__ float bn_dz(float xv, float d, float sc, float sh, int relu, float t, float extra) {
    if (!relu) return d;
    return xv * sc + sh > t ? d + extra : 0.0f;
}

template <typename A>
struct BnBwdTerm {
    const A *x, *dy;
    const float *gamma, *beta, *mean, *inv_std;
    int relu;
    float t, extra;
    __device__ void operator()(long long i, int ch, double& a, double& b) const {
        float sc = gamma[ch] * inv_std[ch], sh = beta[ch] - mean[ch] * sc;
        float xv = ld(x + i);
        float dz = bn_dz(xv, ld(dy + i), sc, sh, relu, t, extra);
        a += dz;
        b += (double)dz * (xv - mean[ch]);
    }
};

extern "C" __global__ void bn_bwd_finalize(const double* partial, int splits, const float* inv_std, float* dgamma,
                                           float* dbeta, int c) {
    WARP_CHANNEL(ch, c)
    double a = split_sum(partial, splits, ch, 0), b = split_sum(partial, splits, ch, 1);
    if (!LANE0) return;
    dbeta[ch] = (float)a;
    dgamma[ch] = (float)(b * (double)inv_std[ch]);
}

// ---------------------------------------------------------------- loss
// One block; warp w takes rows w, w + warps, ...; per-row results are summed in a fixed
// order. stats = (mean loss, top-1 correct, top-k correct). dlogits may be null.
extern "C" __global__ void softmax_xent(const float* logits, const u32* labels, float* dlogits, float* stats, int n,
                                        int classes, int k, int skip_correct) {
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    double loss = 0.0, top1 = 0.0, topk = 0.0;
    for (int row = warp; row < n; row += warps) {
        const float* l = logits + (long long)row * classes;
        int y = (int)labels[row];
        float v = l[y];
        float mx = NEG_INF;
        int better = 0, finite = 1;
        for (int j = lane; j < classes; j += 32) {
            float o = l[j];
            mx = fmaxf(mx, o);
            better += (o > v || (o == v && j < y));
            finite &= IS_FINITE(o);
        }
        for (int o = 16; o > 0; o >>= 1) {
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, o));
            better += __shfl_xor_sync(0xffffffff, better, o);
            finite &= __shfl_xor_sync(0xffffffff, finite, o);
        }
        float sum = 0.0f;
        for (int j = lane; j < classes; j += 32) sum += expf(l[j] - mx);
        for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffff, sum, o);
        float log_sum = logf(sum) + mx;
        int c1 = finite && better < 1, ck = finite && better < k;
        if (lane == 0) {
            loss += (double)(log_sum - v);
            top1 += c1;
            topk += ck;
        }
        if (dlogits) {
            float wgt = (skip_correct && c1) ? 0.0f : 1.0f;
            for (int j = lane; j < classes; j += 32) {
                float p = expf(l[j] - log_sum);
                dlogits[(long long)row * classes + j] = wgt * (p - (j == y ? 1.0f : 0.0f)) / (float)n;
            }
        }
    }
    loss = block_sum(loss);
    top1 = block_sum(top1);
    topk = block_sum(topk);
    if (threadIdx.x == 0) {
        stats[0] = (float)(loss / n);
        stats[1] = (float)top1;
        stats[2] = (float)topk;
    }
}

// ---------------------------------------------------------------- ternary weights (Eq. 1)
// rule: 0 mean|W|·f, 1 fixed f, 2 max|W|·f, 3 the |W| at rank round(f·n) (zero fraction f).
// scale: 0 none, 1 layer, 2 channel. Every pass over the weights is spread over many blocks
// (one block reading a ResNet's 2.4 M weights took ~0.3 ms, a fifth of a step); the splits
// depend on the sizes only, so the result does not depend on the device.

// Block b of `parts`: partial[b] = (Σ|w|, max|w|) over its slice.
extern "C" __global__ void tern_abs_partial(const float* w, long long n, int parts, double* partial) {
    long long per = (n + parts - 1) / parts;
    long long i0 = blockIdx.x * per, i1 = min(n, i0 + per);
    double s = 0.0;
    float m = 0.0f;
    for (long long i = i0 + threadIdx.x; i < i1; i += blockDim.x) {
        float a = fabsf(w[i]);
        s += a;
        m = fmaxf(m, a);
    }
    s = block_sum(s);
    m = block_max(m);
    if (threadIdx.x == 0) {
        partial[2 * blockIdx.x] = s;
        partial[2 * blockIdx.x + 1] = (double)m;
    }
}

// One block: Δ into scratch[0], from the partials (rules 0–2) or by a search (rule 3).
extern "C" __global__ void tern_threshold(const float* w, long long n, int rule, float f, const double* partial,
                                          int parts, float* scratch) {
    __shared__ float delta_s;
    if (rule == 0 || rule == 1) {
        double s = 0.0;
        if (rule == 0)
            for (int b = threadIdx.x; b < parts; b += blockDim.x) s += partial[2 * b];
        s = block_sum(s);
        // the CPU sums |w| in f32 in order; f64 here: the two agree to rounding
        if (threadIdx.x == 0) delta_s = rule == 0 ? f * (float)(s / (double)(n > 0 ? n : 1)) : f;
    } else if (rule == 2) {
        float m = 0.0f;
        for (int b = threadIdx.x; b < parts; b += blockDim.x) m = fmaxf(m, (float)partial[2 * b + 1]);
        m = block_max(m);
        if (threadIdx.x == 0) delta_s = f * m;
    } else {
        long long kth = llroundf(f * (float)n);  // half away from zero, as Rust's round()
        if (kth == 0) {
            if (threadIdx.x == 0) delta_s = -1.0f;
        } else {
            // the kth smallest |w|: non-negative floats order as their bit patterns
            __shared__ u32 lo_s, hi_s;
            if (threadIdx.x == 0) { lo_s = 0; hi_s = 0x7f800000u; }
            __syncthreads();
            while (true) {
                u32 lo = lo_s, hi = hi_s;
                if (lo >= hi) break;
                u32 mid = lo + (hi - lo) / 2;
                double cnt = 0.0;
                for (long long i = threadIdx.x; i < n; i += blockDim.x) cnt += (__float_as_uint(fabsf(w[i])) <= mid);
                cnt = block_sum(cnt);
                __syncthreads();
                if (threadIdx.x == 0) {
                    if ((long long)cnt >= kth) hi_s = mid; else lo_s = mid + 1;
                }
                __syncthreads();
            }
            if (threadIdx.x == 0) delta_s = __uint_as_float(lo_s);
        }
    }
    __syncthreads();
    if (threadIdx.x == 0) scratch[0] = delta_s;
}

// One block per row: row_stats[row] = (Σ|w| over |w| > Δ, their count).
extern "C" __global__ void tern_row_stats(const float* w, long long cols, const float* scratch, double* row_stats) {
    long long row = blockIdx.x;
    const float* wr = w + row * cols;
    float delta = scratch[0];
    double s = 0.0, cnt = 0.0;
    for (long long i = threadIdx.x; i < cols; i += blockDim.x) {
        float a = fabsf(wr[i]);
        if (a > delta) { s += a; cnt += 1.0; }
    }
    s = block_sum(s);
    cnt = block_sum(cnt);
    if (threadIdx.x == 0) {
        row_stats[2 * row] = s;
        row_stats[2 * row + 1] = cnt;
    }
}

// One block per row: q = ±α or 0, α the mean kept |w| of the layer (scale 1) or of the row
// (scale 2), 1 without a scale; row_zeros[row] = zeros in the row.
extern "C" __global__ void tern_apply(const float* w, float* q, long long cols, long long rows, int scale,
                                      const float* scratch, const double* row_stats, float* row_zeros) {
    long long row = blockIdx.x;
    const float* wr = w + row * cols;
    float* qr = q + row * cols;
    float delta = scratch[0];
    __shared__ float alpha_s;
    if (scale == 1) {
        double s = 0.0, cnt = 0.0;
        for (long long r = threadIdx.x; r < rows; r += blockDim.x) {
            s += row_stats[2 * r];
            cnt += row_stats[2 * r + 1];
        }
        s = block_sum(s);
        cnt = block_sum(cnt);
        if (threadIdx.x == 0) alpha_s = cnt > 0.0 ? (float)(s / cnt) : 0.0f;
    } else if (threadIdx.x == 0) {
        double s = row_stats[2 * row], cnt = row_stats[2 * row + 1];
        alpha_s = scale == 2 ? (cnt > 0.0 ? (float)(s / cnt) : 0.0f) : 1.0f;
    }
    __syncthreads();
    float alpha = alpha_s;
    double zeros = 0.0;
    for (long long i = threadIdx.x; i < cols; i += blockDim.x) {
        float v = wr[i];
        float o = v > delta ? alpha : (v < -delta ? -alpha : 0.0f);
        zeros += (v > delta || v < -delta) ? 0.0 : 1.0;
        qr[i] = o;
    }
    zeros = block_sum(zeros);
    if (threadIdx.x == 0) row_zeros[row] = (float)zeros;
}

extern "C" __global__ void tern_zero_fraction(const float* row_zeros, long long rows, long long n, float* out) {
    double z = 0.0;
    for (long long i = threadIdx.x; i < rows; i += blockDim.x) z += row_zeros[i];
    z = block_sum(z);
    if (threadIdx.x == 0) out[0] = (float)(z / (double)(n > 0 ? n : 1));
}

extern "C" __global__ void straight_through(const float* w, float* g, float clip, long long n) {
    GRID_STRIDE(i, n) if (fabsf(w[i]) > clip) g[i] = 0.0f;
}

extern "C" __global__ void mask_multiply(float* x, const float* m, long long n) {
    GRID_STRIDE(i, n) x[i] *= m[i];
}

// ---------------------------------------------------------------- optimizer

// guard (may be null): the step's loss; a non-finite one leaves w and v untouched.
extern "C" __global__ void sgd(float* w, const float* g, float* v, const float* lr, const float* guard, float mu,
                               int nesterov, float wd, long long n) {
    if (guard && !IS_FINITE(guard[0])) return;
    float rate = lr[0];
    GRID_STRIDE(i, n) {
        float grad = g[i] + wd * w[i];
        float vi = mu * v[i] + grad;
        v[i] = vi;
        w[i] -= rate * (nesterov ? grad + mu * vi : vi);
    }
}

// ---------------------------------------------------------------- sparsity probe
// The exact counts of tern-core's kernels::sparsity, as integers: tensors are read as
// [n, c, positions] in the layout `nhwc` says (weights as [k, c, r·s]); per-entry counts are
// u32, totals u64 summed with integer atomics (exact, so their order does not matter).

struct AddU64 {
    __device__ u64 operator()(u64 a, u64 b) const { return a + b; }
};

// rows[(ch·kh + r)·kw + s] = Σ_(p,q) per_image[ch, p·stride + r − pad, q·stride + s − pad]
// over the positions inside the image: the non-zeros of im2col's row (ch, r, s) over the
// batch. One block per row.
extern "C" __global__ void nz_col_rows(const u32* per_image, u32* rows, int h, int w, int kh, int kw, int stride,
                                       int pad, int ho, int wo) {
    int row = blockIdx.x;
    int s = row % kw, r = (row / kw) % kh, ch = row / (kw * kh);
    const u32* plane = per_image + (long long)ch * h * w;
    u64 sum = 0;
    for (int o = threadIdx.x; o < ho * wo; o += blockDim.x) {
        int ih = (o / wo) * stride + r - pad, iw = (o % wo) * stride + s - pad;
        if (ih >= 0 && ih < h && iw >= 0 && iw < w) sum += plane[ih * w + iw];
    }
    sum = block_reduce(sum, AddU64());
    if (threadIdx.x == 0) rows[row] = (u32)sum;
}

// out[row] = Σ_col a[row, col]; one block per row.
extern "C" __global__ void nz_row_sums(const u32* a, u32* out, long long cols) {
    const u32* ar = a + (long long)blockIdx.x * cols;
    u64 sum = 0;
    for (long long i = threadIdx.x; i < cols; i += blockDim.x) sum += ar[i];
    sum = block_reduce(sum, AddU64());
    if (threadIdx.x == 0) out[blockIdx.x] = (u32)sum;
}

// out[0] += Σ a[i]·b[i]; out[1] += Σ a[i] (b null: only the sum of a, into out[0]).
extern "C" __global__ void nz_dot(const u32* a, const u32* b, long long len, u64* out) {
    u64 d = 0, sa = 0;
    GRID_STRIDE(i, len) {
        sa += a[i];
        if (b) d += (u64)a[i] * b[i];
    }
    sa = block_reduce(sa, AddU64());
    if (b) d = block_reduce(d, AddU64());
    if (threadIdx.x == 0) {
        if (b) {
            atomicAdd(out, d);
            atomicAdd(out + 1, sa);
        } else {
            atomicAdd(out, sa);
        }
    }
}

// out[0] += Σ_(img,p,q) dy_per_pos[img, p·wo + q] · (Σ of x_per_pixel[img] over the receptive
// field of (p, q)): the weight-gradient pairs with two non-zero operands.
extern "C" __global__ void nz_window_dot(const u32* x_per_pixel, const u32* dy_per_pos, long long n, int h, int w,
                                         int ho, int wo, int kh, int kw, int stride, int pad, u64* out) {
    u64 acc = 0;
    GRID_STRIDE(i, n * ho * wo) {
        u32 d = dy_per_pos[i];
        if (d != 0) {
            long long img = i / (ho * wo);
            int o = (int)(i % (ho * wo)), p = o / wo, q = o % wo;
            const u32* xs = x_per_pixel + img * h * w;
            u64 win = 0;
            for (int r = 0; r < kh; r++) {
                int ih = p * stride + r - pad;
                if (ih < 0 || ih >= h) continue;
                for (int s = 0; s < kw; s++) {
                    int iw = q * stride + s - pad;
                    if (iw >= 0 && iw < w) win += xs[ih * w + iw];
                }
            }
            acc += (u64)d * win;
        }
    }
    acc = block_reduce(acc, AddU64());
    if (threadIdx.x == 0) atomicAdd(out, acc);
}
