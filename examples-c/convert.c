/* convert: SafeTensors file <-> NumPack directory.
 *
 *   convert to-numpack IN.safetensors OUT.npk [--drop] [--key NAME]... [--chunk BYTES]
 *   convert to-safetensors IN.npk OUT.safetensors [--name NAME]... [--meta KEY=VALUE]...
 *
 * --key/--name select tensors (all when none is given); --meta replaces the metadata
 * (the directory's own, carried from its source file, when none is given); --drop
 * replaces an existing output instead of merging into it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

int main(int argc, char **argv)
{
    int rc = 0, i;
    const char **names = NULL, **keys = NULL, **values = NULL;
    char **pairs = NULL;
    size_t nnames = 0, nmeta = 0;
    bool drop = false;
    size_t chunk = NPKIO_DEFAULT_CHUNK_SIZE;

    if (argc < 4) {
        fprintf(stderr,
                "usage: %s to-numpack|to-safetensors INPUT OUTPUT [--drop] [--key NAME]... "
                "[--meta KEY=VALUE]... [--chunk BYTES]\n",
                argv[0]);
        return 2;
    }
    /* At most argc entries each; calloc(0) is avoided since argc >= 4. */
    names = calloc((size_t)argc, sizeof *names);
    keys = calloc((size_t)argc, sizeof *keys);
    values = calloc((size_t)argc, sizeof *values);
    pairs = calloc((size_t)argc, sizeof *pairs);
    if (!names || !keys || !values || !pairs) {
        fprintf(stderr, "out of memory\n");
        rc = 1;
        goto done;
    }
    for (i = 4; i < argc; i++) {
        if (strcmp(argv[i], "--drop") == 0) {
            drop = true;
        } else if ((strcmp(argv[i], "--key") == 0 || strcmp(argv[i], "--name") == 0) &&
                   i + 1 < argc) {
            names[nnames++] = argv[++i];
        } else if (strcmp(argv[i], "--chunk") == 0 && i + 1 < argc) {
            chunk = (size_t)strtoull(argv[++i], NULL, 10);
        } else if (strcmp(argv[i], "--meta") == 0 && i + 1 < argc) {
            char *eq;
            char *copy = malloc(strlen(argv[i + 1]) + 1);
            if (!copy) {
                rc = 1;
                goto done;
            }
            strcpy(copy, argv[++i]);
            pairs[nmeta] = copy;
            eq = strchr(copy, '=');
            if (!eq) {
                fprintf(stderr, "--meta wants KEY=VALUE, not %s\n", copy);
                rc = 2;
                nmeta++;
                goto done;
            }
            *eq = '\0';
            keys[nmeta] = copy;
            values[nmeta] = eq + 1;
            nmeta++;
        } else {
            fprintf(stderr, "unknown argument: %s\n", argv[i]);
            rc = 2;
            goto done;
        }
    }

    if (strcmp(argv[1], "to-numpack") == 0) {
        /* keys == NULL converts every tensor; a non-NULL list converts exactly those. */
        CHECK(npkio_from_safetensors_file(argv[2], argv[3], nnames ? names : NULL, nnames,
                                          drop, chunk, 0, 0));
        printf("converted %s -> %s\n", argv[2], argv[3]);
    } else if (strcmp(argv[1], "to-safetensors") == 0) {
        CHECK(npkio_to_safetensors_file(argv[2], argv[3], nnames ? names : NULL, nnames,
                                        nmeta ? keys : NULL, nmeta ? values : NULL, nmeta,
                                        chunk, 0, 0));
        printf("exported %s -> %s\n", argv[2], argv[3]);
    } else {
        fprintf(stderr, "unknown direction: %s\n", argv[1]);
        rc = 2;
    }
done:
    if (pairs) {
        size_t k;
        for (k = 0; k < nmeta; k++) {
            free(pairs[k]);
        }
    }
    free(pairs);
    free(values);
    free(keys);
    free(names);
    return rc;
}
