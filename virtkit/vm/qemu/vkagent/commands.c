/* vkagent's command table and the commands that are not about processes: sync, ping, info, files, shutdown. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/reboot.h>
#include <unistd.h>

#include "vkagent.h"

#define FAIL(...) do { fail(r, __VA_ARGS__); return; } while (0)
#define VERSION "vkagent-1"
#define MAX_FILES 64
#define FILE_HANDLE_BASE 1000
#define MAX_READ (48u << 20)    /* qemu-ga's guest-file-read limit */

void fail(struct result *r, const char *cls, const char *fmt, ...)
{
    char desc[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(desc, sizeof desc, fmt, ap);
    va_end(ap);
    r->err_class = cls;
    free(r->err_desc);
    r->err_desc = strdup(desc);
}

static const struct jval *need(const struct jval *args, const char *key, enum jtype type, struct result *r)
{
    const struct jval *v = json_get(args, key);
    if (!v || v->type != type) {
        fail(r, "GenericError", "Parameter '%s' is missing or of the wrong type", key);
        return NULL;
    }
    return v;
}

/* -- sync, ping ------------------------------------------------------------------------------------------- */
static void cmd_sync(const struct jval *args, struct result *r)
{
    const struct jval *id = need(args, "id", J_NUM, r);
    if (id)
        buf_fmt(&r->value, "%lld", id->num);
}

static void cmd_ping(const struct jval *args, struct result *r)
{
    (void)args;
    (void)r;
}

/* -- files ------------------------------------------------------------------------------------------------ */
static int files[MAX_FILES] = {[0 ... MAX_FILES - 1] = -1};

static int *file_of(const struct jval *args, struct result *r)
{
    const struct jval *h = need(args, "handle", J_NUM, r);
    if (!h)
        return NULL;
    long long i = h->num - FILE_HANDLE_BASE;
    if (i < 0 || i >= MAX_FILES || files[i] < 0) {
        fail(r, "GenericError", "handle '%lld' has not been found", h->num);
        return NULL;
    }
    return &files[i];
}

static void cmd_file_open(const struct jval *args, struct result *r)
{
    const struct jval *path = need(args, "path", J_STR, r), *mode = json_get(args, "mode");
    if (!path)
        return;
    const char *m = mode && mode->type == J_STR ? mode->str : "r";
    static const struct { const char *mode; int flags; } modes[] = {
        {"r", O_RDONLY}, {"rb", O_RDONLY}, {"r+", O_RDWR}, {"rb+", O_RDWR}, {"r+b", O_RDWR},
        {"w", O_WRONLY | O_CREAT | O_TRUNC}, {"wb", O_WRONLY | O_CREAT | O_TRUNC},
        {"w+", O_RDWR | O_CREAT | O_TRUNC}, {"wb+", O_RDWR | O_CREAT | O_TRUNC}, {"w+b", O_RDWR | O_CREAT | O_TRUNC},
        {"a", O_WRONLY | O_CREAT | O_APPEND}, {"ab", O_WRONLY | O_CREAT | O_APPEND},
        {"a+", O_RDWR | O_CREAT | O_APPEND}, {"ab+", O_RDWR | O_CREAT | O_APPEND}, {"a+b", O_RDWR | O_CREAT | O_APPEND},
    };
    int flags = -1;
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++)
        if (!strcmp(modes[i].mode, m))
            flags = modes[i].flags;
    if (flags < 0)
        FAIL("GenericError", "invalid file open mode '%s'", m);
    int slot = -1;
    for (int i = 0; i < MAX_FILES && slot < 0; i++)
        if (files[i] < 0)
            slot = i;
    if (slot < 0)
        FAIL("GenericError", "too many open files (at most %d)", MAX_FILES);
    int fd = open(path->str, flags | O_CLOEXEC, 0644);
    if (fd < 0)
        FAIL("GenericError", "failed to open file '%s' (mode: '%s'): %s", path->str, m, strerror(errno));
    files[slot] = fd;
    buf_fmt(&r->value, "%d", FILE_HANDLE_BASE + slot);
}

static void cmd_file_read(const struct jval *args, struct result *r)
{
    int *fd = file_of(args, r);
    const struct jval *count = json_get(args, "count");
    if (!fd)
        return;
    long long want = count && count->type == J_NUM ? count->num : 4096;
    if (want < 0 || want > MAX_READ)
        FAIL("GenericError", "Parameter 'count' must be between 0 and %u", MAX_READ);
    char *data = malloc((size_t)want + 1);
    size_t got = 0;
    int eof = 0;
    if (!data)
        exit(1);
    while (got < (size_t)want) {
        ssize_t n = read(*fd, data + got, (size_t)want - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            free(data);
            FAIL("GenericError", "failed to read file: %s", strerror(e));
        }
        if (n == 0) {
            eof = 1;
            break;
        }
        got += (size_t)n;
    }
    buf_fmt(&r->value, "{\"count\": %zu, \"buf-b64\": \"", got);
    b64_encode(&r->value, (unsigned char *)data, got);
    buf_fmt(&r->value, "\", \"eof\": %s}", eof ? "true" : "false");
    free(data);
}

