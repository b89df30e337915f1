/* Tries privileged operations from inside a container; prints "NAME ok" or "NAME errno-name" for each. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/reboot.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>
#include <linux/if_ether.h>

static void report(const char *name, long rc) {
    if (rc >= 0) printf("%s ok\n", name);
    else printf("%s %s\n", name, strerrorname_np(errno) ? strerrorname_np(errno) : "E?");
}

int main(void) {
    struct timespec ts = {0, 0};
    report("init_module", syscall(SYS_init_module, "", 0, ""));
    report("finit_module", syscall(SYS_finit_module, 0, "", 0));
    report("delete_module", syscall(SYS_delete_module, "loop", 0));
    report("kexec_load", syscall(SYS_kexec_load, 0, 0, 0, 0));
    report("clock_settime", clock_settime(CLOCK_REALTIME, &ts));
    report("mount", mount("none", "/mnt", "tmpfs", 0, ""));
    report("mknod_block", mknod("/tmp/blk", S_IFBLK | 0600, makedev(8, 0)));
    report("raw_socket", socket(AF_INET, SOCK_RAW, 1));
    report("packet_socket", socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL)));
    report("unshare_user", unshare(CLONE_NEWUSER));
    report("unshare_mount", unshare(CLONE_NEWNS));
    report("swapoff", syscall(SYS_swapoff, "/dev/null"));
    report("reboot", syscall(SYS_reboot, LINUX_REBOOT_MAGIC1, LINUX_REBOOT_MAGIC2, LINUX_REBOOT_CMD_CAD_OFF, 0));
    report("bpf", syscall(SYS_bpf, 0, 0, 0));
    report("perf_event_open", syscall(SYS_perf_event_open, 0, 0, -1, -1, 0));
    report("getpid", getpid());
    return 0;
}
