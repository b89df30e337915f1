/* What vkagent's parts share: a command's result, the dispatcher, and the processes guest-exec started. */
#ifndef VKAGENT_H
#define VKAGENT_H

#include <poll.h>

#include "json.h"

#define MAX_PROCS 64

struct result {
    struct buf value;           /* the JSON of "return" (empty: {}) */
    const char *err_class;      /* set: an error reply instead */
    char *err_desc;
    int no_reply;               /* guest-shutdown answers nothing, as qemu-ga */
};

void fail(struct result *r, const char *cls, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void dispatch(const char *cmd, const struct jval *args, struct result *r, int *delimited);

/* procs.c: guest-exec and friends */
void cmd_exec(const struct jval *args, struct result *r);
void cmd_exec_status(const struct jval *args, struct result *r);
void cmd_exec_input(const struct jval *args, struct result *r);
int procs_pollfds(struct pollfd *fds);          /* fills at most 3 * MAX_PROCS entries; returns how many */
void procs_io(const struct pollfd *fds, int n);
void procs_reap(void);

#endif
