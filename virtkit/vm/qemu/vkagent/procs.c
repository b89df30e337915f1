/* vkagent's processes: guest-exec starts them, their pipes are gathered in the poll loop, exec-status reports. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "vkagent.h"

/* an error reply, and out of the command */
#define FAIL(...) do { fail(r, __VA_ARGS__); return; } while (0)
#define MAX_OUTPUT (16u << 20)      /* qemu-ga's cap on out-data/err-data */
#define STREAM_HIGH_WATER (1u << 20) /* streaming: stop reading a pipe (the child waits) until the host takes it */

struct proc {
    int used;
    pid_t pid;
    int fd[3];              /* 0: the child's stdin (write end), 1, 2: its stdout, stderr (read ends); -1 closed */
    struct buf data[3];     /* 0: input not written yet; 1, 2: output not handed out yet */
    int in_eof;             /* close stdin once data[0] is written */
    int reaped, status;
    int truncated[3];
    int stream;
};

static struct proc procs[MAX_PROCS];
static struct { int slot, which; } polled[3 * MAX_PROCS];

static void close_fd(struct proc *p, int which)
{
    if (p->fd[which] >= 0)
        close(p->fd[which]);
    p->fd[which] = -1;
}

static void release(struct proc *p)
{
    for (int i = 0; i < 3; i++) {
        close_fd(p, i);
        buf_free(&p->data[i]);
    }
    memset(p, 0, sizeof *p);
}

static struct proc *find(const struct jval *args, struct result *r)
{
    const struct jval *pid = json_get(args, "pid");
    if (!pid || pid->type != J_NUM) {
        fail(r, "GenericError", "Parameter 'pid' is missing");
        return NULL;
    }
    for (int i = 0; i < MAX_PROCS; i++)
        if (procs[i].used && procs[i].pid == pid->num)
            return &procs[i];
    fail(r, "GenericError", "Invalid parameter 'pid'");
    return NULL;
}

static void write_input(struct proc *p)
{
    while (p->fd[0] >= 0 && p->data[0].len) {
        ssize_t w = write(p->fd[0], p->data[0].p, p->data[0].len);
        if (w > 0) {
            buf_drop(&p->data[0], (size_t)w);
        } else if (w < 0 && errno == EINTR) {
            continue;
        } else {
            if (w < 0 && errno != EAGAIN) {     /* EPIPE: it will read no more */
                close_fd(p, 0);
                p->data[0].len = 0;
            }
            return;
        }
    }
    if (p->fd[0] >= 0 && p->in_eof)
        close_fd(p, 0);
}

static void read_output(struct proc *p, int which)
{
    char chunk[65536];
    while (p->fd[which] >= 0) {
        if (p->stream && p->data[which].len >= STREAM_HIGH_WATER)
            return;
        ssize_t n = read(p->fd[which], chunk, sizeof chunk);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return;
        if (n <= 0) {
            close_fd(p, which);
            return;
        }
        size_t room = p->data[which].len < MAX_OUTPUT ? MAX_OUTPUT - p->data[which].len : 0;
        if ((size_t)n > room)
            p->truncated[which] = 1;
        buf_add(&p->data[which], chunk, (size_t)n < room ? (size_t)n : room);
    }
}

int procs_pollfds(struct pollfd *fds)
{
    int n = 0;
    for (int i = 0; i < MAX_PROCS; i++) {
        struct proc *p = &procs[i];
        if (!p->used)
            continue;
        for (int w = 0; w < 3; w++) {
            short ev = w == 0 ? (p->data[0].len ? POLLOUT : 0)
                              : (p->stream && p->data[w].len >= STREAM_HIGH_WATER ? 0 : POLLIN);
            if (p->fd[w] >= 0 && ev) {
                fds[n] = (struct pollfd){p->fd[w], ev, 0};
                polled[n].slot = i;
                polled[n].which = w;
                n++;
            }
        }
    }
    return n;
}

void procs_io(const struct pollfd *fds, int n)
{
    for (int k = 0; k < n; k++) {
        struct proc *p = &procs[polled[k].slot];
        if (!fds[k].revents || !p->used || p->fd[polled[k].which] != fds[k].fd)
            continue;
        if (polled[k].which == 0)
            write_input(p);
        else
            read_output(p, polled[k].which);
    }
}

