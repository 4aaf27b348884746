/* Top-k of fast-scan codes in a partition stage's lists, for a batch of queries.
 *
 * It reads FAISS's 32-vector blocks of 4-bit codes in place and scores them as
 * IndexIVFPQFastScan's search_preassigned does (a lookup table per sub-quantizer, summed in 16
 * bits; the caller's tables, 6-bit in fastscan.py, so that four lookups add in a byte), or the
 * stage's own 64-vector blocks of six-bit indices (scan_six_n), visiting the batch list by
 * list as FAISS's implem 12/13 does (a list stays cached for all the queries probing it), but
 * collects differently. FAISS keeps each query's k > 20 best in a reservoir whose threshold is
 * the k-th best seen so far; a query's lists then come in list-number order, and at k ~ 1,000
 * over ~350k codes ~11k codes beat the running threshold, each written out (and its id read from
 * a cold line) to be shrunk away later: nearly half of the scan (benchmarks/README.md, "A scan that
 * knows its threshold"). Here each query first scans a sample of its lists (those whose number
 * is a multiple of `stride`: a sampled list is still scanned by every query probing it while it
 * is cached), takes the (margin * k / stride)-th best score of the sample as its threshold, and
 * scans the rest against it: ~2.5k codes pass. A query whose threshold proves too high (fewer
 * than k codes above it in the end: its sample was unluckily good) is scanned again from
 * scratch, so the answer always holds the k best scores (among codes tied with the k-th, any).
 *
 * Plain C with x86 intrinsics in functions compiled for AVX2, AVX-512BW or AVX-512 VBMI (six-bit
 * blocks) and chosen at run time; hx_scan returns HX_UNSUPPORTED on any other CPU (or build), and
 * the caller falls back to FAISS (serving/candidates/fastscan.py), which never builds six-bit
 * lists there. Loaded with ctypes, which releases the GIL.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define HX_OK 0
#define HX_UNSUPPORTED (-1)
#define HX_NO_MEMORY (-2)
#define HX_BAD_ARGS (-3)

#define ID_BITS 48
#define ID_MASK ((1ULL << ID_BITS) - 1)
/* A key names its entry by list and offset (the low 48 bits: list << OFFSET_BITS | offset), not
 * by id: reading the id of each entering code from FAISS's id arrays missed the cache, ~20% of the
 * scan at k ~ 1,000 even with the next block's ids prefetched (perf); only the k kept are looked
 * up, once, at the end. Lists up to 2^20, entries per list below 2^28 (hx_scan refuses more). */
#define OFFSET_BITS 28
#define OFFSET_MASK ((1ULL << OFFSET_BITS) - 1)
#define MAX_LISTS (1LL << (ID_BITS - OFFSET_BITS))
#define ID_PREFETCH 16 /* keys ahead whose ids are fetched while one is written out (3-4% of the scan at k ~ 1,000) */
/* The sample: 1 list in `stride` of a query's, its (MARGIN * k / stride)-th best score the guess.
 * Below SAMPLE_MIN_RANK codes ranked in the sample the guess is too noisy to pay (at k = 20 a
 * third of the queries were scanned again); at 1M, k ~ 600-1,100, a stride of 32 had up to 1.7%
 * of the queries scanned again, 16 at most 0.3%. */
#define SAMPLE_MIN_RANK 48
#define SAMPLE_MARGIN 2.0
#define SAMPLE_MAX_STRIDE 16

/* the best (score << 48 | list << 28 | offset) keys one query has collected; keys above `thr` (a score) enter */
typedef struct {
    uint64_t *buf;
    int64_t n, limit; /* held, and how many trigger a shrink to k */
    int32_t thr;
    const uint64_t *probed; /* bit l: the query scans list l (NULL: no partner lists given) */
} Top;

/* The list a kernel scans: its number, and for each entry the other list its item sits in
 * (PARTNER_NONE: none), or NULL. */
#define PARTNER_NONE 0xFFFF
typedef struct {
    int64_t number;
    const uint16_t *partner;
} ListAt;

/* 3: AVX-512 VBMI allowed (six-bit blocks), 2: AVX-512BW at most, 1: AVX2 at most, 0: none (tests) */
static int isa_cap = 3;

int hx_cap_isa(int level) {
    isa_cap = level;
    return isa_cap;
}

