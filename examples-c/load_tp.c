/* load_tp: tensor-parallel loading. Two "ranks" each load their half of every matrix of a
 * checkpoint, split along dimension 0 (rows) and then along dimension 1 (columns), into
 * memory they own; the halves joined must equal the whole tensor, as the zero-copy view
 * of the SafeTensors reader shows it.
 *
 *   load_tp CHECKPOINT
 *
 * Prints one line per matrix and a summary; exits 1 if any half is wrong (or an npkio
 * call fails). It also shows that an invalid request is refused before anything is
 * written: a slice past the end gives NPKIO_STATUS_INVALID_ARGUMENT naming the request,
 * and the destinations keep their bytes. */
#include <stdlib.h>
#include <string.h>

#include "check.h"

/* Loads rank 0's and rank 1's halves of `name` along `dim` with one npkio_load_run call
 * (both requests at once: the loader reads them in parallel). The caller frees *half. */
static NpkioStatus load_halves(const NpkioLoader *loader, const char *name, uint32_t dim,
                               unsigned char *half[2], size_t len[2])
{
    NpkioLoadRequest req[2];
    NpkioStatus st;
    int r;

    half[0] = half[1] = NULL;
    for (r = 0; r < 2; r++) {
        memset(&req[r], 0, sizeof req[r]);
        req[r].name = name;
        req[r].slice = NPKIO_LOAD_SHARD;
        req[r].dim = dim;
        req[r].start = (uint64_t)r; /* rank */
        req[r].end = 2;             /* world */
        req[r].dtype = NPKIO_LOAD_AS_STORED;
        st = npkio_load_output_size(loader, &req[r], &len[r]);
        if (st != NPKIO_STATUS_OK) {
            return st;
        }
        half[r] = malloc(len[r] ? len[r] : 1);
        req[r].dst = half[r];
        req[r].capacity = len[r];
    }
    return npkio_load_run(loader, req, 2, NULL, NULL);
}

/* Whether the column halves a (n × m0 elements) and b (n × m1) joined row by row equal
 * `whole` (n × (m0 + m1)), elements of `e` bytes. */
static int columns_join(const unsigned char *whole, const unsigned char *a, const unsigned char *b,
                        size_t n, size_t m0, size_t m1, size_t e)
{
    size_t i;
    for (i = 0; i < n; i++) {
        const unsigned char *row = whole + i * (m0 + m1) * e;
        if (memcmp(row, a + i * m0 * e, m0 * e) != 0 ||
            memcmp(row + m0 * e, b + i * m1 * e, m1 * e) != 0) {
            return 0;
        }
    }
    return 1;
}

int main(int argc, char **argv)
{
    int rc = 0;
    NpkioLoader *loader = NULL;
    NpkioSafetensors *st = NULL;
    unsigned char *half[2] = {NULL, NULL};
    size_t count = 0, i, matrices = 0, bad = 0;

    if (argc != 2) {
        fprintf(stderr, "usage: %s CHECKPOINT\n", argv[0]);
        return 2;
    }
    CHECK(npkio_load_open(argv[1], &loader));
    CHECK(npkio_safetensors_open(argv[1], &st));
    CHECK(npkio_load_count(loader, &count));
    for (i = 0; i < count; i++) {
        NpkioTensorView t, whole;
        size_t len[2], n, m, e;
        int rows_ok, cols_ok;

        CHECK(npkio_load_get(loader, i, &t));
        if (t.ndim != 2) {
            continue;
        }
        CHECK(npkio_safetensors_find(st, t.name, &whole, NULL));
        n = (size_t)t.shape[0];
        m = (size_t)t.shape[1];
        e = (size_t)npkio_dtype_bits(t.dtype) / 8;

        /* Rows: rank 0's half followed by rank 1's is the whole tensor. */
        CHECK(load_halves(loader, t.name, 0, half, len));
        rows_ok = len[0] + len[1] == whole.nbytes && memcmp(half[0], whole.data, len[0]) == 0 &&
                  memcmp(half[1], whole.data + len[0], len[1]) == 0;
        free(half[0]);
        free(half[1]);
        half[0] = half[1] = NULL;

        /* Columns: row by row, rank 0's columns then rank 1's. */
        CHECK(load_halves(loader, t.name, 1, half, len));
        cols_ok = len[0] + len[1] == whole.nbytes &&
                  columns_join(whole.data, half[0], half[1], n, len[0] / (n * e),
                               len[1] / (n * e), e);
        free(half[0]);
        free(half[1]);
        half[0] = half[1] = NULL;

        printf("%s %s [%zu, %zu]: rows %s, columns %s\n", t.name, npkio_dtype_name(t.dtype), n,
               m, rows_ok ? "ok" : "WRONG", cols_ok ? "ok" : "WRONG");
        matrices++;
        bad += !rows_ok + !cols_ok;
    }

    /* An invalid request next to a valid one: refused before either destination changes. */
    if (count > 0) {
        NpkioTensorView t;
        NpkioLoadRequest req[2];
        NpkioStatus s;
        size_t need = 0, k;
        int named, untouched;

        CHECK(npkio_load_get(loader, 0, &t));
        memset(req, 0, sizeof req);
        req[0].name = t.name;
        req[0].slice = NPKIO_LOAD_RANGE;
        req[0].start = 0;
        req[0].end = 1;
        req[0].dtype = NPKIO_LOAD_AS_STORED;
        CHECK(npkio_load_output_size(loader, &req[0], &need));
        half[0] = malloc(need + 1);
        half[1] = malloc(need + 1);
        memset(half[0], 0x5a, need + 1);
        memset(half[1], 0x5a, need + 1);
        req[0].dst = half[0];
        req[0].capacity = need + 1;
        req[1] = req[0];
        req[1].end = t.shape[0] + 1; /* past the end */
        req[1].dst = half[1];
        s = npkio_load_run(loader, req, 2, NULL, NULL);
        untouched = 1;
        for (k = 0; k <= need; k++) {
            untouched &= half[0][k] == 0x5a && half[1][k] == 0x5a;
        }
        named = strstr(npkio_last_error_message(), "request 1 ") != NULL &&
                strstr(npkio_last_error_message(), "request 0 ") == NULL;
        printf("out-of-range slice: %s, %s, destinations %s\n", npkio_status_name(s),
               named ? "request 1 named" : "NOT NAMED", untouched ? "untouched" : "WRITTEN");
        if (s != NPKIO_STATUS_INVALID_ARGUMENT || !named || !untouched) {
            bad++;
        }
    }

    printf("%zu matrices, %zu wrong\n", matrices, bad);
    if (bad != 0 || matrices == 0) {
        rc = 1;
    }
done:
    free(half[0]);
    free(half[1]);
    npkio_safetensors_free(st);
    npkio_load_free(loader);
    return rc;
}
