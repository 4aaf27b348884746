/* Scores of a compact rerank store's candidates (FAISS's QT_8bit / QT_6bit codes, non-uniform
 * ranges), for a batch of queries in one call.
 *
 * CompactStore.top scored each query's candidates through FAISS's scanner, one Python call per
 * query (set the query, gather the codes, scan, sort): ~30 us a query at 573 candidates, most of
 * it around the arithmetic. Here every query's candidates are gathered and scored in one pass,
 * the next rows prefetched (they lie anywhere in the store), and CompactStore keeps the best.
 *
 * The codes are FAISS's: dimension d of a row decodes to vmin[d] + (b + 0.5) / L * vdiff[d],
 * b its integer code and L = 255 (int8) or 63 (int6; four 6-bit codes in three bytes, the first
 * in the low bits). For a query q the inner product is then
 *     sum_d q[d] vmin[d] + sum_d (q[d] vdiff[d] / L) (b + 0.5)
 * and the squared distance sum_d (a[d] - s[d] b)^2 with s = vdiff / L, a = q - vmin - s / 2:
 * one multiply-add per dimension on the integer code.
 *
 * Plain C, with row kernels for AVX-512 and AVX2 chosen at run time (hx_compact_isa); plain C
 * elsewhere.
 */
#include <stdint.h>
#include <string.h>

#define HX_OK 0
#define HX_BAD_ARGS (-3)
#define PREFETCH_ROWS 8

/* code b of dimension d of a row (FAISS's Codec8bit / Codec6bit layout) */
static inline int code_at(const uint8_t *row, int64_t d, int bits) {
    if (bits == 8) return row[d];
    const uint8_t *g = row + (d >> 2) * 3;
    switch (d & 3) {
    case 0: return g[0] & 63;
    case 1: return (g[0] >> 6) | ((g[1] & 15) << 2);
    case 2: return (g[1] >> 4) | ((g[2] & 3) << 4);
    default: return g[2] >> 2;
    }
}

/* The terms of dimensions from .. dim - 1 of one row's score: sum_d w[d] b[d] (l2 = 0), or
 * sum_d (a[d] - w[d] b[d])^2 (l2 = 1); a whole row on CPUs without the SIMD kernels, else
 * their tail of fewer than 16 dimensions. */
static float terms(const uint8_t *row, int64_t from, int64_t dim, int bits, int l2, const float *w, const float *a) {
    float acc = 0.0f;
    for (int64_t d = from; d < dim; d++) {
        float b = (float)code_at(row, d, bits);
        if (l2) {
            float e = a[d] - w[d] * b;
            acc += e * e;
        } else {
            acc += w[d] * b;
        }
    }
    return acc;
}

static float row_plain(const uint8_t *row, int64_t dim, int bits, int l2, const float *w, const float *a, float base) {
    return (l2 ? 0.0f : base) + terms(row, 0, dim, bits, l2, w, a);
}

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

/* The codes of 16 dimensions (12 bytes of int6, 16 of int8) as 16 floats; the loads are masked
 * so that the last row's read stays inside the store. */
__attribute__((target("avx512f,avx512bw,avx512vl"))) static inline __m512 codes16_avx512(const uint8_t *p, int bits) {
    if (bits == 8) return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p)));
    /* each 128-bit lane takes one group of three bytes into its four dwords, shifted apart */
    const __m512i pick = _mm512_set_epi8(
        -1, 11, 10, 9, -1, 11, 10, 9, -1, 11, 10, 9, -1, 11, 10, 9, -1, 8, 7, 6, -1, 8, 7, 6, -1, 8, 7, 6, -1, 8, 7, 6,
        -1, 5, 4, 3, -1, 5, 4, 3, -1, 5, 4, 3, -1, 5, 4, 3, -1, 2, 1, 0, -1, 2, 1, 0, -1, 2, 1, 0, -1, 2, 1, 0);
    const __m512i shift = _mm512_set_epi32(18, 12, 6, 0, 18, 12, 6, 0, 18, 12, 6, 0, 18, 12, 6, 0);
    __m512i bytes = _mm512_broadcast_i32x4(_mm_maskz_loadu_epi8(0x0fff, p));
    __m512i v = _mm512_and_si512(_mm512_srlv_epi32(_mm512_shuffle_epi8(bytes, pick), shift), _mm512_set1_epi32(63));
    return _mm512_cvtepi32_ps(v);
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) static float row_avx512(const uint8_t *row, int64_t dim, int bits,
                                                                            int l2, const float *w, const float *a,
                                                                            float base) {
    __m512 acc = _mm512_setzero_ps();
    int64_t d = 0, step = bits == 8 ? 16 : 12;
    for (; d + 16 <= dim; d += 16) {
        __m512 b = codes16_avx512(row + d / 16 * step, bits);
        __m512 wd = _mm512_loadu_ps(w + d);
        if (l2) {
            __m512 e = _mm512_fnmadd_ps(wd, b, _mm512_loadu_ps(a + d));
            acc = _mm512_fmadd_ps(e, e, acc);
        } else {
            acc = _mm512_fmadd_ps(wd, b, acc);
        }
    }
    return _mm512_reduce_add_ps(acc) + (l2 ? 0.0f : base) + terms(row, d, dim, bits, l2, w, a);
}

