/*
 * _selfinstruct_rouge: the compiled core of the exact ROUGE-L index (see similarity.py).
 *
 * The index holds token-id sequences (ids are small positive ints handed out by the Python side).
 * A query returns the top-k entries by ROUGE-L F-measure, exactly as rouge-score computes it:
 *
 *   - Token occurrences are items "(token, j-th occurrence)"; the size of the intersection of two
 *     item sets is the multiset intersection of the token lists, an upper bound of their LCS.
 *   - Items with short inverted lists are counted by walking the lists (ScanCount). The first 256
 *     items whose lists grow long ("the", "a", "write", ...) become bits of a per-entry mask
 *     instead, and their share of the intersection is a popcount.
 *   - Entries that share only such frequent items are found per token length n, and only for the
 *     lengths where their bound can still reach the k-th best score found so far. Each length
 *     bucket stores its masks bit-sliced (for each bit, a bitset over the bucket's entries), so
 *     "at least t of the query's q frequent items" takes a few word operations per 64 entries, and
 *     a bit-sliced counter gives each hit's overlap without touching the entry itself. The scan
 *     runs in stages with falling thresholds (0.5, 0.3, then the k-th best score), so the floor has
 *     risen before the loose stages look at many entries.
 *   - Candidates are scored in decreasing order of their bound (a counting sort on the bound,
 *     1/1024 wide levels); the exact LCS is Hyyro's bit-parallel algorithm over the query's match
 *     masks, and the F-measure uses rouge-score's own float operations in the same order (IEEE
 *     double; built with -ffp-contract=off so no fused multiply-add changes a bit).
 *   - Ties are broken by slot (insertion order), so the result is deterministic.
 *
 * All memory comes from PyMem_Raw*, so tracemalloc sees it. The GIL is held throughout: a call is
 * atomic with respect to other threads using the same index.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    int32_t *data;
    Py_ssize_t size, cap;
} IVec;

/* The entries of one token length. Entry at position p is lane p % 64 of word p / 64; for each
 * frequent-item bit b, the words bits[b * words .. (b + 1) * words) are a bitset over the positions
 * (bit-major, so a scan reads one contiguous stream per bit of the query). */
typedef struct {
    int32_t *slots; /* position -> slot, -1 once removed */
    Py_ssize_t size, cap;
    uint64_t *bits;
    Py_ssize_t words; /* per bit */
    uint64_t *mark;   /* query scratch: positions that are candidates already */
    int scanned;      /* query scratch: mark needs clearing */
} Bucket;

#define NLEVELS 1024
/* Frequent items kept as bits: FW 64-bit words per entry. */
#define FW 4
#define FBITS (64 * FW)

typedef struct {
    double bound;
    int32_t slot;
} Cand;

/* What a query touches per entry, in one cache line's worth of neighbours. */
typedef struct {
    uint64_t fmask[FW]; /* frequent-item bits */
    int32_t *seq;   /* token ids; NULL once removed */
    int32_t len;
    int32_t cnt;    /* query scratch: rare-item overlap */
    int32_t pos;    /* position in its length bucket, -1 if none */
    int32_t unused;
} Entry;

typedef struct {
    double score;
    int32_t slot;
} Hit;

typedef struct {
    PyObject_HEAD
    Py_ssize_t frequent_df;
    /* per token id (1 .. tok_cap-1) */
    Py_ssize_t tok_cap;
    IVec *items_of_tok; /* item id of the token's j-th occurrence, j = 0.. */
    int32_t *pm_row;    /* query scratch: row of the token's match mask, or -1 */
    int32_t *occ;       /* scratch: occurrences seen so far */
    /* per item */
    Py_ssize_t nitems, items_cap;
    IVec *postings; /* slots holding the item, ascending */
    int16_t *bit_of; /* -1, or the item's bit in the frequent mask */
    int nbits;
    /* per slot */
    Py_ssize_t nslots, slots_cap, alive;
    Entry *slot;
    /* entries by token length */
    Py_ssize_t nbuckets;
    Bucket *buckets;
    /* query scratch */
    IVec touched;
    Cand *cands, *sorted;
    Py_ssize_t ncands, cands_cap, sorted_cap;
    Py_ssize_t level_start[NLEVELS + 2];
    uint64_t *pm;
    Py_ssize_t pm_cap;
    uint64_t *vbits;
    Py_ssize_t vbits_cap;
    /* work counters, summed over queries (for benchmarks) */
    long long n_queries, n_walked, n_touched, n_masks, n_scan_pushed, n_lcs;
} Kernel;

/* ---------------------------------------------------------------------------------------------- */
/* memory helpers                                                                                  */