static void cmd_file_write(const struct jval *args, struct result *r)
{
    int *fd = file_of(args, r);
    const struct jval *b64 = fd ? need(args, "buf-b64", J_STR, r) : NULL, *count = json_get(args, "count");
    struct buf data = {0};
    if (!b64)
        return;
    if (b64_decode(b64->str, b64->slen, &data) < 0)
        FAIL("GenericError", "Parameter 'buf-b64' is not base64");
    size_t n = data.len;
    if (count && count->type == J_NUM && count->num >= 0 && (size_t)count->num < n)
        n = (size_t)count->num;
    size_t done = 0;
    while (done < n) {
        ssize_t w = write(*fd, data.p + done, n - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            int e = errno;
            buf_free(&data);
            FAIL("GenericError", "failed to write to file: %s", strerror(e));
        }
        done += (size_t)w;
    }
    buf_free(&data);
    buf_fmt(&r->value, "{\"count\": %zu, \"eof\": false}", done);
}

static void cmd_file_flush(const struct jval *args, struct result *r)
{
    int *fd = file_of(args, r);
    if (fd && fsync(*fd) < 0 && errno != EINVAL)
        FAIL("GenericError", "failed to flush file: %s", strerror(errno));
}

static void cmd_file_close(const struct jval *args, struct result *r)
{
    int *fd = file_of(args, r);
    if (fd) {
        close(*fd);
        *fd = -1;
    }
}

/* -- shutdown ------------------------------------------------------------------------------------------------ */
/* powerdown ends the command the way virtkit's /init ends it on an ACPI power button press (SIGTERM to its
 * process group, SIGKILL 5 s later): /init then reports the command's status and powers off. Without that
 * /init (another guest), or for halt and reboot, the kernel is told directly. */
static void cmd_shutdown(const struct jval *args, struct result *r)
{
    const struct jval *mode = json_get(args, "mode");
    const char *m = mode && mode->type == J_STR ? mode->str : "powerdown";
    int how;
    if (!strcmp(m, "powerdown"))
        how = RB_POWER_OFF;
    else if (!strcmp(m, "halt"))
        how = RB_HALT_SYSTEM;
    else if (!strcmp(m, "reboot"))
        how = RB_AUTOBOOT;
    else
        FAIL("GenericError", "Parameter 'mode' must be powerdown, halt or reboot (got '%s')", m);
    r->no_reply = 1;
    FILE *f = how == RB_POWER_OFF ? fopen("/run/child", "r") : NULL;
    int child = 0;
    if (f) {
        if (fscanf(f, "%d", &child) != 1)
            child = 0;
        fclose(f);
    }
    if (child > 1 && kill(-child, SIGTERM) == 0) {
        if (fork() == 0) {
            sleep(5);
            kill(-child, SIGKILL);
            _exit(0);
        }
        return;
    }
    sync();
    reboot(how);
    FAIL("GenericError", "shutdown failed: %s", strerror(errno));
}

/* -- the table ----------------------------------------------------------------------------------------------- */
static void cmd_info(const struct jval *args, struct result *r);

static const struct command {
    const char *name;
    void (*fn)(const struct jval *args, struct result *r);
    int success_response;
} commands[] = {
    {"guest-sync-delimited", cmd_sync, 1},
    {"guest-sync", cmd_sync, 1},
    {"guest-ping", cmd_ping, 1},
    {"guest-info", cmd_info, 1},
    {"guest-exec", cmd_exec, 1},
    {"guest-exec-status", cmd_exec_status, 1},
    {"x-virtkit-exec-input", cmd_exec_input, 1},
    {"guest-file-open", cmd_file_open, 1},
    {"guest-file-read", cmd_file_read, 1},
    {"guest-file-write", cmd_file_write, 1},
    {"guest-file-flush", cmd_file_flush, 1},
    {"guest-file-close", cmd_file_close, 1},
    {"guest-shutdown", cmd_shutdown, 0},
};

static void cmd_info(const struct jval *args, struct result *r)
{
    (void)args;
    buf_str(&r->value, "{\"version\": \"" VERSION "\", \"supported_commands\": [");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        buf_fmt(&r->value, "%s{\"name\": \"%s\", \"enabled\": true, \"success-response\": %s}", i ? ", " : "",
                commands[i].name, commands[i].success_response ? "true" : "false");
    buf_str(&r->value, "]}");
}

void dispatch(const char *cmd, const struct jval *args, struct result *r, int *delimited)
{
    static const struct jval none = {.type = J_OBJ};
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        if (!strcmp(commands[i].name, cmd)) {
            *delimited = i == 0;
            commands[i].fn(args ? args : &none, r);
            return;
        }
    }
    fail(r, "CommandNotFound", "The command %s has not been found", cmd);
}
