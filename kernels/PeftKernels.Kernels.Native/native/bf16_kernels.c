// bf16 micro-kernels of the GEMM driver (kernels/PeftKernels.Kernels.Cpu/GemmDriver.cs), the part
// .NET cannot express: it has no AVX512-BF16 and no AMX intrinsics.
//   acc[r, c] = Σ_{q < kpairs} a(r, 2q)·b(2q, c) + a(r, 2q+1)·b(2q+1, c)     (fp32 accumulation)
//   C[r, c]   = alpha · acc[r, c] + beta · C[r, c] + bias[c]                  (beta = 0: C not read)
// Packed operands (written by the C# packers, Bf16Pairs.cs): bf16 values in pairs along K,
//   A strip: a32[q·MR + r] = a(r, 2q) | a(r, 2q+1) << 16          (one 32-bit word per row and pair)
//   B strip: b32[q·NR + c] = b(2q, c) | b(2q+1, c) << 16          (the "VNNI" layout of vdpbf16ps and AMX)
// An odd K is padded with a zero row. Each k pair is one vdpbf16ps per accumulator: 32 flops per
// lane instead of an fp32 FMA's 2 per lane per K step, i.e. twice the fp32 rate per instruction.
// AVX512-BF16: 12×32 (24 zmm accumulators) and 24×16 (rank-sized outputs), A words broadcast.
// AMX-BF16: 32×32 from four 16×16 fp32 accumulator tiles; A is regrouped per call into rows of 16
// words (the tile layout), B strips are loaded as tiles directly (row stride NR words).
// Every function checks nothing: the C# loader calls them only after CPUID says the instructions exist.
#include <immintrin.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>

#define EXPORT __attribute__((visibility("default")))
#define AVX512BF16 __attribute__((target("avx512f,avx512bf16")))

EXPORT int peft_native_version(void) { return 1; }

AVX512BF16 static inline void store_row(float* dst, __m512 acc, __m512 va, __m512 vb, float beta, const float* bias)
{
    acc = _mm512_mul_ps(acc, va);
    if (beta != 0.0f) acc = _mm512_fmadd_ps(vb, _mm512_loadu_ps(dst), acc);
    if (bias) acc = _mm512_add_ps(acc, _mm512_loadu_ps(bias));
    _mm512_storeu_ps(dst, acc);
}

#define DP(acc, w, b) acc = _mm512_dpbf16_ps(acc, (__m512bh)(w), (__m512bh)(b))

// One k pair of the 12×32 tile: two B vectors, twelve broadcast A words, 24 vdpbf16ps.
#define STEP_12x32()                                                          \
    do {                                                                      \
        __m512i b0 = _mm512_loadu_si512(b), b1 = _mm512_loadu_si512(b + 32);  \
        _Pragma("GCC unroll 12") for (int r = 0; r < 12; r++)                 \
        {                                                                     \
            __m512i w = _mm512_set1_epi32(a32[r]);                            \
            DP(acc[r][0], w, b0);                                             \
            DP(acc[r][1], w, b1);                                             \
        }                                                                     \
        a32 += 12;                                                            \
        b += 64;                                                              \
    } while (0)