static int isa_level(void) {
#if defined(__x86_64__) || defined(_M_X64)
    __builtin_cpu_init();
    if (isa_cap >= 3 && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vbmi")) return 3;
    if (isa_cap >= 2 && __builtin_cpu_supports("avx512bw")) return 2;
    if (isa_cap >= 1 && __builtin_cpu_supports("avx2")) return 1;
#endif
    return 0;
}

int hx_isa(void) { return isa_level(); }

/* -- selection on keys ---------------------------------------------------------------------- */
static inline int key_score(uint64_t key) { return (int)(key >> ID_BITS); }

/* Counting selection: the scores are small integers, so the r-th best is found from a histogram
 * (a pass for the range, one to count, one more inside the boundary bin when the range is wider
 * than the histogram), with no data-dependent branches; a quickselect on the keys was 14% of
 * the scan at k ~ 1,000, mostly its mispredicted branches. */
#define HIST_BINS 4096

/* the r-th best score of a[0..n) (1 <= r <= n), and how many score above it (`above`) */
static int rth_best(const uint64_t *a, int64_t n, int64_t r, int64_t *above) {
    int lo = key_score(a[0]), hi = lo;
    for (int64_t i = 1; i < n; i++) {
        int s = key_score(a[i]);
        lo = s < lo ? s : lo;
        hi = s > hi ? s : hi;
    }
    int shift = 0;
    while (((hi - lo) >> shift) >= HIST_BINS) shift++;
    int32_t count[HIST_BINS];
    int top = (hi - lo) >> shift;
    memset(count, 0, (size_t)(top + 1) * sizeof(int32_t));
    for (int64_t i = 0; i < n; i++) count[(key_score(a[i]) - lo) >> shift]++;
    int64_t more = 0;
    int b = top;
    while (more + count[b] < r) more += count[b--];
    if (shift) { /* the boundary bin holds 2^shift scores: count them one by one */
        int base = lo + (b << shift), width = 1 << shift;
        memset(count, 0, (size_t)width * sizeof(int32_t));
        for (int64_t i = 0; i < n; i++) {
            int d = key_score(a[i]) - base;
            count[d >= 0 && d < width ? d : 0] += d >= 0 && d < width;
        }
        b = width - 1;
        while (more + count[b] < r) more += count[b--];
        b += base;
    } else {
        b += lo;
    }
    *above = more;
    return b;
}

/* keep the k best keys held (among those tied with the k-th, the first met) and raise the
 * threshold to the k-th best's score */
static void shrink(Top *t, int64_t k) {
    if (t->n <= k) return;
    int64_t above, w = 0;
    int cut = rth_best(t->buf, t->n, k, &above);
    int64_t ties = k - above; /* keys scoring `cut` to keep */
    for (int64_t i = 0; i < t->n; i++) {
        uint64_t key = t->buf[i];
        int s = key_score(key);
        int take = s > cut || (s == cut && ties > 0);
        ties -= s == cut && take;
        t->buf[w] = key;
        w += take;
    }
    t->n = k;
    if (cut > t->thr) t->thr = cut;
}

/* the r-th best score held (r >= 1), or -1 when fewer are held */
static int rth_score(const Top *t, int64_t r) {
    int64_t above;
    return t->n < r ? -1 : rth_best(t->buf, t->n, r, &above);
}

/* sorts keys by score, best first (two 8-bit counting passes; equal scores in no set order) */
static void sort_descending(uint64_t *a, int64_t n, uint64_t *tmp) {
    int64_t count[256];
    for (int pass = 0; pass < 2; pass++) {
        int shift = ID_BITS + 8 * pass;
        memset(count, 0, sizeof(count));
        for (int64_t i = 0; i < n; i++) count[255 - ((a[i] >> shift) & 255)]++;
        int64_t at = 0;
        for (int b = 0; b < 256; b++) {
            int64_t c = count[b];
            count[b] = at;
            at += c;
        }
        for (int64_t i = 0; i < n; i++) tmp[count[255 - ((a[i] >> shift) & 255)]++] = a[i];
        memcpy(a, tmp, (size_t)n * sizeof(uint64_t));
    }
}

/* -- the kernels ------------------------------------------------------------------------------ */
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

/* Scores sc[i] of vectors base + i, i in mask, beat the threshold: they enter the query's keys.
 * An item whose other list the query also scans enters from the lower-numbered of the two only
 * (the same code, the same score there), so a query's keys name distinct items and its k are k
 * items, not ~1.7k entries holding repeats. */
static inline void enter(Top *t, int64_t k, const uint16_t *sc, uint32_t mask, int64_t base, int64_t size,
                         const ListAt *at) {
    while (mask) {
        int j = __builtin_ctz(mask);
        mask &= mask - 1;
        int64_t v = base + j;
        if (v >= size || (int)sc[j] <= t->thr) continue; /* padding, or a shrink raised the bar */
        if (at->partner) {
            int64_t other = at->partner[v];
            if (other < at->number && (t->probed[other >> 6] >> (other & 63)) & 1) continue;
        }
        if (t->n >= t->limit) {
            shrink(t, k);
            if ((int)sc[j] <= t->thr) continue;
        }
        t->buf[t->n++] = ((uint64_t)sc[j] << ID_BITS) | ((uint64_t)at->number << OFFSET_BITS) | (uint64_t)v;
    }
}

/* eight scores (16-bit lanes) of vectors base .. base + 7 */
__attribute__((target("avx2"))) static inline void collect8(Top *t, int64_t k, __m128i s, int64_t base, int64_t size,
                                                            const ListAt *at) {
    __m128i above = _mm_cmpgt_epi16(s, _mm_set1_epi16((short)t->thr));
    uint32_t mask = (uint32_t)_mm_movemask_epi8(_mm_packs_epi16(above, _mm_setzero_si128())); /* bit i: lane i */
    if (!mask) return;
    uint16_t sc[8];
    _mm_storeu_si128((__m128i *)sc, s);
    enter(t, k, sc, mask, base, size, at);
}

/* 32 scores (16-bit lanes) of vectors base .. base + 31: one comparison */
__attribute__((target("avx512bw"))) static inline void collect32(Top *t, int64_t k, __m512i s, int64_t base,
                                                                 int64_t size, const ListAt *at) {
    uint32_t mask = (uint32_t)_mm512_cmpgt_epi16_mask(s, _mm512_set1_epi16((short)t->thr));
    if (!mask) return;
    uint16_t sc[32];
    _mm512_storeu_si512((void *)sc, s);
    enter(t, k, sc, mask, base, size, at);
}

/* Block layout (FAISS's pq4 packing, bbs = 32; read from FAISS in BlockLayout): 32 bytes per
 * pair of sub-quantizers, the low 128-bit lane for the even one, the high lane for the odd;
 * byte 2w + h of a lane holds vector w + 8h in its low nibble and vector 16 + w + 8h in its high
 * nibble. A lookup table row of 16 bytes per sub-quantizer lines up with those lanes. The
 * lookups of `group` rows are summed in 8 bits (group * the largest entry <= 255), then added to
 * 16-bit lanes: acc[0] adds both bytes of each pair (low + 256 * high), acc[1] the high ones, and
 * acc[0] - 256 * acc[1] recovers the low ones. */
__attribute__((target("avx2"), always_inline)) static inline void scan_avx2_n(Top **tops, const uint8_t **luts, const int nt, int group, int64_t k,
                                                      const uint8_t *codes, const ListAt *at, int64_t size,
                                                      int64_t m) {
    const __m256i nib = _mm256_set1_epi8(0x0f);
    int64_t nblocks = (size + 31) / 32, pairs = m / 2;
    for (int64_t b = 0; b < nblocks; b++) {
        const uint8_t *block = codes + b * 16 * m;
        if (at->partner && b + 2 < nblocks) /* the line of partners an entering entry reads (10M: 5-9%) */
            _mm_prefetch((const char *)(at->partner + (b + 2) * 32), _MM_HINT_T0);
        __m256i acc[2][4];
        for (int q = 0; q < 2; q++)
            for (int u = 0; u < 4; u++) acc[q][u] = _mm256_setzero_si256();
        for (int64_t c0 = 0; c0 < pairs; c0 += group) {
            int64_t c1 = c0 + group < pairs ? c0 + group : pairs;
            __m256i sum[2][2];
            for (int q = 0; q < 2; q++) sum[q][0] = sum[q][1] = _mm256_setzero_si256();
            for (int64_t c = c0; c < c1; c++) {
                __m256i x = _mm256_loadu_si256((const __m256i *)(block + 32 * c));
                __m256i xl = _mm256_and_si256(x, nib), xh = _mm256_and_si256(_mm256_srli_epi16(x, 4), nib);
                for (int q = 0; q < nt; q++) {
                    __m256i lut = _mm256_loadu_si256((const __m256i *)(luts[q] + 32 * c));
                    sum[q][0] = _mm256_add_epi8(sum[q][0], _mm256_shuffle_epi8(lut, xl));
                    sum[q][1] = _mm256_add_epi8(sum[q][1], _mm256_shuffle_epi8(lut, xh));
                }
            }
            for (int q = 0; q < nt; q++) {
                acc[q][0] = _mm256_add_epi16(acc[q][0], sum[q][0]);
                acc[q][1] = _mm256_add_epi16(acc[q][1], _mm256_srli_epi16(sum[q][0], 8));
                acc[q][2] = _mm256_add_epi16(acc[q][2], sum[q][1]);
                acc[q][3] = _mm256_add_epi16(acc[q][3], _mm256_srli_epi16(sum[q][1], 8));
            }
        }
        for (int q = 0; q < nt; q++) {
            __m256i s[4] = {_mm256_sub_epi16(acc[q][0], _mm256_slli_epi16(acc[q][1], 8)), acc[q][1],
                            _mm256_sub_epi16(acc[q][2], _mm256_slli_epi16(acc[q][3], 8)), acc[q][3]};
            for (int g = 0; g < 4; g++) { /* even + odd sub-quantizers: the two lanes */
                __m128i v = _mm_add_epi16(_mm256_castsi256_si128(s[g]), _mm256_extracti128_si256(s[g], 1));
                collect8(tops[q], k, v, b * 32 + g * 8, size, at);
            }
        }
    }
}

/* nt (1 or 2: the 16 registers hold two queries' sums) a constant in each copy, so the
 * accumulators stay in registers */
__attribute__((target("avx2"))) static void scan_avx2(Top **tops, const uint8_t **luts, int nt, int group, int64_t k,
                                                  const uint8_t *codes, const ListAt *at, int64_t size, int64_t m) {
    if (nt == 2) scan_avx2_n(tops, luts, 2, group, k, codes, at, size, m);
    else scan_avx2_n(tops, luts, 1, group, k, codes, at, size, m);
}

/* The same with 64-byte loads: two pairs of sub-quantizers, four 128-bit lanes (sub-quantizers
 * 4c .. 4c + 3, as the table rows); a trailing pair (m % 4 == 2) through 32-byte loads. */
__attribute__((target("avx512bw"), always_inline)) static inline void scan_avx512_n(Top **tops, const uint8_t **luts, const int nt, int group, int64_t k,
                                                            const uint8_t *codes, const ListAt *at, int64_t size,
                                                            int64_t m) {
    const __m512i nib = _mm512_set1_epi8(0x0f);
    const __m256i nib2 = _mm256_set1_epi8(0x0f), byte = _mm256_set1_epi16(0xff);
    int64_t nblocks = (size + 31) / 32, quads = m / 4;
    int tail = (m % 4) != 0;
    for (int64_t b = 0; b < nblocks; b++) {
        const uint8_t *block = codes + b * 16 * m;
        if (at->partner && b + 2 < nblocks) /* the line of partners an entering entry reads (10M: 5-9%) */
            _mm_prefetch((const char *)(at->partner + (b + 2) * 32), _MM_HINT_T0);
        __m512i acc[4][4];
        for (int q = 0; q < 4; q++)
            for (int u = 0; u < 4; u++) acc[q][u] = _mm512_setzero_si512();
        for (int64_t c0 = 0; c0 < quads; c0 += group) {
            int64_t c1 = c0 + group < quads ? c0 + group : quads;
            __m512i sum[4][2];
            for (int q = 0; q < 4; q++) sum[q][0] = sum[q][1] = _mm512_setzero_si512();
            for (int64_t c = c0; c < c1; c++) {
                __m512i x = _mm512_loadu_si512((const void *)(block + 64 * c));
                __m512i xl = _mm512_and_si512(x, nib), xh = _mm512_and_si512(_mm512_srli_epi16(x, 4), nib);
                for (int q = 0; q < nt; q++) {
                    __m512i lut = _mm512_loadu_si512((const void *)(luts[q] + 64 * c));
                    sum[q][0] = _mm512_add_epi8(sum[q][0], _mm512_shuffle_epi8(lut, xl));
                    sum[q][1] = _mm512_add_epi8(sum[q][1], _mm512_shuffle_epi8(lut, xh));
                }
            }
            for (int q = 0; q < nt; q++) {
                acc[q][0] = _mm512_add_epi16(acc[q][0], sum[q][0]);
                acc[q][1] = _mm512_add_epi16(acc[q][1], _mm512_srli_epi16(sum[q][0], 8));
                acc[q][2] = _mm512_add_epi16(acc[q][2], sum[q][1]);
                acc[q][3] = _mm512_add_epi16(acc[q][3], _mm512_srli_epi16(sum[q][1], 8));
            }
        }
        for (int q = 0; q < nt; q++) {
            __m512i s[4] = {_mm512_sub_epi16(acc[q][0], _mm512_slli_epi16(acc[q][1], 8)), acc[q][1],
                            _mm512_sub_epi16(acc[q][2], _mm512_slli_epi16(acc[q][3], 8)), acc[q][3]};
            /* s[g]: vectors 8g .. 8g + 7 in each of four lanes (sub-quantizers 4c + lane): lane sums
             * of the four, side by side, give vectors 0 .. 31 in order */
            __m512i a = _mm512_add_epi16(_mm512_shuffle_i64x2(s[0], s[1], _MM_SHUFFLE(1, 0, 1, 0)),
                                         _mm512_shuffle_i64x2(s[0], s[1], _MM_SHUFFLE(3, 2, 3, 2)));
            __m512i c = _mm512_add_epi16(_mm512_shuffle_i64x2(s[2], s[3], _MM_SHUFFLE(1, 0, 1, 0)),
                                         _mm512_shuffle_i64x2(s[2], s[3], _MM_SHUFFLE(3, 2, 3, 2)));
            __m512i all = _mm512_add_epi16(_mm512_shuffle_i64x2(a, c, _MM_SHUFFLE(2, 0, 2, 0)),
                                           _mm512_shuffle_i64x2(a, c, _MM_SHUFFLE(3, 1, 3, 1)));
            if (tail) { /* the last pair of sub-quantizers, 32-byte lanes: as the AVX2 kernel */
                __m256i x = _mm256_loadu_si256((const __m256i *)(block + 64 * quads));
                __m256i lut = _mm256_loadu_si256((const __m256i *)(luts[q] + 64 * quads));
                __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(x, nib2));
                __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(x, 4), nib2));
                __m256i e[4] = {_mm256_and_si256(lo, byte), _mm256_srli_epi16(lo, 8), _mm256_and_si256(hi, byte),
                                _mm256_srli_epi16(hi, 8)};
                __m128i f[4];
                for (int g = 0; g < 4; g++)
                    f[g] = _mm_add_epi16(_mm256_castsi256_si128(e[g]), _mm256_extracti128_si256(e[g], 1));
                __m512i extra = _mm512_inserti64x4(
                    _mm512_castsi256_si512(_mm256_inserti128_si256(_mm256_castsi128_si256(f[0]), f[1], 1)),
                    _mm256_inserti128_si256(_mm256_castsi128_si256(f[2]), f[3], 1), 1);
                all = _mm512_add_epi16(all, extra);
            }
            collect32(tops[q], k, all, b * 32, size, at);
        }
    }
}

