/* Runs inside a container and tries what CVE-2019-5736-class attacks do: find processes that entered the
 * container from the host (the runtime joining on exec), open their /proc/PID/exe, write to it, ptrace them.
 * Prints one line per success; the tests require that none appears. */
#include <dirent.h>
#include <signal.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stopped;

static void on_term(int sig) { (void)sig; stopped = 1; }

/* argv[1]: seconds to run (default 5); SIGTERM ends it early, still printing the scan count */
int main(int argc, char **argv) {
    int seconds = argc > 1 ? atoi(argv[1]) : 5;
    pid_t self = getpid();
    time_t end = time(NULL) + seconds;
    long scans = 0;
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGTERM, on_term);
    while (time(NULL) < end && !stopped) {
        DIR *d = opendir("/proc");
        struct dirent *e;
        if (!d) return 2;
        while ((e = readdir(d))) {
            pid_t p = (pid_t)atoi(e->d_name);
            char path[64], target[4096];
            if (p <= 1 || p == self) continue;
            snprintf(path, sizeof path, "/proc/%d/exe", p);
            ssize_t n = readlink(path, target, sizeof target - 1);
            if (n > 0) {
                struct stat st;
                target[n] = 0;
                /* a link we can read but that names no file of ours: an executable of the host */
                if (stat(target, &st) != 0 || strstr(target, "python")) {
                    int fd = open(path, O_RDONLY);
                    if (fd >= 0) { printf("HOST-EXE-OPENED %d %s\n", p, target); close(fd); }
                }
            }
            int wfd = open(path, O_WRONLY);
            if (wfd >= 0) { printf("EXE-WRITABLE %d\n", p); close(wfd); }
            /* SEIZE + INTERRUPT rather than ATTACH: ATTACH's SIGSTOP can outlive the detach (a group stop)
             * and leave an exec stopped for good; the permission check is the same */
            if (ptrace(PTRACE_SEIZE, p, 0, 0) == 0) {
                /* tracing the container's own programs is allowed; a process still running the host's
                 * runtime binary must never be traceable */
                struct stat st;
                ptrace(PTRACE_INTERRUPT, p, 0, 0);
                waitpid(p, NULL, __WALL);
                ssize_t m = readlink(path, target, sizeof target - 1);
                if (m > 0) {
                    target[m] = 0;
                    if (stat(target, &st) != 0 || strstr(target, "python")) {
                        /* what the traced runtime process holds: it must be no more than the container has */
                        char spath[64], line[256], capeff[32] = "?";
                        snprintf(spath, sizeof spath, "/proc/%d/status", p);
                        FILE *f = fopen(spath, "r");
                        while (f && fgets(line, sizeof line, f))
                            if (sscanf(line, "CapEff: %31s", capeff) == 1) break;
                        if (f) fclose(f);
                        printf("PTRACE-HOST %d %s CapEff=%s\n", p, target, capeff);
                    }
                }
                ptrace(PTRACE_DETACH, p, 0, 0);
            }
        }
        closedir(d);
        scans++;
    }
    printf("scans %ld\n", scans);
    return 0;
}