// C's rows are requested during the last 12 k pairs, one row per pair, not all at the start: C rows
// ldc = 4096 floats apart fall in the same L1 sets, and 24 lines fetched at the start evicted A and
// B lines of those sets for the whole K loop (Zen 5, 2048×4096×4096 macro loop: 85–86 % → 91–92 %
// of the vdpbf16ps peak, session 15).
EXPORT AVX512BF16 void peft_bf16_avx512_12x32(const uint16_t* a, const uint16_t* b, int kpairs, float* c, long ldc,
    float alpha, float beta, const float* bias)
{
    const int32_t* a32 = (const int32_t*)a;
    __m512 acc[12][2];
    for (int r = 0; r < 12; r++) { acc[r][0] = _mm512_setzero_ps(); acc[r][1] = _mm512_setzero_ps(); }
    int tail = kpairs < 12 ? kpairs : 12;
    int q = 0;
    for (; q < kpairs - tail; q++) STEP_12x32();
    for (int r = 0; q < kpairs; q++, r++)
    {
        _mm_prefetch((const char*)(c + r * ldc), _MM_HINT_T0);
        _mm_prefetch((const char*)(c + r * ldc + 16), _MM_HINT_T0);
        STEP_12x32();
    }
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    for (int r = 0; r < 12; r++)
    {
        store_row(c + r * ldc, acc[r][0], va, vb, beta, bias);
        store_row(c + r * ldc + 16, acc[r][1], va, vb, beta, bias ? bias + 16 : 0);
    }
}

EXPORT AVX512BF16 void peft_bf16_avx512_24x16(const uint16_t* a, const uint16_t* b, int kpairs, float* c, long ldc,
    float alpha, float beta, const float* bias)
{
    const int32_t* a32 = (const int32_t*)a;
    __m512 acc[24];
    for (int r = 0; r < 24; r++) acc[r] = _mm512_setzero_ps();
    for (int q = 0; q < kpairs; q++)
    {
        __m512i b0 = _mm512_loadu_si512(b);
#pragma GCC unroll 24
        for (int r = 0; r < 24; r++)
        {
            DP(acc[r], _mm512_set1_epi32(a32[r]), b0);
        }
        a32 += 24;
        b += 32;
    }
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    for (int r = 0; r < 24; r++) store_row(c + r * ldc, acc[r], va, vb, beta, bias);
}

// Pair packer of a K-contiguous operand (rows of x, or rows of a weight W [out, in] read as op(B) = Wᵀ):
//   dst[q·width + i] = bf16(src[i·ld + 2q]) | bf16(src[i·ld + 2q + 1]) << 16   for i < rows, q < ⌈kc/2⌉
// (an odd kc pads a zero high half; rows ≤ i < width are zero). One pass from fp32 to the micro-kernel
// layout, instead of an fp32 transpose followed by an in-place pairing pass. Rounding is the managed
// Bf16Round.Bits bit for bit (nearest, ties to even, NaN stays NaN with the quiet bit), not
// vcvtne2ps2bf16, which would flush denormals.
// Work goes in 16 pairs × 16 rows: each row's 32 floats become one vector of 16 pair words, the 16
// vectors are transposed in registers (a 16×16 dword transpose), and each pair's 16 row words leave
// in one (masked) 64-byte store. The first version stored every word on its own (16 scalar stores
// per row and chunk), which made packing ~1.5× slower (session 15).
AVX512BF16 static inline __m512i round_bits(__m512i u)
{
    __m512i r = _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1)));
    __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7FFFFFFF)), _mm512_set1_epi32(0x7F800000));
    return _mm512_mask_or_epi32(r, nan, u, _mm512_set1_epi32(0x00400000));
}

// r[i] (row i, 16 dwords) becomes column i: r'[t][i] = r[i][t].
__attribute__((target("avx512f"))) static inline void transpose16(__m512i r[16])
{
    __m512i t[16];
    for (int i = 0; i < 16; i += 2) { t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]); t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]); }
    for (int i = 0; i < 16; i += 4)
    {
        r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    // r[4g + j], 128-bit lane L, now holds column 4L + j of rows 4g..4g+3: gather the four lanes.
    for (int j = 0; j < 4; j++)
    {
        __m512i v0 = _mm512_shuffle_i32x4(r[j], r[4 + j], 0x44), v1 = _mm512_shuffle_i32x4(r[j], r[4 + j], 0xEE);
        __m512i w0 = _mm512_shuffle_i32x4(r[8 + j], r[12 + j], 0x44), w1 = _mm512_shuffle_i32x4(r[8 + j], r[12 + j], 0xEE);
        t[j] = _mm512_shuffle_i32x4(v0, w0, 0x88);
        t[4 + j] = _mm512_shuffle_i32x4(v0, w0, 0xDD);
        t[8 + j] = _mm512_shuffle_i32x4(v1, w1, 0x88);
        t[12 + j] = _mm512_shuffle_i32x4(v1, w1, 0xDD);
    }
    for (int i = 0; i < 16; i++) r[i] = t[i];
}

