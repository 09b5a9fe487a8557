/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * capture-state.h - what the per-netns lock file says about the capture.
 *
 * The lock file (--lock-dir/netns-DEV-INO.lock) outlives its holder: it says
 * who held it, whether that holder stopped cleanly, and until when the
 * namespace was known to be captured (a heartbeat written with every STATS
 * record). The next holder reads it before writing its own, and reports the
 * time nobody captured as a gap. Text, one "key value" per line, so an
 * operator can cat it; the first line is the holder's pid alone (what a
 * refused second probe quotes).
 */
#ifndef NL_CAPTURE_STATE_H
#define NL_CAPTURE_STATE_H

#include <stdbool.h>
#include <stddef.h>
#include <linux/types.h>

enum cs_state {
	CS_NONE = 0,    /* no (readable) state */
	CS_STARTING,    /* lock taken, capture not started yet; heartbeat carried over from the previous holder */
	CS_RUNNING,     /* capturing; heartbeat moves */
	CS_STOPPED,     /* stopped by a signal, filters detached */
	CS_AGENT_GONE,  /* the agent (parent or stdout reader) went away; the probe detached and exited */
	CS_FAILED,      /* exited on an error, filters detached */
};

struct capture_state {
	long pid;
	__u64 netns_cookie;     /* SO_NETNS_COOKIE: unique per namespace for the boot; 0 = unknown */
	char boot_id[40];       /* /proc/sys/kernel/random/boot_id */
	enum cs_state state;
	__u64 started_ns;       /* CLOCK_REALTIME when this holder's capture started; 0 before */
	__u64 heartbeat_ns;     /* CLOCK_REALTIME until which the namespace is known to be captured; 0 = never */
};

/* Parses the file behind fd (from offset 0). 0 on success, -1 if empty or not a state. */
int cs_read(int fd, struct capture_state *out);
/* Rewrites the whole file. 0 or -errno. */
int cs_write(int fd, const struct capture_state *st);
const char *cs_state_name(enum cs_state s);
/* The current netns's cookie, 0 if the kernel cannot tell (before 5.14). */
__u64 cs_netns_cookie(void);
void cs_boot_id(char *out, size_t len);
/* Whether `prev` describes this namespace in this boot (the lock file is named
 * after the netns inode, which the kernel reuses once a namespace is gone). */
bool cs_same_namespace(const struct capture_state *prev, const struct capture_state *self);

#endif /* NL_CAPTURE_STATE_H */
