/* pipeline: the seed's "Model Conversion Pipeline", in C.
 *
 *   pipeline ORIGINAL.safetensors WORKDIR
 *
 * 1. check the model's structure (header only);
 * 2. convert it to WORKDIR/model.npk;
 * 3. load encoder.weight, quantize it to int8 (symmetric, one scale) and save it back,
 *    with its scale as encoder.weight.scale;
 * 4. export WORKDIR/quantized.safetensors with metadata {"quantization": "int8"};
 * 5. read the export back and check it. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

#define WEIGHT "encoder.weight"

static int join(char *out, size_t cap, const char *dir, const char *name)
{
    int n = snprintf(out, cap, "%s/%s", dir, name);
    return n > 0 && (size_t)n < cap;
}

int main(int argc, char **argv)
{
    int rc = 0;
    char npk_path[4096], out_path[4096];
    NpkioSafetensors *st = NULL, *check = NULL;
    NpkioNumpack *npk = NULL;
    NpkioTensorView w, q;
    int8_t *quantized = NULL;
    size_t count = 0, i, n, nmeta = 0;
    float max_abs = 0.0f, scale;
    const char *meta_keys[] = {"quantization"};
    const char *meta_values[] = {"int8"};
    const char *k, *v;
    size_t kl, vl;

    if (argc != 3 || !join(npk_path, sizeof npk_path, argv[2], "model.npk") ||
        !join(out_path, sizeof out_path, argv[2], "quantized.safetensors")) {
        fprintf(stderr, "usage: %s ORIGINAL.safetensors WORKDIR\n", argv[0]);
        return 2;
    }

    /* 1. Check the model's structure: opening reads the header only. */
    CHECK(npkio_safetensors_open(argv[1], &st));
    CHECK(npkio_safetensors_count(st, &count));
    printf("Tensors:");
    for (i = 0; i < count; i++) {
        NpkioTensorView t;
        CHECK(npkio_safetensors_get(st, i, &t));
        printf(" %s", t.name);
    }
    printf("\n");
    CHECK(npkio_safetensors_find(st, WEIGHT, &w, NULL));
    if (w.dtype != NPKIO_DTYPE_F32 || w.ndim != 2) {
        fprintf(stderr, "%s: expected a 2-d F32 tensor\n", WEIGHT);
        rc = 1;
        goto done;
    }
    npkio_safetensors_free(st);
    st = NULL;

    /* 2. Convert to NumPack (replacing any earlier run's output). */
    CHECK(npkio_from_safetensors_file(argv[1], npk_path, NULL, 0, true,
                                      NPKIO_DEFAULT_CHUNK_SIZE, 0, 0));

    /* 3. Process with NumPack: load, quantize, save back. */
    CHECK(npkio_numpack_open(npk_path, &npk));
    CHECK(npkio_numpack_view(npk, WEIGHT, &w));
    n = w.nbytes / sizeof(float);
    for (i = 0; i < n; i++) {
        float x;
        memcpy(&x, w.data + i * sizeof x, sizeof x);
        if (fabsf(x) > max_abs) {
            max_abs = fabsf(x);
        }
    }
    scale = max_abs > 0.0f ? max_abs / 127.0f : 1.0f;
    quantized = malloc(n ? n : 1);
    if (!quantized) {
        rc = 1;
        goto done;
    }
    for (i = 0; i < n; i++) {
        float x, r;
        memcpy(&x, w.data + i * sizeof x, sizeof x);
        r = roundf(x / scale);
        quantized[i] = (int8_t)(r > 127.0f ? 127.0f : (r < -127.0f ? -127.0f : r));
    }
    {
        /* w.shape stays valid after the save below: views live as long as the handle. */
        NpkioTensorDesc arrays[2];
        arrays[0].name = WEIGHT;
        arrays[0].dtype = NPKIO_DTYPE_I8;
        arrays[0].ndim = w.ndim;
        arrays[0].shape = w.shape;
        arrays[0].data = quantized;
        arrays[0].nbytes = n;
        arrays[1].name = WEIGHT ".scale";
        arrays[1].dtype = NPKIO_DTYPE_F32;
        arrays[1].ndim = 0;
        arrays[1].shape = NULL;
        arrays[1].data = &scale;
        arrays[1].nbytes = sizeof scale;
        CHECK(npkio_numpack_save(npk, arrays, 2));
    }
    printf("quantized %s: %zu values, scale %.9g\n", WEIGHT, n, (double)scale);
    CHECK(npkio_numpack_close(npk));
    npk = NULL;

    /* 4. Export back to SafeTensors with the new metadata. */
    CHECK(npkio_to_safetensors_file(npk_path, out_path, NULL, 0, meta_keys, meta_values, 1,
                                    NPKIO_DEFAULT_CHUNK_SIZE, 0, 0));

    /* 5. Check the export. */
    CHECK(npkio_safetensors_open(out_path, &check));
    CHECK(npkio_safetensors_find(check, WEIGHT, &q, NULL));
    CHECK(npkio_safetensors_metadata_count(check, &nmeta));
    if (q.dtype != NPKIO_DTYPE_I8 || q.nbytes != n || memcmp(q.data, quantized, n) != 0 ||
        nmeta != 1) {
        fprintf(stderr, "the export does not hold the quantized weight\n");
        rc = 1;
        goto done;
    }
    CHECK(npkio_safetensors_metadata_get(check, 0, &k, &kl, &v, &vl));
    if (strcmp(k, "quantization") != 0 || strcmp(v, "int8") != 0) {
        fprintf(stderr, "unexpected metadata %s=%s\n", k, v);
        rc = 1;
        goto done;
    }
    printf("exported %s with {\"%s\": \"%s\"}\n", out_path, k, v);
done:
    free(quantized);
    npkio_safetensors_free(check);
    npkio_numpack_free(npk);
    npkio_safetensors_free(st);
    return rc;
}