EXPORT __attribute__((target("avx512f,avx512bw,avx512bf16"))) void peft_bf16_pack_pairs(const float* src, long ld, int rows, int kc, int width, uint32_t* dst)
{
    int kpairs = (kc + 1) / 2;
    // Word t of a row's vector = high halves of dwords 2t and 2t+1 of its 32 rounded floats (x0: 0-15, x1: 16-31).
    __m512i pick = _mm512_set_epi16(63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39, 37, 35, 33,
                                    31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    for (int q0 = 0; q0 < kpairs; q0 += 16)
    {
        int n = kpairs - q0 < 16 ? kpairs - q0 : 16;
        int floats = kc - 2 * q0 < 32 ? kc - 2 * q0 : 32;
        // Masked loads read zeros past kc (and never fault there): the odd-kc pad and a short last chunk.
        __mmask16 m0 = floats >= 16 ? 0xFFFF : (__mmask16)((1u << floats) - 1);
        __mmask16 m1 = floats >= 32 ? 0xFFFF : floats > 16 ? (__mmask16)((1u << (floats - 16)) - 1) : 0;
        for (int i0 = 0; i0 < width; i0 += 16)
        {
            __m512i v[16];
            int live = rows - i0 < 16 ? rows - i0 : 16;
            for (int i = 0; i < 16; i++)
            {
                if (i < live)
                {
                    const float* s = src + (long)(i0 + i) * ld + 2 * q0;
                    // A B strip reads up to 32 rows at once: more streams than the hardware prefetcher follows, so
                    // each row's lines two chunks ahead are requested here (a prefetch past the row never faults).
                    _mm_prefetch((const char*)(s + 64), _MM_HINT_T0);
                    _mm_prefetch((const char*)(s + 80), _MM_HINT_T0);
                    __m512i x0 = round_bits(_mm512_maskz_loadu_epi32(m0, s));
                    __m512i x1 = round_bits(_mm512_maskz_loadu_epi32(m1, s + 16));
                    v[i] = _mm512_permutex2var_epi16(x0, pick, x1);
                }
                else
                {
                    v[i] = _mm512_setzero_si512();
                }
            }

            transpose16(v);
            int cols = width - i0 < 16 ? width - i0 : 16;
            __mmask16 store = cols == 16 ? 0xFFFF : (__mmask16)((1u << cols) - 1);
            uint32_t* d = dst + (long)q0 * width + i0;
            for (int t = 0; t < n; t++) _mm512_mask_storeu_epi32(d + (long)t * width, store, v[t]);
        }
    }
}

// Peak probe: 24 independent vdpbf16ps chains (latency × ports), `steps` rounds; 64 flops each
// (16 lanes × 2 products × multiply-add). Returns a sum so the loop cannot be removed.
EXPORT AVX512BF16 float peft_bf16_avx512_peak(long steps)
{
    __m512 acc[24];
    for (int i = 0; i < 24; i++) acc[i] = _mm512_setzero_ps();
    __m512i x = _mm512_set1_epi32(0x3F803F80); // (1.0, 1.0) in bf16
    __m512i y = _mm512_set1_epi32(0x24002400); // tiny, so the sums stay finite
    for (long s = 0; s < steps; s++)
    {
#pragma GCC unroll 24
        for (int i = 0; i < 24; i++) DP(acc[i], x, y);
        __asm__ volatile("" : "+v"(x));
    }
    __m512 t = acc[0];
    for (int i = 1; i < 24; i++) t = _mm512_add_ps(t, acc[i]);
    return _mm512_reduce_add_ps(t);
}

// ---------------------------------------------------------------- AMX-BF16 (Sapphire Rapids and later)
#define AMX __attribute__((target("amx-tile,amx-bf16,avx512f")))
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

// Linux hands out the tile-data state only on request, once per process; 0 on success.
EXPORT int peft_amx_request_permission(void)
{
    return (int)syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA);
}