/* nt (1 to 4: the 32 registers hold four queries' sums) a constant in each copy, so the
 * accumulators stay in registers; four queries per block scanned 1.09x faster than two (1M) */
__attribute__((target("avx512bw"))) static void scan_avx512(Top **tops, const uint8_t **luts, int nt, int group, int64_t k,
                                                  const uint8_t *codes, const ListAt *at, int64_t size, int64_t m) {
    if (nt == 4) scan_avx512_n(tops, luts, 4, group, k, codes, at, size, m);
    else if (nt == 3) scan_avx512_n(tops, luts, 3, group, k, codes, at, size, m);
    else if (nt == 2) scan_avx512_n(tops, luts, 2, group, k, codes, at, size, m);
    else scan_avx512_n(tops, luts, 1, group, k, codes, at, size, m);
}

/* Six-bit blocks (six_bit.py packs them): 64 codes a block, whose code v sits at byte 2v (v < 32)
 * or 2(v - 32) + 1 of each 64-byte row. Group g of four 6-bit indices (tables 4g .. 4g + 3) is
 * three rows: row t holds index 4g + t in each byte's low six bits and bits 2t, 2t + 1 of index
 * 4g + 3 in its top two. vpermb looks a byte's low six bits up in a 64-entry table, so a row
 * feeds it as it is, and the fourth index is gathered from the top bits: 4 lookups per 24 bits of
 * a code where FAISS's nibbles take 6, and no lanes to add across at the end. The four lookups
 * (each <= 63) sum in a byte; acc[0] adds both bytes of each 16-bit lane (even code + 256 odd
 * code), acc[1] the odd ones, and acc[0] - 256 * acc[1] recovers the even ones. */