static int grow(void **ptr, Py_ssize_t *cap, Py_ssize_t need, size_t elsize, int zero)
{
    if (need <= *cap)
        return 0;
    Py_ssize_t ncap = *cap ? *cap : 16;
    while (ncap < need)
        ncap *= 2;
    void *p = PyMem_RawRealloc(*ptr, (size_t)ncap * elsize);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    if (zero)
        memset((char *)p + (size_t)(*cap) * elsize, 0, (size_t)(ncap - *cap) * elsize);
    *ptr = p;
    *cap = ncap;
    return 0;
}

static int ivec_push(IVec *v, int32_t x)
{
    if (v->size == v->cap && grow((void **)&v->data, &v->cap, v->size + 1, sizeof(int32_t), 0) < 0)
        return -1;
    v->data[v->size++] = x;
    return 0;
}

/* index of x in the ascending array a[0..n), or -1 */
static Py_ssize_t find_sorted(const int32_t *a, Py_ssize_t n, int32_t x)
{
    Py_ssize_t lo = 0, hi = n;
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi) / 2;
        if (a[mid] < x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return (lo < n && a[lo] == x) ? lo : -1;
}

static void ivec_discard_sorted(IVec *v, int32_t x)
{
    Py_ssize_t i = find_sorted(v->data, v->size, x);
    if (i < 0)
        return;
    memmove(v->data + i, v->data + i + 1, (size_t)(v->size - i - 1) * sizeof(int32_t));
    v->size--;
}

static int ensure_tokens(Kernel *k, Py_ssize_t need)
{
    if (need <= k->tok_cap)
        return 0;
    Py_ssize_t c1 = k->tok_cap, c2 = k->tok_cap, c3 = k->tok_cap;
    if (grow((void **)&k->items_of_tok, &c1, need, sizeof(IVec), 1) < 0)
        return -1;
    if (grow((void **)&k->occ, &c2, need, sizeof(int32_t), 1) < 0)
        return -1;
    Py_ssize_t old = k->tok_cap;
    if (grow((void **)&k->pm_row, &c3, need, sizeof(int32_t), 0) < 0)
        return -1;
    for (Py_ssize_t i = old; i < c3; i++)
        k->pm_row[i] = -1;
    /* the three grew by the same rule from the same size */
    k->tok_cap = c1;
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* scoring                                                                                         */

/* ROUGE-L F exactly as rouge-score computes it (rouge_scorer._score_lcs + scoring.fmeasure). */
static inline double rouge_f(Py_ssize_t lcs, Py_ssize_t m, Py_ssize_t n)
{
    if (lcs <= 0 || m == 0 || n == 0)
        return 0.0;
    double precision = (double)lcs / (double)m;
    double recall = (double)lcs / (double)n;
    return 2.0 * precision * recall / (precision + recall);
}

static inline Py_ssize_t common_bits(const uint64_t *a, const uint64_t *b)
{
    Py_ssize_t c = 0;
    for (int w = 0; w < FW; w++)
        c += __builtin_popcountll(a[w] & b[w]);
    return c;
}

static inline Py_ssize_t min3(Py_ssize_t a, Py_ssize_t b, Py_ssize_t c)
{
    Py_ssize_t x = a < b ? a : b;
    return x < c ? x : c;
}

/* LCS of the query (match masks pm, W words, m tokens) and one entry, bit-parallel (Hyyro 2004). */
static Py_ssize_t lcs_length(const Kernel *k, const int32_t *seq, Py_ssize_t n, Py_ssize_t W,
                             Py_ssize_t m, uint64_t *vbits)
{
    const int32_t *pm_row = k->pm_row;
    const uint64_t *pm = k->pm;
    if (W == 1) {
        uint64_t v = ~(uint64_t)0;
        for (Py_ssize_t i = 0; i < n; i++) {
            int32_t r = pm_row[seq[i]];
            if (r < 0)
                continue;
            uint64_t u = v & pm[r];
            v = (v + u) | (v - u);
        }
        uint64_t used = m == 64 ? ~(uint64_t)0 : (((uint64_t)1 << m) - 1);
        return __builtin_popcountll(~v & used);
    }
    for (Py_ssize_t w = 0; w < W; w++)
        vbits[w] = ~(uint64_t)0;
    for (Py_ssize_t i = 0; i < n; i++) {
        int32_t r = pm_row[seq[i]];
        if (r < 0)
            continue;
        const uint64_t *mrow = pm + (size_t)r * (size_t)W;
        uint64_t carry = 0;
        for (Py_ssize_t w = 0; w < W; w++) {
            uint64_t x = vbits[w], u = x & mrow[w];
            uint64_t s1 = x + u;
            uint64_t c1 = s1 < x;
            uint64_t s = s1 + carry;
            uint64_t c2 = s < s1;
            carry = c1 | c2;
            vbits[w] = s | (x & ~mrow[w]);
        }
    }
    Py_ssize_t lcs = 0;
    for (Py_ssize_t w = 0; w < W; w++) {
        uint64_t used = ~(uint64_t)0;
        Py_ssize_t bits = m - 64 * w;
        if (bits < 64)
            used = ((uint64_t)1 << bits) - 1;
        lcs += __builtin_popcountll(~vbits[w] & used);
    }
    return lcs;
}

/* ---------------------------------------------------------------------------------------------- */
/* heaps                                                                                           */

/* a is a worse hit than b: lower score, or the same score and inserted later */
static inline int hit_worse(Hit a, Hit b)
{
    return a.score < b.score || (a.score == b.score && a.slot > b.slot);
}

/* top-k: min-heap by hit_worse (the worst hit at the root) */
static void top_sift_down(Hit *h, Py_ssize_t n, Py_ssize_t i)
{
    Hit x = h[i];
    for (;;) {
        Py_ssize_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && hit_worse(h[c + 1], h[c]))
            c++;
        if (!hit_worse(h[c], x))
            break;
        h[i] = h[c];
        i = c;
    }
    h[i] = x;
}

