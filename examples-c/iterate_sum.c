/* iterate_sum: zero-copy iteration over a SafeTensors file, summing every F32 tensor.
 *
 *   iterate_sum FILE.safetensors [KEY]...
 *
 * Prints one line per F32 tensor, "sum NAME VALUE", with the sum of its elements taken in
 * order as doubles, then "total VALUE". The bytes are read straight from the mapped file
 * through the view's data pointer: nothing is copied but the 4 bytes of each element
 * (memcpy keeps the read well-defined whatever the alignment). */
#include <stdio.h>
#include <string.h>

#include "check.h"

int main(int argc, char **argv)
{
    int rc = 0;
    NpkioSafetensorsIter *it = NULL;
    NpkioTensorView v;
    bool more = false;
    double total = 0.0;
    size_t n_f32 = 0;

    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE.safetensors [KEY]...\n", argv[0]);
        return 2;
    }
    /* No keys: NULL means every tensor, in file order. */
    CHECK(npkio_safetensors_iter_open(argv[1], argc > 2 ? (const char *const *)(argv + 2) : NULL,
                                      (size_t)(argc - 2), &it));
    for (;;) {
        size_t i, n;
        double sum = 0.0;
        CHECK(npkio_safetensors_iter_next(it, &v, &more));
        if (!more) {
            break;
        }
        if (v.dtype != NPKIO_DTYPE_F32) {
            continue;
        }
        n = v.nbytes / sizeof(float);
        for (i = 0; i < n; i++) {
            float x;
            memcpy(&x, v.data + i * sizeof x, sizeof x);
            sum += (double)x;
        }
        printf("sum ");
        fwrite(v.name, 1, v.name_len, stdout);
        printf(" %.17g\n", sum);
        total += sum;
        n_f32++;
    }
    printf("total %.17g over %zu F32 tensors\n", total, n_f32);
done:
    npkio_safetensors_iter_free(it);
    return rc;
}