__attribute__((target("avx512bw,avx512vbmi"), always_inline)) static inline void scan_six_n(
    Top **tops, const uint8_t **luts, const int nt, int64_t k, const uint8_t *codes, const ListAt *at, int64_t size,
    int64_t m) {
    const __m512i low2 = _mm512_set1_epi8(0x03), low4 = _mm512_set1_epi8(0x0f);
    int64_t nblocks = (size + 63) / 64, groups = m / 4;
    for (int64_t b = 0; b < nblocks; b++) {
        const uint8_t *block = codes + b * 48 * m;
        if (at->partner && b + 2 < nblocks) { /* the partners an entering entry reads: two lines a block */
            _mm_prefetch((const char *)(at->partner + (b + 2) * 64), _MM_HINT_T0);
            _mm_prefetch((const char *)(at->partner + (b + 2) * 64 + 32), _MM_HINT_T0);
        }
        __m512i acc[4][2];
        for (int q = 0; q < 4; q++) acc[q][0] = acc[q][1] = _mm512_setzero_si512();
        for (int64_t g = 0; g < groups; g++) {
            const uint8_t *rows = block + 192 * g;
            __m512i r0 = _mm512_loadu_si512((const void *)rows), r1 = _mm512_loadu_si512((const void *)(rows + 64)),
                    r2 = _mm512_loadu_si512((const void *)(rows + 128));
            /* bits 0-1 from row 0's top, 2-3 from row 1's, 4-5 from row 2's (0xE4: c ? a : b);
             * the top two bits are left as they fall: vpermb ignores them */
            __m512i i3 = _mm512_ternarylogic_epi32(
                _mm512_ternarylogic_epi32(_mm512_srli_epi16(r0, 6), _mm512_srli_epi16(r1, 4), low2, 0xE4),
                _mm512_srli_epi16(r2, 2), low4, 0xE4);
            for (int q = 0; q < nt; q++) {
                const uint8_t *t = luts[q] + 256 * g;
                __m512i s01 = _mm512_add_epi8(_mm512_permutexvar_epi8(r0, _mm512_loadu_si512((const void *)t)),
                                              _mm512_permutexvar_epi8(r1, _mm512_loadu_si512((const void *)(t + 64))));
                __m512i s23 = _mm512_add_epi8(_mm512_permutexvar_epi8(r2, _mm512_loadu_si512((const void *)(t + 128))),
                                              _mm512_permutexvar_epi8(i3, _mm512_loadu_si512((const void *)(t + 192))));
                __m512i s = _mm512_add_epi8(s01, s23);
                acc[q][0] = _mm512_add_epi16(acc[q][0], s);
                acc[q][1] = _mm512_add_epi16(acc[q][1], _mm512_srli_epi16(s, 8));
            }
        }
        for (int q = 0; q < nt; q++) {
            collect32(tops[q], k, _mm512_sub_epi16(acc[q][0], _mm512_slli_epi16(acc[q][1], 8)), b * 64, size, at);
            collect32(tops[q], k, acc[q][1], b * 64 + 32, size, at);
        }
    }
}