static void top_push(Hit *h, Py_ssize_t *n, Py_ssize_t cap, Hit x)
{
    if (*n < cap) {
        Py_ssize_t i = (*n)++;
        while (i > 0) {
            Py_ssize_t p = (i - 1) / 2;
            if (!hit_worse(x, h[p]))
                break;
            h[i] = h[p];
            i = p;
        }
        h[i] = x;
    }
    else if (hit_worse(h[0], x)) {
        h[0] = x;
        top_sift_down(h, *n, 0);
    }
}

static int cmp_hits(const void *pa, const void *pb)
{
    const Hit *a = pa, *b = pb;
    if (a->score != b->score)
        return a->score > b->score ? -1 : 1;
    return (a->slot > b->slot) - (a->slot < b->slot);
}

/* ---------------------------------------------------------------------------------------------- */
/* the type                                                                                        */

static int Kernel_init(Kernel *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"frequent_df", NULL};
    Py_ssize_t df = 256;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|n", kwlist, &df))
        return -1;
    if (df < 1) {
        PyErr_SetString(PyExc_ValueError, "frequent_df must be at least 1");
        return -1;
    }
    self->frequent_df = df;
    return 0;
}

static void Kernel_dealloc(Kernel *self)
{
    for (Py_ssize_t i = 0; i < self->tok_cap; i++)
        PyMem_RawFree(self->items_of_tok[i].data);
    PyMem_RawFree(self->items_of_tok);
    PyMem_RawFree(self->pm_row);
    PyMem_RawFree(self->occ);
    for (Py_ssize_t i = 0; i < self->nitems; i++)
        PyMem_RawFree(self->postings[i].data);
    PyMem_RawFree(self->postings);
    PyMem_RawFree(self->bit_of);
    for (Py_ssize_t i = 0; i < self->nslots; i++)
        PyMem_RawFree(self->slot[i].seq);
    PyMem_RawFree(self->slot);
    for (Py_ssize_t i = 0; i < self->nbuckets; i++) {
        PyMem_RawFree(self->buckets[i].slots);
        PyMem_RawFree(self->buckets[i].bits);
        PyMem_RawFree(self->buckets[i].mark);
    }
    PyMem_RawFree(self->buckets);
    PyMem_RawFree(self->touched.data);
    PyMem_RawFree(self->cands);
    PyMem_RawFree(self->sorted);
    PyMem_RawFree(self->pm);
    PyMem_RawFree(self->vbits);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Reads a sequence of token ids. Ids < 1 are allowed only when `query` is set (unknown tokens). */
static int32_t *read_ids(PyObject *obj, Py_ssize_t *n_out, int query, int32_t *max_id)
{
    PyObject *fast = PySequence_Fast(obj, "token ids must be a sequence of ints");
    if (fast == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    PyObject **items = PySequence_Fast_ITEMS(fast);
    int32_t *ids = PyMem_RawMalloc((size_t)(n ? n : 1) * sizeof(int32_t));
    if (ids == NULL) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return NULL;
    }
    int32_t top = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        long v = PyLong_AsLong(items[i]);
        if (v == -1 && PyErr_Occurred())
            goto fail;
        if (v > INT32_MAX - 1 || v < INT32_MIN) {
            PyErr_SetString(PyExc_OverflowError, "token id out of range");
            goto fail;
        }
        if (v < 1 && !query) {
            PyErr_SetString(PyExc_ValueError, "token ids of entries must be positive");
            goto fail;
        }
        ids[i] = (int32_t)v;
        if (ids[i] > top)
            top = ids[i];
    }
    Py_DECREF(fast);
    *n_out = n;
    *max_id = top;
    return ids;
fail:
    Py_DECREF(fast);
    PyMem_RawFree(ids);
    return NULL;
}

