/* inspect: print the tensors and metadata of SafeTensors files and NumPack directories.
 *
 *   inspect PATH...
 *
 * Exit status 0 on success, 1 when npkio refused any input (one message each, saying
 * why); the other inputs are still inspected. */
#include <stdio.h>
#include <sys/stat.h>

#include "check.h"

static void print_shape(size_t ndim, const uint64_t *shape)
{
    size_t i;
    putchar('[');
    for (i = 0; i < ndim; i++) {
        printf(i ? ", %llu" : "%llu", (unsigned long long)shape[i]);
    }
    putchar(']');
}

static void print_name(const char *name, size_t len)
{
    fwrite(name, 1, len, stdout);
}

static int inspect_safetensors(const char *path)
{
    int rc = 0;
    NpkioSafetensors *st = NULL;
    size_t count = 0, nmeta = 0, i;
    bool has_meta = false;

    CHECK(npkio_safetensors_open(path, &st));
    CHECK(npkio_safetensors_count(st, &count));
    printf("safetensors %s: %zu tensors\n", path, count);
    for (i = 0; i < count; i++) {
        NpkioTensorView v;
        CHECK(npkio_safetensors_get(st, i, &v));
        printf("  ");
        print_name(v.name, v.name_len);
        printf(" %s ", npkio_dtype_name(v.dtype));
        print_shape(v.ndim, v.shape);
        printf(" %zu bytes\n", v.nbytes);
    }
    CHECK(npkio_safetensors_has_metadata(st, &has_meta));
    CHECK(npkio_safetensors_metadata_count(st, &nmeta));
    if (has_meta) {
        printf("metadata: %zu entries\n", nmeta);
    } else {
        printf("metadata: none\n");
    }
    for (i = 0; i < nmeta; i++) {
        const char *k, *v;
        size_t kl, vl;
        CHECK(npkio_safetensors_metadata_get(st, i, &k, &kl, &v, &vl));
        printf("  ");
        print_name(k, kl);
        printf(" = ");
        print_name(v, vl);
        putchar('\n');
    }
done:
    npkio_safetensors_free(st);
    return rc;
}

static int inspect_numpack(const char *path)
{
    int rc = 0;
    NpkioNumpack *npk = NULL;
    size_t count = 0, nmeta = 0, i;

    CHECK(npkio_numpack_open(path, &npk));
    CHECK(npkio_numpack_count(npk, &count));
    printf("numpack %s: %zu arrays\n", path, count);
    for (i = 0; i < count; i++) {
        const char *name;
        size_t len;
        NpkioArrayInfo info;
        CHECK(npkio_numpack_name(npk, i, &name, &len));
        /* name is NUL-terminated too: usable as a C string for lookups. */
        CHECK(npkio_numpack_info(npk, name, &info));
        printf("  ");
        print_name(info.name, info.name_len);
        printf(" %s ", npkio_dtype_name(info.dtype));
        print_shape(info.ndim, info.shape);
        printf(" %llu bytes", (unsigned long long)info.nbytes);
        if (info.deleted_rows) {
            printf(", %llu rows deleted", (unsigned long long)info.deleted_rows);
        }
        if (info.segmented) {
            printf(", segmented");
        }
        printf(info.zero_copy ? ", zero-copy\n" : ", gathered\n");
    }
    CHECK(npkio_numpack_metadata_count(npk, &nmeta));
    printf("metadata: %zu entries\n", nmeta);
    for (i = 0; i < nmeta; i++) {
        const char *k, *v;
        size_t kl, vl;
        CHECK(npkio_numpack_metadata_get(npk, i, &k, &kl, &v, &vl));
        printf("  ");
        print_name(k, kl);
        printf(" = ");
        print_name(v, vl);
        putchar('\n');
    }
done:
    npkio_numpack_free(npk);
    return rc;
}

int main(int argc, char **argv)
{
    int i, rc = 0;
    if (argc < 2) {
        fprintf(stderr, "usage: %s PATH...  (SafeTensors files or NumPack directories)\n",
                argv[0]);
        return 2;
    }
    printf("npkio %s\n", npkio_version());
    for (i = 1; i < argc; i++) {
        struct stat sb;
        int r = (stat(argv[i], &sb) == 0 && S_ISDIR(sb.st_mode)) ? inspect_numpack(argv[i])
                                                                 : inspect_safetensors(argv[i]);
        if (r != 0) {
            rc = r;
        }
    }
    return rc;
}