__attribute__((target("avx512bw,avx512vbmi"))) static void scan_six(Top **tops, const uint8_t **luts, int nt, int64_t k,
                                                                   const uint8_t *codes, const ListAt *at, int64_t size,
                                                                   int64_t m) {
    if (nt == 4) scan_six_n(tops, luts, 4, k, codes, at, size, m);
    else if (nt == 3) scan_six_n(tops, luts, 3, k, codes, at, size, m);
    else if (nt == 2) scan_six_n(tops, luts, 2, k, codes, at, size, m);
    else scan_six_n(tops, luts, 1, k, codes, at, size, m);
}
#endif

/* -- the batch -------------------------------------------------------------------------------- */
typedef struct {
    int64_t nq, m, nprobe, nlist;
    const uint8_t *luts;   /* [nq, m, 16] */
    const int64_t *lists;  /* [nq, nprobe], -1: none */
    const uint64_t *codes; /* [nlist] addresses of the lists' blocks */
    const uint64_t *ids;   /* [nlist] addresses of the lists' ids */
    const uint64_t *partners; /* [nlist] addresses of each list's partner lists (uint16), or NULL */
    const int64_t *sizes;  /* [nlist] */
    int level;
    int group; /* table rows whose lookups are summed in 8 bits before widening */
    int six;   /* the lists hold six-bit blocks (m 64-entry tables per query), not FAISS's */
    int64_t lut_stride; /* bytes of one query's tables */
} Batch;

