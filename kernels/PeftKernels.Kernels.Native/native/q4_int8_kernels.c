// Row dot products of the integer 4-bit decode GEMV (kernels/PeftKernels.Kernels.Cpu/Quant4Int8Gemv.cs)
// with AVX512-VNNI vpdpbusd, which .NET cannot emit (it has AvxVnni, 256-bit, but no Avx512Vnni).
//   y[r, j] = Σ_c (Σ_{32 elements of chunk c} t8[code]·q) · (sx[r, c] · (absmax[block(j, c)] · 1/127))
// for weight rows j in [j0, j0 + rows) and activation rows r < n, with the data of the managed
// Vector512 path (Quant4Int8Dot.Row512): activations quantized per chunk of 32 to int8, chunk pairs
// interleaved (evens of c, evens of c + 1, odds of c, odds of c + 1), each pair's 16-float scale vector.
// Per chunk pair and weight row (4 rows share the activation loads):
//   32 packed bytes broadcast to both 256-bit halves, the lower half shifted right by 4 (16-bit
//   lanes): byte i holds the code in its low 4 bits (garbage above, which vpermb ignores, the 64-byte
//   table being the 16 values four times) → u8 = t8[code] + 128 (vpermb) → vpdpbusd(u8, q) starting
//   from −128·Σq (computed once per pair, shared by the rows) = Σ t8·q exactly, 16 int32 lanes
//   (|lane| ≤ 4·127² + 4·128·127 < 2¹⁸, no overflow).
// The int32 → fp32 conversion, scale product, FMA accumulation, odd last chunk and reduction are
// those of Row512 in the same order, so the results are bit-identical to the managed path. One
// difference: Row512 works with |w|·(±q) and, for FP4 (codes 0..7 positive), gets every sum negated
// and negates at the end; here the sums have their true sign. Negation commutes with round-to-nearest
// and no sum is ever −0 (all scales ≥ 0, sums start at +0), so the results are still identical.
// Compiled with -ffp-contract=off (the .csproj): a product followed by an add must not become an FMA.
// Nothing is checked: the C# loader (NativeQ4Int8.cs) calls this only after CPUID reports
// AVX512-VNNI, AVX512-VBMI, AVX512-BW and AVX512-VL.
#include <immintrin.h>
#include <stdint.h>

#define EXPORT __attribute__((visibility("default")))
#define VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,fma")))
#define INLINE static inline __attribute__((always_inline))

// Layout shared with the C# struct Q4Int8Args (NativeQ4Int8.cs).
typedef struct
{
    const uint8_t* w;       // packed codes of row j0 (rows of in/2 bytes, high nibble = even element)
    const float* absmax;    // per weight block, indexed by (element index) >> shift
    const int8_t* q;        // [n, in] int8 activations, pair-interleaved
    const float* sx;        // [n, chunks] chunk scales
    const float* sx_pairs;  // [n, chunks·8] scale vectors of the chunk pairs
    float* y;               // y + j0; row r at y + r·ldy
    int64_t e0;             // j0 · in: element index of row j0's first weight
    int64_t ldy;            // outFeatures
    int32_t rows;           // weight rows
    int32_t n;              // activation rows
    int32_t in;             // inFeatures, a multiple of 32
    int32_t shift;          // log2(blocksize)
    int32_t one_pair_scale; // both chunks of every pair in one weight block (in % 64 == 0, blocksize ≥ 64)
    int32_t prefetch;       // bytes ahead of each read to prefetch into L2 (Quant4Simd.PrefetchAhead)
    int8_t table[16];       // round(code value · 127)
    const uint8_t* codes;   // double quantization: the 8-bit absmax codes per weight block (absmax unused), else NULL
    const float* nested;    // fp32 scale per 256 blocks
    const float* dynamic;   // the 256 values of the dynamic map (Quant4Codes.Dynamic)
    float offset;           // added after the product
} q4i8_args;

#define TABLE_SCALE (1.0f / 127.0f)

// The fp32 absmax of weight block b: read, or with double quantization rebuilt from its 8-bit code as
// Quant4.DequantizeNested does (dynamic[code] · nested[b / 256], then + offset, two roundings: the
// file is compiled with -ffp-contract=off), so the value is the one AbsmaxFp32() holds, bit for bit.
// Why: the fp32 array is 4 bytes a block of 64 weights (12.5 % on top of the 32 code bytes) and the
// decode GEMV streams every weight once a token from DRAM; the codes are 1 byte (3 %).
VNNI INLINE float absmax_at(const q4i8_args* a, int64_t b, const int NESTED)
{
    if (!NESTED) return a->absmax[b];
    float product = a->dynamic[a->codes[b]] * a->nested[b >> 8];
    return product + a->offset;
}

// Σ_{lanes} as Row512's Reduce8 of [q0 + q1, q2 + q3]: 8 → 4 → 2 → 1.
VNNI INLINE float reduce(__m128 q0, __m128 q1, __m128 q2, __m128 q3)
{
    __m128 v4 = _mm_add_ps(_mm_add_ps(q0, q1), _mm_add_ps(q2, q3));
    __m128 v2 = _mm_add_ps(v4, _mm_shuffle_ps(v4, v4, _MM_SHUFFLE(1, 0, 3, 2)));
    return _mm_cvtss_f32(v2) + _mm_cvtss_f32(_mm_shuffle_ps(v2, v2, 1));
}

