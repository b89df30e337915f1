/* vkagent: virtkit's guest agent for minimal VMs: the qemu-guest-agent protocol on a virtio-serial port.
 *
 * A busybox guest has no Python and no qemu-ga; /init starts this static binary instead. It speaks the
 * subset of qemu-ga's protocol virtkit uses, so one host client drives it and Debian's qemu-guest-agent alike:
 * guest-sync(-delimited), guest-ping, guest-info, guest-exec (+ input-data, capture-output), guest-exec-status,
 * guest-file-open/read/write/close, guest-shutdown. Extensions, asked for only when guest-info names this
 * agent: guest-exec "x-virtkit-stream" (exec-status hands out the output gathered so far, not all at exit) and
 * "x-virtkit-stdin" (stdin stays open; x-virtkit-exec-input feeds it).
 *
 * One thread, one poll loop: the port, the children's pipes and a signalfd (SIGCHLD; SIGIO, which the
 * virtio console driver sends when the host side connects). While no host is connected a virtio port reads
 * EOF at once and polls as hung up, so the agent then waits on the signalfd instead of spinning.
 *
 * Usage: vkagent [-p PORT_DEVICE | --stdio]   (--stdio: requests on stdin, replies on stdout; for tests)
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "json.h"
#include "vkagent.h"

#define PORT_NAME "org.qemu.guest_agent.0"
#define PORT_WAIT_S 60          /* the port appears once the virtio console driver has talked to QEMU */
#define MAX_REQUEST (96u << 20) /* input-data of a large guest-exec, base64 */

static int port_rd = -1, port_wr = -1;
static int stdio_mode;
static int connected = 1;
static struct buf inbuf;        /* request bytes not handled yet */

/* -- the port ----------------------------------------------------------------------------------------------- */
static int find_port(char *path, size_t size)
{
    DIR *d = opendir("/sys/class/virtio-ports");
    struct dirent *e;
    int found = 0;
    if (!d)
        return 0;
    while (!found && (e = readdir(d))) {
        char p[300], name[64] = "";
        if (e->d_name[0] == '.')
            continue;
        snprintf(p, sizeof p, "/sys/class/virtio-ports/%s/name", e->d_name);
        FILE *f = fopen(p, "r");
        if (!f)
            continue;
        if (fgets(name, sizeof name, f) && !strncmp(name, PORT_NAME, strlen(PORT_NAME))) {
            snprintf(path, size, "/dev/%s", e->d_name);
            /* no udev in a minimal guest: make the node when devtmpfs has not */
            snprintf(p, sizeof p, "/sys/class/virtio-ports/%s/dev", e->d_name);
            FILE *df = fopen(p, "r");
            unsigned maj, min;
            if (df && fscanf(df, "%u:%u", &maj, &min) == 2 && access(path, F_OK) != 0)
                mknod(path, S_IFCHR | 0600, makedev(maj, min));
            if (df)
                fclose(df);
            found = 1;
        }
        fclose(f);
    }
    closedir(d);
    return found;
}

static int open_port(const char *given)
{
    char path[300];
    if (given) {
        snprintf(path, sizeof path, "%s", given);
    } else {
        struct timespec tick = {0, 20 * 1000 * 1000};
        int tries = PORT_WAIT_S * 50;
        while (!find_port(path, sizeof path)) {
            if (--tries <= 0) {
                fprintf(stderr, "vkagent: no virtio-serial port named %s\n", PORT_NAME);
                return -1;
            }
            nanosleep(&tick, NULL);
        }
    }
    int fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "vkagent: %s: %s\n", path, strerror(errno));
        return -1;
    }
    /* SIGIO when the host connects: the wake-up while no host is there */
    if (fcntl(fd, F_SETOWN, getpid()) < 0 || fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_ASYNC) < 0)
        fprintf(stderr, "vkagent: O_ASYNC on %s: %s (polling each second instead)\n", path, strerror(errno));
    port_rd = port_wr = fd;
    return 0;
}