/* Scans, list by list, the (query, list) pairs whose list number l has l % stride == 0 (sample) or
 * != 0 (the rest); four queries at a time (two with AVX2) share each block's loads. Returns
 * HX_NO_MEMORY or HX_OK. */
static int scan_pairs(const Batch *B, Top *tops, int64_t k, int64_t stride, int sample) {
    int64_t nq = B->nq, np = B->nprobe, nlist = B->nlist;
    int per_block = B->level >= 2 ? 4 : 2;
    int64_t *start = calloc((size_t)nlist + 1, sizeof(int64_t));
    int64_t *fill = malloc(((size_t)nlist + 1) * sizeof(int64_t));
    int64_t *who = malloc(((size_t)(nq * np) + 1) * sizeof(int64_t));
    if (!start || !fill || !who) {
        free(start);
        free(fill);
        free(who);
        return HX_NO_MEMORY;
    }
#define PICKED(l) (((l) % stride == 0) == (sample != 0))
    for (int64_t i = 0; i < nq; i++)
        for (int64_t r = 0; r < np; r++) {
            int64_t l = B->lists[i * np + r];
            if (l >= 0 && l < nlist && PICKED(l)) start[l + 1]++;
        }
    for (int64_t l = 0; l < nlist; l++) start[l + 1] += start[l];
    memcpy(fill, start, ((size_t)nlist + 1) * sizeof(int64_t));
    for (int64_t i = 0; i < nq; i++)
        for (int64_t r = 0; r < np; r++) {
            int64_t l = B->lists[i * np + r];
            if (l >= 0 && l < nlist && PICKED(l)) who[fill[l]++] = i;
        }
#undef PICKED
    for (int64_t l = 0; l < nlist; l++) {
        int64_t size = B->sizes[l];
        if (size <= 0) continue;
        const uint8_t *codes = (const uint8_t *)(uintptr_t)B->codes[l];
        ListAt at = {l, B->partners ? (const uint16_t *)(uintptr_t)B->partners[l] : NULL};
        for (int64_t p = start[l]; p < start[l + 1]; p += per_block) {
            int nt = start[l + 1] - p < per_block ? (int)(start[l + 1] - p) : per_block;
            Top *t[4];
            const uint8_t *lut[4];
            for (int q = 0; q < nt; q++) {
                t[q] = &tops[who[p + q]];
                lut[q] = B->luts + who[p + q] * B->lut_stride;
            }
#if defined(__x86_64__) || defined(_M_X64)
            if (B->six) scan_six(t, lut, nt, k, codes, &at, size, B->m);
            else if (B->level >= 2) scan_avx512(t, lut, nt, B->group, k, codes, &at, size, B->m);
            else scan_avx2(t, lut, nt, B->group, k, codes, &at, size, B->m);
#endif
        }
    }
    free(start);
    free(fill);
    free(who);
    return HX_OK;
}

