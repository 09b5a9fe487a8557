/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* natlens-probe.h - subcommands of the natlens-probe CLI. */
#ifndef NL_PROBE_H
#define NL_PROBE_H

#include <stddef.h>

/* Exit codes shared by all subcommands. */
enum { EXIT_OK = 0, EXIT_RUNTIME = 1, EXIT_USAGE = 2, EXIT_LOCKED = 3 };

int cmd_features(int argc, char **argv);

/* PATH of a file next to this executable (e.g. natlens.bpf.o). */
int exe_sibling(const char *name, char *out, size_t len);

#endif /* NL_PROBE_H */