void procs_reap(void)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        for (int i = 0; i < MAX_PROCS; i++) {
            if (procs[i].used && procs[i].pid == pid) {
                procs[i].reaped = 1;
                procs[i].status = status;
            }
        }
    }
}

/* -- guest-exec --------------------------------------------------------------------------------------------- */
static int redirect(int fd, int target, const char *fallback, int flags)
{
    if (fd < 0)
        fd = open(fallback, flags);
    return fd < 0 ? -1 : dup2(fd, target);
}

/* fork + exec with the child's ends of the pipes; -errno when exec failed (the child says so on a CLOEXEC pipe) */
static pid_t spawn(char **argv, char **envp, int in[2], int out[2], int err[2])
{
    int ep[2];
    if (pipe2(ep, O_CLOEXEC) < 0)
        return -errno;
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(ep[0]);
        close(ep[1]);
        return -e;
    }
    if (pid == 0) {
        sigset_t all;
        sigfillset(&all);
        sigprocmask(SIG_UNBLOCK, &all, NULL);
        signal(SIGPIPE, SIG_DFL);          /* an ignored signal stays ignored across exec */
        setsid();
        if (redirect(in[0], 0, "/dev/null", O_RDONLY) < 0 || redirect(out[1], 1, "/dev/null", O_WRONLY) < 0
            || redirect(err[1], 2, "/dev/null", O_WRONLY) < 0 || chdir("/") < 0)
            _exit(127);
        if (envp)
            execvpe(argv[0], argv, envp);
        else
            execvp(argv[0], argv);
        int e = errno;
        ssize_t ignored = write(ep[1], &e, sizeof e);
        (void)ignored;
        _exit(127);
    }
    close(ep[1]);
    int e = 0;
    ssize_t n;
    while ((n = read(ep[0], &e, sizeof e)) < 0 && errno == EINTR)
        ;
    close(ep[0]);
    if (n == (ssize_t)sizeof e) {
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
            ;
        return -e;
    }
    return pid;
}

static char **strings(const struct jval *arr, const char *first)
{
    size_t n = first ? 1 : 0;
    for (const struct jval *v = arr ? arr->child : NULL; v; v = v->next)
        n++;
    char **out = calloc(n + 1, sizeof *out);
    size_t i = 0;
    if (!out)
        exit(1);
    if (first)
        out[i++] = (char *)first;
    for (const struct jval *v = arr ? arr->child : NULL; v; v = v->next)
        out[i++] = v->type == J_STR ? v->str : "";
    return out;
}

static int flag(const struct jval *args, const char *key)
{
    const struct jval *v = json_get(args, key);
    return v && v->type == J_BOOL && v->num;
}