/* Makes room for `need` words per bit, moving each bit's bitset to its new place. */
static int grow_bits(Bucket *b, Py_ssize_t need)
{
    if (need <= b->words)
        return 0;
    Py_ssize_t words = b->words ? b->words : 1;
    while (words < need)
        words *= 2;
    uint64_t *bits = PyMem_RawCalloc((size_t)FBITS * (size_t)words, sizeof(uint64_t));
    uint64_t *mark = PyMem_RawCalloc((size_t)words, sizeof(uint64_t));
    if (bits == NULL || mark == NULL) {
        PyMem_RawFree(bits);
        PyMem_RawFree(mark);
        PyErr_NoMemory();
        return -1;
    }
    PyMem_RawFree(b->mark);
    b->mark = mark;
    for (Py_ssize_t bit = 0; bit < FBITS && b->words; bit++)
        memcpy(bits + bit * words, b->bits + bit * b->words, (size_t)b->words * sizeof(uint64_t));
    PyMem_RawFree(b->bits);
    b->bits = bits;
    b->words = words;
    return 0;
}

static int promote(Kernel *k, Py_ssize_t item)
{
    int bit = k->nbits++;
    k->bit_of[item] = (int16_t)bit;
    uint64_t b = (uint64_t)1 << (bit % 64);
    IVec *p = &k->postings[item];
    for (Py_ssize_t i = 0; i < p->size; i++) {
        int32_t slot = p->data[i];
        k->slot[slot].fmask[bit / 64] |= b;
        int32_t at = k->slot[slot].pos;
        /* the entry being added has no bucket position yet; add() sets its bits afterwards */
        if (at >= 0)
        {
            Bucket *bk = &k->buckets[k->slot[slot].len];
            bk->bits[bit * bk->words + at / 64] |= (uint64_t)1 << (at % 64);
        }
    }
    return 0;
}

static PyObject *Kernel_add(Kernel *self, PyObject *arg)
{
    Py_ssize_t n;
    int32_t top;
    int32_t *ids = read_ids(arg, &n, 0, &top);
    if (ids == NULL)
        return NULL;
    if (n > INT32_MAX / 2 || self->nslots >= INT32_MAX - 1) {
        PyMem_RawFree(ids);
        PyErr_SetString(PyExc_OverflowError, "index is full");
        return NULL;
    }
    if (ensure_tokens(self, (Py_ssize_t)top + 1) < 0)
        goto fail;
    Py_ssize_t slot = self->nslots;
    {
        if (grow((void **)&self->slot, &self->slots_cap, slot + 1, sizeof(Entry), 1) < 0)
            goto fail;
    }
    /* items of this entry */
    for (Py_ssize_t i = 0; i < n; i++) {
        int32_t t = ids[i];
        int32_t j = self->occ[t]++;
        IVec *its = &self->items_of_tok[t];
        if (j >= its->size) {
            Py_ssize_t c1 = self->items_cap, c2 = self->items_cap;
            if (grow((void **)&self->postings, &c1, self->nitems + 1, sizeof(IVec), 1) < 0 ||
                grow((void **)&self->bit_of, &c2, self->nitems + 1, sizeof(int16_t), 0) < 0)
                goto fail_occ;
            self->items_cap = c1;
            self->bit_of[self->nitems] = -1;
            if (ivec_push(its, (int32_t)self->nitems) < 0)
                goto fail_occ;
            self->nitems++;
        }
    }
    for (Py_ssize_t i = 0; i < n; i++)
        self->occ[ids[i]] = 0;
    /* postings; frequent items become mask bits */
    Entry *e = &self->slot[slot];
    e->seq = ids;
    e->len = (int32_t)n;
    memset(e->fmask, 0, sizeof(e->fmask));
    e->cnt = 0;
    e->pos = -1;
    self->nslots = slot + 1;
    self->alive++;
    for (Py_ssize_t i = 0; i < n; i++) {
        int32_t t = ids[i];
        int32_t item = self->items_of_tok[t].data[self->occ[t]++];
        IVec *p = &self->postings[item];
        if (ivec_push(p, (int32_t)slot) < 0) {
            /* out of memory midway: the entry stays, partially indexed; report it */
            for (Py_ssize_t r = 0; r < n; r++)
                self->occ[ids[r]] = 0;
            return NULL;
        }
        int bit = self->bit_of[item];
        if (bit >= 0)
            e->fmask[bit / 64] |= (uint64_t)1 << (bit % 64);
        else if (p->size >= self->frequent_df && self->nbits < FBITS)
            promote(self, item);
    }
    for (Py_ssize_t i = 0; i < n; i++)
        self->occ[ids[i]] = 0;
    if (n > 0) {
        if (grow((void **)&self->buckets, &self->nbuckets, n + 1, sizeof(Bucket), 1) < 0)
            return NULL;
        Bucket *b = &self->buckets[n];
        Py_ssize_t at = b->size;
        if (grow((void **)&b->slots, &b->cap, at + 1, sizeof(int32_t), 0) < 0 ||
            grow_bits(b, at / 64 + 1) < 0)
            return NULL;
        b->slots[at] = (int32_t)slot;
        b->size++;
        e->pos = (int32_t)at;
        uint64_t lane = (uint64_t)1 << (at % 64);
        uint64_t *word = b->bits + at / 64;
        for (int w = 0; w < FW; w++)
            for (uint64_t mask = e->fmask[w]; mask; mask &= mask - 1)
                word[(64 * w + __builtin_ctzll(mask)) * b->words] |= lane;
    }
    return PyLong_FromSsize_t(slot);
fail_occ:
    for (Py_ssize_t i = 0; i < n; i++)
        self->occ[ids[i]] = 0;
fail:
    PyMem_RawFree(ids);
    return NULL;
}