// R weight rows (j, ..., j + R − 1) against activation row r.
VNNI INLINE void group(const q4i8_args* a, int j, int r, const int R, __m512i table, const int NESTED)
{
    const int chunks = a->in / 32;
    const int64_t row_bytes = a->in / 2;
    const uint8_t* w = a->w + j * row_bytes;
    const int8_t* q = a->q + (int64_t)r * a->in;
    const float* sx = a->sx + (int64_t)r * chunks;
    const float* sv = a->sx_pairs + (int64_t)r * chunks * 8;
    const int64_t e = a->e0 + (int64_t)j * a->in;
    const __m512i shifts = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_setzero_si256(), 1);
    const __m512i m128 = _mm512_set1_epi8((char)0x80);
    __m512 sum[4];
    for (int i = 0; i < R; i++) sum[i] = _mm512_setzero_ps();
    int c = 0;
    for (; c + 1 < chunks; c += 2)
    {
        __m512i qv = _mm512_loadu_si512(q + (int64_t)c * 32);
        __m512i bias = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_dpbusd_epi32(_mm512_setzero_si512(), m128, qv));
        __m512 ps = _mm512_loadu_ps(sv + (int64_t)c * 8);
        for (int i = 0; i < R; i++)
        {
            const uint8_t* pw = w + i * row_bytes + c * 16;
            _mm_prefetch((const char*)(pw + a->prefetch), _MM_HINT_T1);
            __m512i v = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i*)pw));
            __m512i u = _mm512_permutexvar_epi8(_mm512_srlv_epi16(v, shifts), table);
            __m512i lanes = _mm512_dpbusd_epi32(bias, u, qv);
            int64_t ec = e + i * (int64_t)a->in + (int64_t)c * 32;
            float a0 = absmax_at(a, ec >> a->shift, NESTED) * TABLE_SCALE;
            __m512 ws = _mm512_set1_ps(a0);
            if (!a->one_pair_scale)
            {
                float a1 = absmax_at(a, (ec + 32) >> a->shift, NESTED) * TABLE_SCALE;
                ws = _mm512_mask_blend_ps(0xF0F0, ws, _mm512_set1_ps(a1));
            }

            sum[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lanes), _mm512_mul_ps(ps, ws), sum[i]);
        }
    }

    float* y = a->y + (int64_t)r * a->ldy + j;
    for (int i = 0; i < R; i++)
    {
        __m128 q0 = _mm512_extractf32x4_ps(sum[i], 0), q1 = _mm512_extractf32x4_ps(sum[i], 1);
        __m128 q2 = _mm512_extractf32x4_ps(sum[i], 2), q3 = _mm512_extractf32x4_ps(sum[i], 3);
        if (c < chunks)
        {
            // The last chunk of an odd count, stored unpaired: evens (high nibbles) then odds; lanes 0..3 add to q0, 4..7 to q2.
            const uint8_t* pw = w + i * row_bytes + c * 16;
            __m128i b = _mm_loadu_si128((const __m128i*)pw);
            __m128i nib = _mm_set1_epi8(0x0F);
            __m256i idx = _mm256_set_m128i(_mm_and_si128(b, nib), _mm_and_si128(_mm_srli_epi16(b, 4), nib));
            __m256i u = _mm256_shuffle_epi8(_mm512_castsi512_si256(table), idx);
            __m256i qt = _mm256_loadu_si256((const __m256i*)(q + (int64_t)c * 32));
            __m256i m = _mm256_set1_epi8((char)0x80);
            __m256i bias = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_dpbusd_epi32(_mm256_setzero_si256(), m, qt));
            __m256i lanes = _mm256_dpbusd_epi32(bias, u, qt);
            int64_t ec = e + i * (int64_t)a->in + (int64_t)c * 32;
            float s = sx[c] * (absmax_at(a, ec >> a->shift, NESTED) * TABLE_SCALE);
            __m256 t = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes), _mm256_set1_ps(s), _mm256_set_m128(q2, q0));
            q0 = _mm256_castps256_ps128(t);
            q2 = _mm256_extractf128_ps(t, 1);
        }

        y[i] = reduce(q0, q1, q2, q3);
    }
}

// y[r, j0 + i] for i < rows, r < n (no bias): four weight rows at a time, the rest one by one; with
// double-quantized scales (codes != NULL) each block's absmax is rebuilt from its code (absmax_at).
EXPORT VNNI void peft_q4i8_vnni_rows(const q4i8_args* a)
{
    __m128i t = _mm_xor_si128(_mm_loadu_si128((const __m128i*)a->table), _mm_set1_epi8((char)0x80)); // t8 + 128 as u8
    __m512i table = _mm512_broadcast_i32x4(t);
    int j = 0;
    if (a->codes)
    {
        for (; j + 4 <= a->rows; j += 4)
            for (int r = 0; r < a->n; r++) group(a, j, r, 4, table, 1);
        for (; j < a->rows; j++)
            for (int r = 0; r < a->n; r++) group(a, j, r, 1, table, 1);
        return;
    }

    for (; j + 4 <= a->rows; j += 4)
        for (int r = 0; r < a->n; r++) group(a, j, r, 4, table, 0);
    for (; j < a->rows; j++)
        for (int r = 0; r < a->n; r++) group(a, j, r, 1, table, 0);
}