/* The sampled scan: each query's lists with l % stride == 0 first, keeping only the r best its
 * guess needs; the (r-th best) score there its threshold for the rest; a query left with fewer
 * than k above its guess (keys at or below it were skipped) scanned again from scratch. */
static int scan_sampled(const Batch *B, Top *tops, int64_t k, int64_t stride) {
    int64_t r = (int64_t)(SAMPLE_MARGIN * (double)k / (double)stride) + 1;
    int32_t *guess = malloc((size_t)B->nq * sizeof(int32_t));
    if (!guess) return HX_NO_MEMORY;
    int64_t room = tops[0].limit;
    for (int64_t i = 0; i < B->nq; i++) tops[i].limit = 2 * r + 64 < room ? 2 * r + 64 : room;
    int rc = scan_pairs(B, tops, r, stride, 1);
    for (int64_t i = 0; rc == HX_OK && i < B->nq; i++) {
        guess[i] = rth_score(&tops[i], r);
        if (guess[i] > tops[i].thr) tops[i].thr = guess[i];
        tops[i].limit = room;
    }
    if (rc == HX_OK) rc = scan_pairs(B, tops, k, stride, 0);
    for (int64_t i = 0; rc == HX_OK && i < B->nq; i++) {
        Top *t = &tops[i];
        if (guess[i] < 0) continue;
        int64_t above = 0;
        for (int64_t e = 0; e < t->n; e++) above += key_score(t->buf[e]) > guess[i];
        if (above >= k) continue;
        Batch one = *B;
        one.nq = 1;
        one.luts = B->luts + i * B->lut_stride;
        one.lists = B->lists + i * B->nprobe;
        t->n = 0;
        t->thr = -1;
        rc = scan_pairs(&one, t, k, 1, 1);
    }
    free(guess);
    return rc;
}

/* keys of scratch hx_scan needs: 2k + 64 per query, and as many for its final sort */
int64_t hx_work_len(int64_t nq, int64_t k) { return (nq + 1) * (2 * k + 64); }

/* Writes the ids of keys[0..n) (sorted) and their scores to out[0..), skipping an id already
 * written when `seen` (a zeroed table of `slots`, a power of two >= 2n) is given: an item in two
 * of the query's lists is found twice, with the same score. Returns how many were written. */
static int64_t write_out(const uint64_t *keys, int64_t n, const uint64_t *ids, uint64_t *seen, int64_t slots,
                         uint16_t *out_scores, int64_t *out_ids) {
    int shift = 64 - __builtin_ctzll((uint64_t)slots);
    int64_t w = 0;
    for (int64_t e = 0; e < n; e++) {
        if (e + ID_PREFETCH < n) { /* the kept keys' ids lie anywhere in the lists: fetch ahead */
            uint64_t ahead = keys[e + ID_PREFETCH] & ID_MASK;
            __builtin_prefetch((const int64_t *)(uintptr_t)ids[ahead >> OFFSET_BITS] + (ahead & OFFSET_MASK));
        }
        uint64_t at = keys[e] & ID_MASK;
        int64_t id = ((const int64_t *)(uintptr_t)ids[at >> OFFSET_BITS])[at & OFFSET_MASK];
        if (seen) { /* open addressing on id + 1 (0: empty); ids are positions >= 0 */
            uint64_t want = (uint64_t)id + 1, h = (want * 0x9E3779B97F4A7C15ULL) >> shift;
            while (seen[h] && seen[h] != want) h = (h + 1) & (uint64_t)(slots - 1);
            if (seen[h]) continue;
            seen[h] = want;
        }
        out_scores[w] = (uint16_t)key_score(keys[e]);
        out_ids[w++] = id;
    }
    return w;
}

/* The k best scores of each query with their ids, best first: `out_scores` uint16 [nq, k] and
 * `out_ids` int64 [nq, k] (-1 and 0 past the codes the lists hold); `out_held` int64 [nq]: how
 * many of the k were found. With `distinct`, an id found again (an item in two of the query's
 * lists) is dropped and the rest close up, best first: fewer than out_held may be written (with
 * `partners` none is found again).
 * six = 0, FAISS's blocks: m sub-quantizers (even, <= 128: the scores, at most 255 m, are
 * compared as signed 16-bit lanes), luts uint8 [nq, m, 16]. six = 1, six-bit blocks (see
 * scan_six_n; an AVX-512 VBMI CPU): m 6-bit indices (a multiple of 4), luts uint8 [nq, m, 64]
 * with entries <= 63 and 63 m < 2^15. lists: int64 [nq, nprobe]; codes / ids: each list's arrays as
 * addresses, sizes: its codes (at most 2^20 lists of at most 2^28 codes); partners: NULL, or
 * each list's uint16 array of its entries' other lists (PARTNER_NONE: none; fewer than
 * PARTNER_NONE lists), so that an item found in two of a query's lists enters once (see enter). work: room for
 * hx_work_len(nq, k) keys, the caller's to reuse from call to call (fresh memory each call cost a
 * page fault per 4 kB). */