typedef struct
{
    uint8_t palette;
    uint8_t start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

static __thread int amx_configured;

AMX static void amx_configure(void)
{
    tile_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) { cfg.colsb[t] = 64; cfg.rows[t] = 16; }
    _tile_loadconfig(&cfg);
    amx_configured = 1;
}

// 32×32 tile: C tiles 0..3 (rows 0-15 / 16-31 × cols 0-15 / 16-31), A tiles 4, 5, B tiles 6, 7.
EXPORT AMX void peft_bf16_amx_32x32(const uint16_t* a, const uint16_t* b, int kpairs, float* c, long ldc,
    float alpha, float beta, const float* bias)
{
    if (!amx_configured) amx_configure();
    const uint32_t* a32 = (const uint32_t*)a;
    const uint32_t* b32 = (const uint32_t*)b;
    uint32_t abuf[32][16] __attribute__((aligned(64)));
    uint32_t bbuf[16][32] __attribute__((aligned(64)));
    float cbuf[32][32] __attribute__((aligned(64)));
    _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
    for (int q0 = 0; q0 < kpairs; q0 += 16)
    {
        int n = kpairs - q0 < 16 ? kpairs - q0 : 16;
        for (int r = 0; r < 32; r++)
            for (int t = 0; t < 16; t++) abuf[r][t] = t < n ? a32[(q0 + t) * 32 + r] : 0u;
        const uint32_t* bsrc = b32 + (long)q0 * 32;
        if (n < 16)
        {
            memset(bbuf, 0, sizeof bbuf);
            memcpy(bbuf, bsrc, (size_t)n * 32 * sizeof(uint32_t));
            bsrc = &bbuf[0][0];
        }
        _tile_loadd(4, &abuf[0][0], 64);
        _tile_loadd(5, &abuf[16][0], 64);
        _tile_loadd(6, bsrc, 128);
        _tile_loadd(7, bsrc + 16, 128);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, &cbuf[0][0], 128);
    _tile_stored(1, &cbuf[0][16], 128);
    _tile_stored(2, &cbuf[16][0], 128);
    _tile_stored(3, &cbuf[16][16], 128);
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    for (int r = 0; r < 32; r++)
    {
        for (int h = 0; h < 2; h++)
        {
            float* dst = c + r * ldc + h * 16;
            __m512 acc = _mm512_mul_ps(_mm512_load_ps(&cbuf[r][h * 16]), va);
            if (beta != 0.0f) acc = _mm512_fmadd_ps(vb, _mm512_loadu_ps(dst), acc);
            if (bias) acc = _mm512_add_ps(acc, _mm512_loadu_ps(bias + h * 16));
            _mm512_storeu_ps(dst, acc);
        }
    }
}

// Peak probe: `steps` rounds of four independent tile products (16×16×32 each: 16384 flops).
EXPORT AMX float peft_bf16_amx_peak(long steps)
{
    if (!amx_configured) amx_configure();
    uint16_t ones[16][32] __attribute__((aligned(64)));
    float out[16][16] __attribute__((aligned(64)));
    for (int r = 0; r < 16; r++) for (int t = 0; t < 32; t++) ones[r][t] = 0x2400;
    _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
    _tile_loadd(4, ones, 64);
    _tile_loadd(5, ones, 64);
    _tile_loadd(6, ones, 64);
    _tile_loadd(7, ones, 64);
    for (long s = 0; s < steps; s++)
    {
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, out, 64);
    return out[0][0];
}
