/* Shared by the C examples: stop with the status name and the thread's last error
 * message when an npkio call fails. */
#ifndef NPKIO_EXAMPLES_CHECK_H
#define NPKIO_EXAMPLES_CHECK_H

#include <stdio.h>

#include "npkio.h"

/* Prints "error: NPKIO_STATUS_...: message: call" and returns the status. */
static NpkioStatus npkio_report(NpkioStatus status, const char *what)
{
    if (status != NPKIO_STATUS_OK) {
        const char *name = npkio_status_name(status);
        fprintf(stderr, "error: %s: %s: %s\n", name ? name : "?", npkio_last_error_message(),
                what);
    }
    return status;
}

/* Evaluates an npkio call; on failure reports it and jumps to the function's `done`
 * label with `rc` set to 1, so handles are freed on every path. */
#define CHECK(call)                                                                        \
    do {                                                                                   \
        if (npkio_report((call), #call) != NPKIO_STATUS_OK) {                              \
            rc = 1;                                                                        \
            goto done;                                                                     \
        }                                                                                  \
    } while (0)

#endif