int hx_scan(int64_t nq, int six, int64_t m, const uint8_t *luts, int64_t nprobe, const int64_t *lists, int64_t nlist,
            const uint64_t *codes, const uint64_t *ids, const uint64_t *partners, const int64_t *sizes, int64_t k,
            int distinct, uint64_t *work, int64_t work_len, uint16_t *out_scores, int64_t *out_ids,
            int64_t *out_held) {
    int level = isa_level();
    if (level == 0 || (six && level < 3)) return HX_UNSUPPORTED;
    if (nq < 0 || m <= 0 || nprobe < 0 || nlist < 0 || nlist > MAX_LISTS || k <= 0) return HX_BAD_ARGS;
    if (six ? m % 4 || 63 * m > 32767 : m % 2 || m > 128) return HX_BAD_ARGS;
    for (int64_t l = 0; l < nlist; l++)
        if (sizes[l] > (int64_t)OFFSET_MASK + 1) return HX_BAD_ARGS;
    if (nq == 0) return HX_OK;
    /* the tables' largest entry sets how many lookups fit a byte: 1 for 8-bit tables, 4 for the
     * 6-bit ones fastscan.py makes (fewer widening adds) */
    int64_t lut_stride = m * (six ? 64 : 16);
    int top = 0;
    for (int64_t i = 0; i < nq * lut_stride; i++) top = luts[i] > top ? luts[i] : top;
    int group = top ? 255 / top : 255;
    if ((partners && nlist >= PARTNER_NONE) || (six && top > 63)) return HX_BAD_ARGS;
    Batch B = {nq, m, nprobe, nlist, luts, lists, codes, ids, partners, sizes, level, group, six, lut_stride};
    int64_t room = 2 * k + 64; /* keys held per query before a shrink */
    if (work_len < hx_work_len(nq, k)) return HX_BAD_ARGS;
    int64_t slots = 1;
    while (slots < 2 * k) slots *= 2;
    int64_t words = (nlist + 63) / 64; /* each query's probed lists, a bit each */
    Top *tops = calloc((size_t)nq, sizeof(Top));
    /* told the partners, a query's keys already name distinct items (enter): no hash set */
    int dedupe = distinct && !partners;
    uint64_t *seen = dedupe ? malloc((size_t)slots * sizeof(uint64_t)) : NULL;
    uint64_t *probed = partners ? calloc((size_t)(nq * words) + 1, sizeof(uint64_t)) : NULL;
    if (!tops || (dedupe && !seen) || (partners && !probed)) {
        free(tops);
        free(seen);
        free(probed);
        return HX_NO_MEMORY;
    }
    for (int64_t i = 0; i < nq; i++) {
        tops[i].buf = work + i * room;
        tops[i].limit = room;
        tops[i].thr = -1;
        if (probed) {
            uint64_t *bits = probed + i * words;
            for (int64_t r = 0; r < nprobe; r++) {
                int64_t l = lists[i * nprobe + r];
                if (l >= 0 && l < nlist) bits[l >> 6] |= 1ULL << (l & 63);
            }
            tops[i].probed = bits;
        }
    }
    int64_t stride = (int64_t)(SAMPLE_MARGIN * (double)k / SAMPLE_MIN_RANK);
    if (stride > SAMPLE_MAX_STRIDE) stride = SAMPLE_MAX_STRIDE;
    if (stride > nprobe / 4) stride = nprobe / 4;
    int rc = stride > 1 ? scan_sampled(&B, tops, k, stride) : scan_pairs(&B, tops, k, 1, 1);
    uint64_t *tmp = work + nq * room;
    for (int64_t i = 0; rc == HX_OK && i < nq; i++) {
        Top *t = &tops[i];
        shrink(t, k);
        sort_descending(t->buf, t->n, tmp);
        int64_t fit = 1; /* the smallest power of two >= 2n, for this query's ids */
        while (fit < 2 * t->n) fit *= 2;
        if (seen) memset(seen, 0, (size_t)fit * sizeof(uint64_t));
        int64_t w = write_out(t->buf, t->n, ids, seen, fit, out_scores + i * k, out_ids + i * k);
        for (int64_t e = w; e < k; e++) {
            out_scores[i * k + e] = 0;
            out_ids[i * k + e] = -1;
        }
        out_held[i] = t->n;
    }
    free(tops);
    free(seen);
    free(probed);
    return rc;
}