static PyObject *Kernel_remove(Kernel *self, PyObject *arg)
{
    Py_ssize_t slot = PyLong_AsSsize_t(arg);
    if (slot == -1 && PyErr_Occurred())
        return NULL;
    if (slot < 0 || slot >= self->nslots || self->slot[slot].seq == NULL) {
        PyErr_Format(PyExc_KeyError, "no entry in slot %zd", slot);
        return NULL;
    }
    Entry *e = &self->slot[slot];
    int32_t *ids = e->seq;
    Py_ssize_t n = e->len;
    for (Py_ssize_t i = 0; i < n; i++) {
        int32_t t = ids[i];
        int32_t item = self->items_of_tok[t].data[self->occ[t]++];
        ivec_discard_sorted(&self->postings[item], (int32_t)slot);
    }
    for (Py_ssize_t i = 0; i < n; i++)
        self->occ[ids[i]] = 0;
    if (n > 0) {
        /* the position stays, empty: no bits set, so no scan ever reports it */
        Bucket *b = &self->buckets[n];
        int32_t at = e->pos;
        uint64_t lane = (uint64_t)1 << (at % 64);
        uint64_t *word = b->bits + at / 64;
        for (int w = 0; w < FW; w++)
            for (uint64_t mask = e->fmask[w]; mask; mask &= mask - 1)
                word[(64 * w + __builtin_ctzll(mask)) * b->words] &= ~lane;
        b->slots[at] = -1;
        e->pos = -1;
    }
    PyMem_RawFree(ids);
    e->seq = NULL;
    e->len = 0;
    memset(e->fmask, 0, sizeof(e->fmask));
    self->alive--;
    Py_RETURN_NONE;
}

static inline int push_cand(Kernel *k, double bound, int32_t slot)
{
    if (k->ncands == k->cands_cap &&
        grow((void **)&k->cands, &k->cands_cap, k->ncands + 1, sizeof(Cand), 0) < 0)
        return -1;
    k->cands[k->ncands].bound = bound;
    k->cands[k->ncands].slot = slot;
    k->ncands++;
    return 0;
}