/* All of `data`, or nothing more once the host has gone: a reply to a host that left is dropped. */
static void port_write(const char *data, size_t n)
{
    int waited = 0;
    while (n) {
        ssize_t w = write(port_wr, data, n);
        if (w > 0) {
            data += w;
            n -= (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno != EAGAIN)
            return;
        struct pollfd pfd = {port_wr, POLLOUT, 0};
        if (poll(&pfd, 1, 1000) == 0 && ++waited > 30)
            return;
        if ((pfd.revents & POLLHUP) && !(pfd.revents & POLLOUT))
            return;
    }
}

static void reply(struct buf *msg, int delimited)
{
    if (delimited)
        port_write("\xff", 1);
    buf_add(msg, "\n", 1);
    port_write(msg->p, msg->len);
}

/* -- requests ----------------------------------------------------------------------------------------------- */
static void error_reply(const struct jval *id, const char *cls, const char *desc)
{
    struct buf m = {0};
    buf_str(&m, "{\"error\": {\"class\": ");
    json_quote(&m, cls, strlen(cls));
    buf_str(&m, ", \"desc\": ");
    json_quote(&m, desc, strlen(desc));
    buf_str(&m, "}");
    if (id) {
        buf_str(&m, ", \"id\": ");
        buf_add(&m, id->raw, id->rawlen);
    }
    buf_str(&m, "}");
    reply(&m, 0);
    buf_free(&m);
}

static void handle(const char *text, size_t len)
{
    struct jval *req = json_parse(text, len);
    if (!req || req->type != J_OBJ) {
        error_reply(NULL, "GenericError", "JSON parse error: not a JSON object");
        json_free(req);
        return;
    }
    struct jval *id = json_get(req, "id");
    struct jval *cmd = json_get(req, "execute");
    struct jval *args = json_get(req, "arguments");
    if (!cmd || cmd->type != J_STR) {
        error_reply(id, "GenericError", "QMP input lacks member 'execute'");
    } else if (args && args->type != J_OBJ) {
        error_reply(id, "GenericError", "QMP input member 'arguments' must be an object");
    } else {
        struct result r = {0};
        int delimited = 0;
        dispatch(cmd->str, args, &r, &delimited);
        if (r.err_class) {
            error_reply(id, r.err_class, r.err_desc);
        } else if (!r.no_reply) {
            struct buf m = {0};
            buf_str(&m, "{\"return\": ");
            if (r.value.len)
                buf_add(&m, r.value.p, r.value.len);
            else
                buf_str(&m, "{}");
            if (id) {
                buf_str(&m, ", \"id\": ");
                buf_add(&m, id->raw, id->rawlen);
            }
            buf_str(&m, "}");
            reply(&m, delimited);
            buf_free(&m);
        }
        buf_free(&r.value);
        free(r.err_desc);
    }
    json_free(req);
}

/* Handle each complete JSON object in inbuf (bytes between objects are skipped, junk answered with an error). */
static void handle_complete(void)
{
    for (;;) {
        size_t skip = 0;
        while (skip < inbuf.len && inbuf.p[skip] != '{')
            skip++;
        if (skip) {
            /* stray bytes between objects (newlines; garbage after a reconnect) */
            int junk = 0;
            for (size_t i = 0; i < skip; i++)
                junk |= !strchr(" \t\r\n", inbuf.p[i]);
            buf_drop(&inbuf, skip);
            if (junk)
                error_reply(NULL, "GenericError", "JSON parse error: expected an object");
        }
        size_t end = json_object_end(inbuf.p, inbuf.len);
        if (!end) {
            if (inbuf.len > MAX_REQUEST) {
                inbuf.len = 0;
                error_reply(NULL, "GenericError", "request too large");
            }
            return;
        }
        char *msg = malloc(end + 1);
        if (!msg)
            exit(1);
        memcpy(msg, inbuf.p, end);
        msg[end] = 0;
        buf_drop(&inbuf, end);
        handle(msg, end);
        free(msg);
    }
}

/* What came from the host: requests before a 0xFF (the host's guest-sync-delimited preamble) are handled, the
 * partial one it interrupts is dropped. */
static void feed(const char *data, size_t n)
{
    size_t start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i < n && (unsigned char)data[i] != 0xFF)
            continue;
        buf_add(&inbuf, data + start, i - start);
        handle_complete();
        if (i < n)
            inbuf.len = 0;
        start = i + 1;
    }
}

static void read_port(void)
{
    char chunk[65536];
    for (;;) {
        ssize_t n = read(port_rd, chunk, sizeof chunk);
        if (n > 0) {
            feed(chunk, (size_t)n);
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n == 0 || (n < 0 && errno != EAGAIN)) {
            if (stdio_mode)
                exit(0);
            /* the host side closed: what it half-sent is void; wait for SIGIO (next host) */
            connected = 0;
            inbuf.len = 0;
        }
        return;
    }
}

/* -- main loop ---------------------------------------------------------------------------------------------- */
int main(int argc, char **argv)
{
    const char *port = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--stdio"))
            stdio_mode = 1;
        else if (!strcmp(argv[i], "-p") && i + 1 < argc)
            port = argv[++i];
        else {
            fprintf(stderr, "usage: vkagent [-p PORT_DEVICE | --stdio]\n");
            return 2;
        }
    }
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    sigaddset(&mask, SIGIO);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    signal(SIGPIPE, SIG_IGN);
    int sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sfd < 0) {
        perror("vkagent: signalfd");
        return 1;
    }
    if (stdio_mode) {
        port_rd = 0;
        port_wr = 1;
        fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
    } else if (open_port(port) < 0) {
        return 1;
    }
    for (;;) {
        struct pollfd fds[2 + 3 * MAX_PROCS];
        int nfds = 0;
        fds[nfds++] = (struct pollfd){sfd, POLLIN, 0};
        if (connected)
            fds[nfds++] = (struct pollfd){port_rd, POLLIN, 0};
        int first_child = nfds;
        nfds += procs_pollfds(fds + nfds);
        int r = poll(fds, (nfds_t)nfds, connected ? -1 : 1000);
        if (r < 0 && errno != EINTR) {
            perror("vkagent: poll");
            return 1;
        }
        if (r == 0 && !connected)
            connected = 1;          /* no SIGIO came (O_ASYNC refused?): look again each second */
        if (fds[0].revents & POLLIN) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si) {
                if (si.ssi_signo == SIGIO)
                    connected = 1;
            }
            procs_reap();
        }
        /* the children's pipes first: a request handled below may free a child's slot (and close its fds) */
        procs_io(fds + first_child, nfds - first_child);
        if (connected && first_child == 2 && (fds[1].revents & (POLLIN | POLLHUP | POLLERR)))
            read_port();
    }
}
