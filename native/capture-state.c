// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
#define _GNU_SOURCE
#include "capture-state.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>

#ifndef SO_NETNS_COOKIE
#define SO_NETNS_COOKIE 71
#endif

#define CS_MAGIC "natlens-capture-state 1"

static const char *const STATE_NAMES[] = {
	[CS_NONE] = "none",
	[CS_STARTING] = "starting",
	[CS_RUNNING] = "running",
	[CS_STOPPED] = "stopped",
	[CS_AGENT_GONE] = "agent-gone",
	[CS_FAILED] = "failed",
};

const char *cs_state_name(enum cs_state s)
{
	return (unsigned)s < sizeof(STATE_NAMES) / sizeof(STATE_NAMES[0]) ? STATE_NAMES[s] : "none";
}

static enum cs_state state_by_name(const char *name)
{
	for (unsigned i = 1; i < sizeof(STATE_NAMES) / sizeof(STATE_NAMES[0]); i++)
		if (!strcmp(name, STATE_NAMES[i]))
			return (enum cs_state)i;
	return CS_NONE;
}

int cs_read(int fd, struct capture_state *out)
{
	char buf[1024], *line, *save = NULL;
	ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
	bool magic = false;
	int i = 0;

	*out = (struct capture_state){ 0 };
	if (n <= 0)
		return -1;
	buf[n] = '\0';
	/* A crash between the rewrite and the truncate may leave a longer old tail:
	 * the first occurrence of each key wins, unknown lines are skipped. */
	for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save), i++) {
		char key[32], val[64];
		unsigned long long u;

		if (i == 0) {
			out->pid = strtol(line, NULL, 10);
			continue;
		}
		if (i == 1) {
			magic = !strcmp(line, CS_MAGIC);
			if (!magic)
				break;
			continue;
		}
		if (sscanf(line, "%31s %63s", key, val) != 2)
			continue;
		u = strtoull(val, NULL, 10);
		if (!strcmp(key, "netns_cookie") && !out->netns_cookie)
			out->netns_cookie = u;
		else if (!strcmp(key, "boot_id") && !out->boot_id[0] && strcmp(val, "-"))
			snprintf(out->boot_id, sizeof(out->boot_id), "%.39s", val);
		else if (!strcmp(key, "state") && out->state == CS_NONE)
			out->state = state_by_name(val);
		else if (!strcmp(key, "started_ns") && !out->started_ns)
			out->started_ns = u;
		else if (!strcmp(key, "heartbeat_ns") && !out->heartbeat_ns)
			out->heartbeat_ns = u;
	}
	return magic && out->state != CS_NONE ? 0 : -1;
}

int cs_write(int fd, const struct capture_state *st)
{
	char buf[512];
	int n = snprintf(buf, sizeof(buf),
			 "%ld\n" CS_MAGIC "\nnetns_cookie %llu\nboot_id %s\nstate %s\nstarted_ns %llu\nheartbeat_ns %llu\n",
			 st->pid, (unsigned long long)st->netns_cookie, st->boot_id[0] ? st->boot_id : "-",
			 cs_state_name(st->state), (unsigned long long)st->started_ns,
			 (unsigned long long)st->heartbeat_ns);

	if (n <= 0 || (size_t)n >= sizeof(buf))
		return -EOVERFLOW;
	/* One write per heartbeat; the file only shrinks when the state word does. */
	if (pwrite(fd, buf, n, 0) != n)
		return errno ? -errno : -EIO;
	if (ftruncate(fd, n) < 0)
		return -errno;
	return 0;
}

__u64 cs_netns_cookie(void)
{
	__u64 cookie = 0;
	socklen_t len = sizeof(cookie);
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return 0;
	if (getsockopt(fd, SOL_SOCKET, SO_NETNS_COOKIE, &cookie, &len) < 0 || len != sizeof(cookie))
		cookie = 0;
	close(fd);
	return cookie;
}

void cs_boot_id(char *out, size_t len)
{
	int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
	ssize_t n = fd >= 0 ? read(fd, out, len - 1) : -1;

	if (fd >= 0)
		close(fd);
	if (n <= 0)
		n = 0;
	out[n] = '\0';
	out[strcspn(out, " \n")] = '\0';
}

bool cs_same_namespace(const struct capture_state *prev, const struct capture_state *self)
{
	if (strcmp(prev->boot_id, self->boot_id))
		return false;
	/* Without cookies (old kernels) the inode in the file name is all there is. */
	return !prev->netns_cookie || !self->netns_cookie || prev->netns_cookie == self->netns_cookie;
}