/* The same with 256-bit registers: 16 dimensions as two halves of 8 */
__attribute__((target("avx2,fma"))) static float row_avx2(const uint8_t *row, int64_t dim, int bits, int l2,
                                                         const float *w, const float *a, float base) {
    const __m256i pick_lo = _mm256_set_epi8(-1, 5, 4, 3, -1, 5, 4, 3, -1, 5, 4, 3, -1, 5, 4, 3, -1, 2, 1, 0, -1, 2, 1, 0,
                                            -1, 2, 1, 0, -1, 2, 1, 0);
    const __m256i pick_hi = _mm256_set_epi8(-1, 11, 10, 9, -1, 11, 10, 9, -1, 11, 10, 9, -1, 11, 10, 9, -1, 8, 7, 6, -1,
                                            8, 7, 6, -1, 8, 7, 6, -1, 8, 7, 6);
    const __m256i shift = _mm256_set_epi32(18, 12, 6, 0, 18, 12, 6, 0), six = _mm256_set1_epi32(63);
    const __m128i three = _mm_set_epi32(0, -1, -1, -1);
    __m256 acc = _mm256_setzero_ps();
    int64_t d = 0, step = bits == 8 ? 16 : 12;
    for (; d + 16 <= dim; d += 16) {
        const uint8_t *p = row + d / 16 * step;
        __m256 b[2];
        if (bits == 8) {
            __m128i x = _mm_loadu_si128((const __m128i *)p);
            b[0] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(x));
            b[1] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(x, 8)));
        } else {
            __m256i bytes = _mm256_broadcastsi128_si256(_mm_maskload_epi32((const int *)p, three));
            b[0] = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(_mm256_shuffle_epi8(bytes, pick_lo), shift), six));
            b[1] = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(_mm256_shuffle_epi8(bytes, pick_hi), shift), six));
        }
        for (int h = 0; h < 2; h++) {
            __m256 wd = _mm256_loadu_ps(w + d + 8 * h);
            if (l2) {
                __m256 e = _mm256_fnmadd_ps(wd, b[h], _mm256_loadu_ps(a + d + 8 * h));
                acc = _mm256_fmadd_ps(e, e, acc);
            } else {
                acc = _mm256_fmadd_ps(wd, b[h], acc);
            }
        }
    }
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    s4 = _mm_add_ss(s4, _mm_movehdup_ps(s4));
    return _mm_cvtss_f32(s4) + (l2 ? 0.0f : base) + terms(row, d, dim, bits, l2, w, a);
}
#endif

typedef float (*RowScore)(const uint8_t *, int64_t, int, int, const float *, const float *, float);

static int isa_cap = 2; /* 2: AVX-512 allowed, 1: AVX2 at most, 0: plain C (tests) */

int hx_compact_cap_isa(int level) {
    isa_cap = level;
    return isa_cap;
}

/* 2: AVX-512 (F, BW, VL), 1: AVX2 + FMA, 0: plain C */
int hx_compact_isa(void) {
#if defined(__x86_64__) || defined(_M_X64)
    __builtin_cpu_init();
    if (isa_cap >= 2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl"))
        return 2;
    if (isa_cap >= 1 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
#endif
    return 0;
}

static RowScore row_kernel(void) {
#if defined(__x86_64__) || defined(_M_X64)
    int level = hx_compact_isa();
    if (level == 2) return row_avx512;
    if (level == 1) return row_avx2;
#endif
    return row_plain;
}

/* Scores of the candidates of nq queries: out[j] for query i's candidate j in lims[i] ..
 * lims[i + 1], the row positions[j] of `codes` (uint8 [rows, code_size]). queries: float32
 * [nq, dim]; params: vmin[dim] then vdiff[dim]; bits: 8 or 6; l2: squared distances, else inner
 * products. scratch: float32 [2 * dim]. Returns HX_OK, or HX_BAD_ARGS (a position outside the
 * store, a bad size) having written nothing past the first bad query. */
int hx_compact_scores(int64_t nq, int64_t dim, const float *queries, const float *params, int bits, int l2,
                      const uint8_t *codes, int64_t rows, int64_t code_size, const int64_t *lims,
                      const int64_t *positions, float *scratch, float *out) {
    if (nq < 0 || dim <= 0 || (bits != 8 && bits != 6) || code_size != (dim * bits + 7) / 8 || rows < 0)
        return HX_BAD_ARGS;
    const float *vmin = params, *vdiff = params + dim;
    float level = bits == 8 ? 255.0f : 63.0f;
    float *w = scratch, *a = scratch + dim;
    RowScore score = row_kernel();
    for (int64_t i = 0; i < nq; i++) {
        const float *q = queries + i * dim;
        int64_t lo = lims[i], hi = lims[i + 1];
        if (lo < 0 || hi < lo) return HX_BAD_ARGS;
        for (int64_t j = lo; j < hi; j++)
            if (positions[j] < 0 || positions[j] >= rows) return HX_BAD_ARGS;
        float base = 0.0f;
        for (int64_t d = 0; d < dim; d++) {
            float step = vdiff[d] / level;
            if (l2) {
                w[d] = step;
                a[d] = q[d] - vmin[d] - 0.5f * step;
            } else {
                w[d] = q[d] * step;
                base += q[d] * vmin[d] + 0.5f * w[d];
            }
        }
        for (int64_t j = lo; j < hi; j++) {
            if (j + PREFETCH_ROWS < hi) {
                const char *next = (const char *)(codes + positions[j + PREFETCH_ROWS] * code_size);
                for (int64_t at = 0; at < code_size; at += 64) __builtin_prefetch(next + at);
                __builtin_prefetch(next + code_size - 1);
            }
            out[j] = score(codes + positions[j] * code_size, dim, bits, l2, w, a, base);
        }
    }
    return HX_OK;
}