void cmd_exec(const struct jval *args, struct result *r)
{
    const struct jval *path = json_get(args, "path"), *arg = json_get(args, "arg"), *env = json_get(args, "env");
    const struct jval *input = json_get(args, "input-data"), *capture = json_get(args, "capture-output");
    if (!path || path->type != J_STR || !path->slen)
        FAIL("GenericError", "Parameter 'path' is missing");
    if ((arg && arg->type != J_ARR) || (env && env->type != J_ARR))
        FAIL("GenericError", "Parameters 'arg' and 'env' must be arrays of strings");
    /* capture-output: a bool, or (newer qemu-ga) "separated" | "merged" | "none" */
    int cap = capture && ((capture->type == J_BOOL && capture->num)
                          || (capture->type == J_STR && strcmp(capture->str, "none")));
    int merged = capture && capture->type == J_STR && !strcmp(capture->str, "merged");
    int keep_stdin = flag(args, "x-virtkit-stdin");
    int slot = -1;
    for (int i = 0; i < MAX_PROCS && slot < 0; i++)
        if (!procs[i].used)
            slot = i;
    if (slot < 0)
        FAIL("GenericError", "too many processes (at most %d run at once)", MAX_PROCS);
    struct buf data = {0};
    if (input && (input->type != J_STR || b64_decode(input->str, input->slen, &data) < 0))
        FAIL("GenericError", "Parameter 'input-data' is not base64");
    int in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1};
    if (((input || keep_stdin) && pipe2(in, O_CLOEXEC) < 0) || (cap && pipe2(out, O_CLOEXEC) < 0)
        || (cap && !merged && pipe2(err, O_CLOEXEC) < 0)) {
        int e = errno;
        for (int i = 0; i < 2; i++) {
            if (in[i] >= 0) close(in[i]);
            if (out[i] >= 0) close(out[i]);
            if (err[i] >= 0) close(err[i]);
        }
        buf_free(&data);
        FAIL("GenericError", "cannot make pipes: %s", strerror(e));
    }
    if (merged)
        err[1] = out[1];
    char **argv = strings(arg, path->str);
    char **envp = env ? strings(env, NULL) : NULL;
    pid_t pid = spawn(argv, envp, in, out, err);
    free(argv);
    free(envp);
    if (in[0] >= 0) close(in[0]);
    if (out[1] >= 0) close(out[1]);
    if (err[1] >= 0 && !merged) close(err[1]);
    if (pid < 0) {
        if (in[1] >= 0) close(in[1]);
        if (out[0] >= 0) close(out[0]);
        if (err[0] >= 0) close(err[0]);
        buf_free(&data);
        FAIL("GenericError", "Failed to execute child process \"%s\" (%s)", path->str, strerror((int)-pid));
    }
    struct proc *p = &procs[slot];
    p->used = 1;
    p->pid = pid;
    p->fd[0] = in[1];
    p->fd[1] = out[0];
    p->fd[2] = err[0];
    for (int i = 0; i < 3; i++)
        if (p->fd[i] >= 0)
            fcntl(p->fd[i], F_SETFL, O_NONBLOCK);
    p->data[0] = data;
    p->in_eof = !keep_stdin;
    p->stream = flag(args, "x-virtkit-stream");
    write_input(p);
    buf_fmt(&r->value, "{\"pid\": %d}", (int)pid);
}

void cmd_exec_status(const struct jval *args, struct result *r)
{
    procs_reap();
    struct proc *p = find(args, r);
    if (!p)
        return;
    read_output(p, 1);
    read_output(p, 2);
    int exited = p->reaped && p->fd[1] < 0 && p->fd[2] < 0;
    buf_fmt(&r->value, "{\"exited\": %s", exited ? "true" : "false");
    if (exited && WIFEXITED(p->status))
        buf_fmt(&r->value, ", \"exitcode\": %d", WEXITSTATUS(p->status));
    if (exited && WIFSIGNALED(p->status))
        buf_fmt(&r->value, ", \"signal\": %d", WTERMSIG(p->status));
    if (exited || p->stream) {
        static const char *names[3] = {NULL, "out", "err"};
        for (int w = 1; w < 3; w++) {
            if (p->data[w].len) {
                buf_fmt(&r->value, ", \"%s-data\": \"", names[w]);
                b64_encode(&r->value, (unsigned char *)p->data[w].p, p->data[w].len);
                buf_str(&r->value, "\"");
                p->data[w].len = 0;
            }
            if (p->truncated[w])
                buf_fmt(&r->value, ", \"%s-truncated\": true", names[w]);
        }
    }
    buf_str(&r->value, "}");
    if (exited)
        release(p);
}

/* x-virtkit-exec-input {pid, input-data?, eof?}: more stdin for a process started with x-virtkit-stdin */
void cmd_exec_input(const struct jval *args, struct result *r)
{
    struct proc *p = find(args, r);
    if (!p)
        return;
    const struct jval *input = json_get(args, "input-data");
    if (input && p->fd[0] < 0)
        FAIL("GenericError", "the process's stdin is closed");
    if (input && (input->type != J_STR || b64_decode(input->str, input->slen, &p->data[0]) < 0))
        FAIL("GenericError", "Parameter 'input-data' is not base64");
    if (flag(args, "eof"))
        p->in_eof = 1;
    write_input(p);
    /* what is still to write: the host holds back while it is large */
    buf_fmt(&r->value, "{\"pending\": %zu}", p->data[0].len);
}