/* Orders k->cands by bound level, best first, into k->sorted (a counting sort). */
static int level_sort(Kernel *k)
{
    Py_ssize_t n = k->ncands;
    if (grow((void **)&k->sorted, &k->sorted_cap, n, sizeof(Cand), 0) < 0)
        return -1;
    Py_ssize_t *start = k->level_start;
    memset(start, 0, sizeof(k->level_start));
    for (Py_ssize_t i = 0; i < n; i++)
        start[(int)(k->cands[i].bound * NLEVELS)]++;
    Py_ssize_t at = 0;
    for (int lev = NLEVELS; lev >= 0; lev--) {
        Py_ssize_t c = start[lev];
        start[lev] = at;
        at += c;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        k->sorted[start[(int)(k->cands[i].bound * NLEVELS)]++] = k->cands[i];
    return 0;
}

/* Bit-sliced counts: c[i] holds bit i of the count of each of 64 lanes (entries). */
#define COUNT_BITS 9 /* counts up to 511 >= FBITS */

/* Lanes whose count is >= need, for all 64 at once (a comparison from the top bit down). */
static inline uint64_t counts_at_least(const uint64_t *c, int width, Py_ssize_t need)
{
    uint64_t greater = 0, equal = ~(uint64_t)0;
    for (int i = width - 1; i >= 0; i--) {
        if ((need >> i) & 1)
            equal &= c[i];
        else {
            greater |= equal & c[i];
            equal &= ~c[i];
        }
    }
    return greater | equal;
}

static inline Py_ssize_t lane_count(const uint64_t *c, int width, int lane)
{
    Py_ssize_t count = 0;
    for (int i = 0; i < width; i++)
        count |= (Py_ssize_t)((c[i] >> lane) & 1) << i;
    return count;
}

/* Entries of bucket b holding at least `need` of the query's frequent bits qb[0..q), that are not
 * candidates yet (b->mark), become candidates. Per 64 entries, a bit-sliced counter adds up the
 * query's bits; it also gives each hit's exact overlap, so the bound needs no visit to the entry
 * (those are random memory accesses). */
static int scan_bucket(Kernel *k, Bucket *b, Py_ssize_t n, const int *qb, int q,
                       Py_ssize_t need, Py_ssize_t m)
{
    Py_ssize_t groups = (b->size + 63) / 64;
    const uint64_t *col[FBITS];
    for (int j = 0; j < q; j++)
        col[j] = b->bits + qb[j] * b->words;
    int width = 5; /* the usual case, q < 32: five counter bits, kept in registers */
    if (q >= 32)
        for (width = 0; ((Py_ssize_t)1 << width) <= q; width++) {
        }
    b->scanned = 1;
    for (Py_ssize_t g = 0; g < groups; g++) {
        uint64_t c[COUNT_BITS] = {0};
        if (q < 32) {
            uint64_t c0 = 0, c1 = 0, c2 = 0, c3 = 0, c4 = 0;
            for (int j = 0; j < q; j++) {
                uint64_t x = col[j][g];
                uint64_t t0 = c0 & x;
                c0 ^= x;
                uint64_t t1 = c1 & t0;
                c1 ^= t0;
                uint64_t t2 = c2 & t1;
                c2 ^= t1;
                uint64_t t3 = c3 & t2;
                c3 ^= t2;
                c4 |= t3;
            }
            c[0] = c0, c[1] = c1, c[2] = c2, c[3] = c3, c[4] = c4;
        }
        else {
            for (int j = 0; j < q; j++) {
                uint64_t carry = col[j][g];
                for (int i = 0; carry && i < width; i++) {
                    uint64_t t = c[i] & carry;
                    c[i] ^= carry;
                    carry = t;
                }
            }
        }
        uint64_t hit = counts_at_least(c, width, need) & ~b->mark[g];
        if (!hit)
            continue;
        b->mark[g] |= hit;
        while (hit) {
            int lane = __builtin_ctzll(hit);
            hit &= hit - 1;
            Py_ssize_t pc = lane_count(c, width, lane);
            if (push_cand(k, rouge_f(min3(pc, m, n), m, n), b->slots[64 * g + lane]) < 0)
                return -1;
            k->n_scan_pushed++;
        }
    }
    k->n_masks += groups * 64;
    return 0;
}

/* Scores the level-sorted candidates from *at on, best bound first, until the rest cannot reach
 * the k-th best score or `budget` LCS were computed. */
static void score_sorted(Kernel *k, Py_ssize_t *at, Py_ssize_t nsorted, Py_ssize_t budget,
                         Hit *top, Py_ssize_t *ntop, Py_ssize_t K, Py_ssize_t W, Py_ssize_t m)
{
    const Entry *ent = k->slot;
    Py_ssize_t done = 0;
    while (*at < nsorted && done < budget) {
        /* the entries and token lists of the next candidates are random memory accesses */
        if (*at + 4 < nsorted)
            __builtin_prefetch(&ent[k->sorted[*at + 4].slot]);
        if (*at + 1 < nsorted)
            __builtin_prefetch(ent[k->sorted[*at + 1].slot].seq);
        Cand c = k->sorted[(*at)++];
        if (*ntop == K) {
            double floor = top[0].score;
            if (c.bound < floor) {
                /* a whole level below the floor ends the list */
                if ((double)((int)(c.bound * NLEVELS) + 1) / NLEVELS <= floor)
                    *at = nsorted;
                continue;
            }
            if (c.bound == floor && c.slot > top[0].slot)
                continue; /* at best a tie with the k-th, which was inserted earlier */
        }
        Py_ssize_t n = ent[c.slot].len;
        Py_ssize_t l = lcs_length(k, ent[c.slot].seq, n, W, m, k->vbits);
        done++;
        k->n_lcs++;
        if (l > 0) {
            Hit h = {rouge_f(l, m, n), c.slot};
            top_push(top, ntop, K, h);
        }
    }
}

/* query(ids, k) -> [(slot, score), ...] best first: the k entries with the highest positive
 * ROUGE-L F against the query, ties by slot. */
static PyObject *Kernel_query(Kernel *self, PyObject *args)
{
    PyObject *obj;
    Py_ssize_t K;
    if (!PyArg_ParseTuple(args, "On", &obj, &K))
        return NULL;
    if (K < 1) {
        PyErr_SetString(PyExc_ValueError, "k must be at least 1");
        return NULL;
    }
    Py_ssize_t m;
    int32_t top_id;
    int32_t *q = read_ids(obj, &m, 1, &top_id);
    if (q == NULL)
        return NULL;
    PyObject *out = NULL;
    Hit *top = NULL;
    int32_t *qitems = NULL;
    Py_ssize_t W = (m + 63) / 64, nrows = 0, nq = 0;
    Py_ssize_t ntop = 0;
    if (m == 0 || self->alive == 0) {
        PyMem_RawFree(q);
        return PyList_New(0);
    }
    top = PyMem_RawMalloc((size_t)K * sizeof(Hit));
    qitems = PyMem_RawMalloc((size_t)m * sizeof(int32_t));
    if (top == NULL || qitems == NULL ||
        grow((void **)&self->pm, &self->pm_cap, m * W, sizeof(uint64_t), 0) < 0 ||
        grow((void **)&self->vbits, &self->vbits_cap, W, sizeof(uint64_t), 0) < 0) {
        if (!PyErr_Occurred())
            PyErr_NoMemory();
        goto done;
    }
    /* match masks and occurrence items of the query; unknown tokens match nothing */
    uint64_t qmask[FW] = {0};
    int qbits[FBITS], nfreq = 0;
    for (Py_ssize_t i = 0; i < m; i++) {
        int32_t t = q[i];
        if (t < 1 || t >= self->tok_cap)
            continue;
        if (self->pm_row[t] < 0) {
            self->pm_row[t] = (int32_t)nrows;
            memset(self->pm + nrows * W, 0, (size_t)W * sizeof(uint64_t));
            nrows++;
        }
        self->pm[(size_t)self->pm_row[t] * W + i / 64] |= (uint64_t)1 << (i % 64);
        int32_t j = self->occ[t]++;
        IVec *its = &self->items_of_tok[t];
        if (j < its->size) {
            int32_t item = its->data[j];
            int bit = self->bit_of[item];
            if (bit >= 0) {
                qmask[bit / 64] |= (uint64_t)1 << (bit % 64);
                qbits[nfreq++] = bit;
            }
            else
                qitems[nq++] = item;
        }
    }
    for (Py_ssize_t i = 0; i < m; i++)
        if (q[i] >= 1 && q[i] < self->tok_cap)
            self->occ[q[i]] = 0;

    /* ScanCount over the rare items' lists */
    IVec *touched = &self->touched;
    touched->size = 0;
    Entry *ent = self->slot;
    for (Py_ssize_t a = 0; a < nq; a++) {
        const IVec *p = &self->postings[qitems[a]];
        self->n_walked += p->size;
        for (Py_ssize_t i = 0; i < p->size; i++) {
            int32_t s = p->data[i];
            if (ent[s].cnt++ == 0 && ivec_push(touched, s) < 0)
                goto reset;
        }
    }
    self->n_queries++;
    self->n_touched += touched->size;
    for (Py_ssize_t i = 0; i < touched->size; i++) {
        const Entry *e = &ent[touched->data[i]];
        Bucket *b = &self->buckets[e->len];
        b->mark[e->pos / 64] |= (uint64_t)1 << (e->pos % 64);
    }
    self->ncands = 0;
    for (Py_ssize_t i = 0; i < touched->size; i++) {
        int32_t s = touched->data[i];
        Py_ssize_t o = ent[s].cnt + common_bits(ent[s].fmask, qmask);
        Py_ssize_t n = ent[s].len;
        if (push_cand(self, rouge_f(min3(o, m, n), m, n), s) < 0)
            goto reset;
    }
    if (level_sort(self) < 0)
        goto reset;

    /* Best bounds first; the first few give the k-th best score a useful value (the floor). */
    Py_ssize_t at = 0, nsorted = self->ncands;
    if (nfreq == 0) {
        score_sorted(self, &at, nsorted, PY_SSIZE_T_MAX, top, &ntop, K, W, m);
        goto finish;
    }
    score_sorted(self, &at, nsorted, 4 * K, top, &ntop, K, W, m);
    /* Entries that share only frequent items join in stages: first those whose bound reaches an
     * optimistic guess, so that the floor rises before the looser stages look at more entries.
     * After a stage with threshold g, every entry with a bound >= g has been considered; once the
     * floor is >= g nothing else can matter. The last guess, 0, makes g the floor itself. */
    static const double guesses[] = {0.5, 0.3, 0.0};
    for (int stage = 0; stage < (int)(sizeof(guesses) / sizeof(guesses[0])); stage++) {
        double floor = ntop == K ? top[0].score : 0.0;
        double g = floor > guesses[stage] ? floor : guesses[stage];
        self->ncands = 0;
        /* what is left of the rare-item candidates joins the first stage */
        for (; at < nsorted; at++)
            if (self->sorted[at].bound >= floor &&
                push_cand(self, self->sorted[at].bound, self->sorted[at].slot) < 0)
                goto reset;
        for (Py_ssize_t n = 1; n < self->nbuckets; n++) {
            Bucket *b = &self->buckets[n];
            if (b->size == 0)
                continue;
            Py_ssize_t most = min3(nfreq, m, n);
            if (rouge_f(most, m, n) < g)
                continue;
            /* the least overlap whose bound reaches g */
            Py_ssize_t need = (Py_ssize_t)(g * (double)(m + n) / 2.0) - 1;
            if (need < 1)
                need = 1;
            while (need > 1 && rouge_f(need - 1, m, n) >= g)
                need--;
            while (rouge_f(need, m, n) < g)
                need++;
            if (scan_bucket(self, b, n, qbits, nfreq, need, m) < 0)
                goto reset;
        }
        if (level_sort(self) < 0)
            goto reset;
        at = 0;
        nsorted = self->ncands;
        score_sorted(self, &at, nsorted, PY_SSIZE_T_MAX, top, &ntop, K, W, m);
        if (ntop == K && top[0].score >= g)
            break;
    }
finish:
    qsort(top, (size_t)ntop, sizeof(Hit), cmp_hits);
    out = PyList_New(ntop);
    if (out == NULL)
        goto reset;
    for (Py_ssize_t i = 0; i < ntop; i++) {
        PyObject *pair = Py_BuildValue("(id)", (int)top[i].slot, top[i].score);
        if (pair == NULL) {
            Py_CLEAR(out);
            goto reset;
        }
        PyList_SET_ITEM(out, i, pair);
    }
reset:
    for (Py_ssize_t i = 0; i < touched->size; i++) {
        Entry *e = &self->slot[touched->data[i]];
        e->cnt = 0;
        self->buckets[e->len].mark[e->pos / 64] = 0;
    }
    for (Py_ssize_t n = 0; n < self->nbuckets; n++) {
        Bucket *b = &self->buckets[n];
        if (b->scanned) {
            memset(b->mark, 0, (size_t)((b->size + 63) / 64) * sizeof(uint64_t));
            b->scanned = 0;
        }
    }
    touched->size = 0;
    self->ncands = 0;
    for (Py_ssize_t i = 0; i < m; i++)
        if (q[i] >= 1 && q[i] < self->tok_cap)
            self->pm_row[q[i]] = -1;
done:
    PyMem_RawFree(q);
    PyMem_RawFree(top);
    PyMem_RawFree(qitems);
    return out;
}

static PyObject *Kernel_stats(Kernel *self, PyObject *Py_UNUSED(ignored))
{
    return Py_BuildValue("{s:n,s:n,s:n,s:i,s:L,s:L,s:L,s:L,s:L,s:L}", "slots", self->nslots,
                         "alive", self->alive, "items", self->nitems, "frequent_items",
                         self->nbits, "queries", self->n_queries, "postings_walked",
                         self->n_walked, "touched", self->n_touched, "masks_scanned",
                         self->n_masks, "scan_pushed", self->n_scan_pushed, "lcs",
                         self->n_lcs);
}

static PyMethodDef Kernel_methods[] = {
    {"add", (PyCFunction)Kernel_add, METH_O,
     "add(token_ids) -> slot: index one entry (token ids >= 1); slots count up from 0."},
    {"remove", (PyCFunction)Kernel_remove, METH_O, "remove(slot): drop one entry."},
    {"query", (PyCFunction)Kernel_query, METH_VARARGS,
     "query(token_ids, k) -> [(slot, score)]: the k best entries by ROUGE-L F, best first, "
     "ties by slot; ids < 1 are tokens no entry has."},
    {"stats", (PyCFunction)Kernel_stats, METH_NOARGS, "sizes of the index's parts"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject KernelType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "_selfinstruct_rouge.Kernel",
    .tp_basicsize = sizeof(Kernel),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Exact top-k ROUGE-L search over token-id sequences.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Kernel_init,
    .tp_dealloc = (destructor)Kernel_dealloc,
    .tp_methods = Kernel_methods,
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_selfinstruct_rouge",
    .m_doc = "Compiled core of selfinstruct_tui's exact ROUGE-L index.",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__selfinstruct_rouge(void)
{
    if (PyType_Ready(&KernelType) < 0)
        return NULL;
    PyObject *mod = PyModule_Create(&moduledef);
    if (mod == NULL)
        return NULL;
    Py_INCREF(&KernelType);
    if (PyModule_AddObject(mod, "Kernel", (PyObject *)&KernelType) < 0) {
        Py_DECREF(&KernelType);
        Py_DECREF(mod);
        return NULL;
    }
    if (PyModule_AddIntConstant(mod, "ABI", 1) < 0) {
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
