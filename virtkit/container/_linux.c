/*
 * virtkit.container._linux: the Linux system calls of a container's start that Python's os module lacks
 * (Python 3.11: no mount, unshare, setns, pivot_root, prctl, capset, seccomp, openat2, the new mount API).
 *
 * Why C and not ctypes: `import ctypes` and its setup cost ~2.5 ms of every `virtkit-runtime` start (about a
 * tenth of a create/start/wait/delete cycle), and each ctypes call ~5 us more than this (a start makes ~60).
 * Each function raises OSError with errno on failure; the callers (syscalls.py, caps.py, seccomp.py) turn that
 * into virtkit's errors with the names the user gave.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_openat2
#define SYS_openat2 437
#endif
/* the new mount API (Linux 5.2), by number: glibc 2.36 has wrappers, Debian 12's headers may lack them */
#define VK_SYS_open_tree 428
#define VK_SYS_mount_setattr 442
#define VK_AT_RECURSIVE 0x8000
#define VK_SYS_move_mount 429
#define VK_SYS_fsopen 430
#define VK_SYS_fsconfig 431
#define VK_SYS_fsmount 432
#define VK_FSOPEN_CLOEXEC 0x1
#define VK_FSCONFIG_SET_FLAG 0
#define VK_FSCONFIG_SET_STRING 1
#define VK_FSCONFIG_CMD_CREATE 6
#define VK_FSMOUNT_CLOEXEC 0x1
#define VK_OPEN_TREE_CLONE 0x1
#define VK_MOVE_MOUNT_F_EMPTY_PATH 0x4
#define VK_MOVE_MOUNT_T_EMPTY_PATH 0x40

struct vk_open_how {
    uint64_t flags;
    uint64_t mode;
    uint64_t resolve;
};

static PyObject *fail(void) { return PyErr_SetFromErrno(PyExc_OSError); }

/* "O&" converter: bytes (without NUL) to its C string, None to NULL */
static int bytes_or_none(PyObject *o, void *out) {
    if (o == Py_None) {
        *(const char **)out = NULL;
        return 1;
    }
    if (!PyBytes_Check(o)) {
        PyErr_Format(PyExc_TypeError, "expected bytes or None, not %.100s", Py_TYPE(o)->tp_name);
        return 0;
    }
    if ((size_t)PyBytes_GET_SIZE(o) != strlen(PyBytes_AS_STRING(o))) {
        PyErr_SetString(PyExc_ValueError, "embedded null byte");
        return 0;
    }
    *(const char **)out = PyBytes_AS_STRING(o);
    return 1;
}

static PyObject *vk_mount(PyObject *self, PyObject *args) {
    const char *source, *target, *fstype, *data;
    unsigned long flags;
    if (!PyArg_ParseTuple(args, "O&yO&kO&", bytes_or_none, &source, &target, bytes_or_none, &fstype, &flags,
                          bytes_or_none, &data))
        return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = mount(source, target, fstype, flags, data);
    Py_END_ALLOW_THREADS
    if (rc != 0)
        return fail();
    Py_RETURN_NONE;
}

static PyObject *vk_umount2(PyObject *self, PyObject *args) {
    const char *target;
    int flags;
    if (!PyArg_ParseTuple(args, "yi", &target, &flags))
        return NULL;
    if (umount2(target, flags) != 0)
        return fail();
    Py_RETURN_NONE;
}

static PyObject *vk_pivot_root(PyObject *self, PyObject *args) {
    const char *new_root, *put_old;
    if (!PyArg_ParseTuple(args, "yy", &new_root, &put_old))
        return NULL;
    if (syscall(SYS_pivot_root, new_root, put_old) != 0)
        return fail();
    Py_RETURN_NONE;
}

static PyObject *vk_unshare(PyObject *self, PyObject *args) {
    int flags;
    if (!PyArg_ParseTuple(args, "i", &flags))
        return NULL;
    if (unshare(flags) != 0)
        return fail();
    Py_RETURN_NONE;
}

static PyObject *vk_setns(PyObject *self, PyObject *args) {
    int fd, nstype;
    if (!PyArg_ParseTuple(args, "ii", &fd, &nstype))
        return NULL;
    if (setns(fd, nstype) != 0)
        return fail();
    Py_RETURN_NONE;
}

static PyObject *vk_sethostname(PyObject *self, PyObject *args) {
    const char *name;
    Py_ssize_t len;
    if (!PyArg_ParseTuple(args, "y#", &name, &len))
        return NULL;
    if (sethostname(name, (size_t)len) != 0)
        return fail();
    Py_RETURN_NONE;
}

static PyObject *vk_setdomainname(PyObject *self, PyObject *args) {
    const char *name;
    Py_ssize_t len;
    if (!PyArg_ParseTuple(args, "y#", &name, &len))
        return NULL;
    if (setdomainname(name, (size_t)len) != 0)
        return fail();
    Py_RETURN_NONE;
}

static PyObject *vk_prctl(PyObject *self, PyObject *args) {
    int option;
    unsigned long a2 = 0, a3 = 0, a4 = 0, a5 = 0;
    if (!PyArg_ParseTuple(args, "i|kkkk", &option, &a2, &a3, &a4, &a5))
        return NULL;
    int rc = prctl(option, a2, a3, a4, a5);
    if (rc < 0)
        return fail();
    return PyLong_FromLong(rc);
}

static PyObject *vk_openat2(PyObject *self, PyObject *args) {
    int dirfd;
    const char *path;
    unsigned long long flags, mode, resolve;
    if (!PyArg_ParseTuple(args, "iyKKK", &dirfd, &path, &flags, &mode, &resolve))
        return NULL;
    struct vk_open_how how = {.flags = flags, .mode = mode, .resolve = resolve};
    long fd = syscall(SYS_openat2, dirfd, path, &how, sizeof how);
    if (fd < 0)
        return PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, PyTuple_GET_ITEM(args, 1));
    return PyLong_FromLong(fd);
}

static PyObject *vk_ioctl(PyObject *self, PyObject *args) {
    int fd;
    unsigned long request;
    const char *arg;
    Py_ssize_t len;
    if (!PyArg_ParseTuple(args, "iky#", &fd, &request, &arg, &len))
        return NULL;
    PyObject *out = PyBytes_FromStringAndSize(arg, len);   /* in/out buffer: a copy of the argument */
    if (out == NULL)
        return NULL;
    if (ioctl(fd, request, PyBytes_AS_STRING(out)) != 0) {
        Py_DECREF(out);
        return fail();
    }
    return out;
}

/* capset(effective, permitted, inheritable) for this process, 64-bit masks (_LINUX_CAPABILITY_VERSION_3) */
static PyObject *vk_capset(PyObject *self, PyObject *args) {
    unsigned long long eff, perm, inh;
    if (!PyArg_ParseTuple(args, "KKK", &eff, &perm, &inh))
        return NULL;
    struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct data[2];
    for (int i = 0; i < 2; i++) {
        data[i].effective = (uint32_t)(eff >> (32 * i));
        data[i].permitted = (uint32_t)(perm >> (32 * i));
        data[i].inheritable = (uint32_t)(inh >> (32 * i));
    }
    if (syscall(SYS_capset, &hdr, data) != 0)
        return fail();
    Py_RETURN_NONE;
}

/* seccomp(SECCOMP_SET_MODE_FILTER, flags, program): `program` is classic BPF, 8 bytes an instruction */
static PyObject *vk_seccomp_filter(PyObject *self, PyObject *args) {
    unsigned int flags;
    const char *prog;
    Py_ssize_t len;
    if (!PyArg_ParseTuple(args, "Iy#", &flags, &prog, &len))
        return NULL;
    if (len <= 0 || len % sizeof(struct sock_filter) != 0 || len / sizeof(struct sock_filter) > USHRT_MAX) {
        PyErr_SetString(PyExc_ValueError, "seccomp: the program is not a whole number of BPF instructions");
        return NULL;
    }
    struct sock_fprog fprog = {.len = (unsigned short)(len / sizeof(struct sock_filter)),
                               .filter = (struct sock_filter *)prog};
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &fprog) != 0)
        return fail();
    Py_RETURN_NONE;
}

static PyObject *vk_setrlimit(PyObject *self, PyObject *args) {
    int resource;
    unsigned long long soft, hard;
    if (!PyArg_ParseTuple(args, "iKK", &resource, &soft, &hard))
        return NULL;
    struct rlimit lim = {.rlim_cur = soft, .rlim_max = hard};
    if (setrlimit(resource, &lim) != 0)
        return fail();
    Py_RETURN_NONE;
}

/*
 * fork_sibling(flags) -> pid, 0 in the child: os.fork() through the raw clone system call with CLONE_PARENT and
 * `flags` (namespace flags: CLONE_NEWPID makes the child PID 1 of a new pid namespace). The child's parent is
 * this process's parent, which reaps it and gets its exit status: how the supervisor's spare maker (spares.py)
 * makes spares that are the supervisor's own children, with one fork and no process in between.
 * As os.fork(), Python's fork bookkeeping runs around it (the interpreter's locks and thread state). Unlike
 * glibc's fork(), no pthread_atfork handlers run and glibc's cached thread id in the child stays its parent's:
 * for a single-threaded caller (checked) the only effect is that raise() and abort() would target a thread
 * that is not there (abort() still ends the process). The flags may not include CLONE_VM, CLONE_THREAD,
 * CLONE_SIGHAND, CLONE_SETTLS or CLONE_*TID: the child must be a full copy.
 */
static PyObject *vk_fork_sibling(PyObject *self, PyObject *args) {
    unsigned long flags;
    if (!PyArg_ParseTuple(args, "k", &flags))
        return NULL;
    if (flags & (CLONE_VM | CLONE_THREAD | CLONE_SIGHAND | CLONE_SETTLS | CLONE_PARENT_SETTID |
                 CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID | CLONE_VFORK | CSIGNAL)) {
        PyErr_SetString(PyExc_ValueError, "fork_sibling: flags may only name namespaces");
        return NULL;
    }
    PyOS_BeforeFork();
    long pid = syscall(SYS_clone, CLONE_PARENT | flags | SIGCHLD, NULL, NULL, NULL, NULL);
    int saved = errno;
    if (pid == 0) {
        PyOS_AfterFork_Child();
        return PyLong_FromLong(0);
    }
    PyOS_AfterFork_Parent();
    if (pid < 0) {
        errno = saved;
        return fail();
    }
    return PyLong_FromLong(pid);
}

/* fsmount(fstype, params, attrs) -> fd: a new file system, configured by params (a sequence of (key, value) with
 * value bytes, or None for a flag such as devpts' "newinstance"), mounted nowhere yet (a detached mount, owned by
 * the fd: closing it unmounts it); attrs are MOUNT_ATTR_* flags. */
static PyObject *vk_fsmount(PyObject *self, PyObject *args) {
    const char *fstype;
    PyObject *params;
    unsigned int attrs;
    if (!PyArg_ParseTuple(args, "yOI", &fstype, &params, &attrs))
        return NULL;
    PyObject *seq = PySequence_Fast(params, "params must be a sequence of (key, value) pairs");
    if (seq == NULL)
        return NULL;
    int fsfd = (int)syscall(VK_SYS_fsopen, fstype, VK_FSOPEN_CLOEXEC);
    if (fsfd < 0) {
        Py_DECREF(seq);
        return fail();
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        const char *key, *value;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "yO&", &key, bytes_or_none, &value)) {
            close(fsfd);
            Py_DECREF(seq);
            return NULL;
        }
        long rc = value ? syscall(VK_SYS_fsconfig, fsfd, VK_FSCONFIG_SET_STRING, key, value, 0)
                        : syscall(VK_SYS_fsconfig, fsfd, VK_FSCONFIG_SET_FLAG, key, NULL, 0);
        if (rc < 0) {
            int err = errno;
            close(fsfd);
            Py_DECREF(seq);
            errno = err;
            return fail();
        }
    }
    Py_DECREF(seq);
    long mfd = -1;
    if (syscall(VK_SYS_fsconfig, fsfd, VK_FSCONFIG_CMD_CREATE, NULL, NULL, 0) == 0)
        mfd = syscall(VK_SYS_fsmount, fsfd, VK_FSMOUNT_CLOEXEC, attrs);
    int err = errno;
    close(fsfd);
    if (mfd < 0) {
        errno = err;
        return fail();
    }
    return PyLong_FromLong(mfd);
}

/* place_mount(from_fd, to_fd, recursive): a new mount of the (detached) mount from_fd's file system, made now (so
 * it comes after the mounts made before it in /proc/self/mountinfo, as a mount(2) now would), with the mounts on it
 * when `recursive`, onto the directory or file to_fd names; from_fd is left as it was */
static PyObject *vk_place_mount(PyObject *self, PyObject *args) {
    int from_fd, to_fd, recursive = 0;
    if (!PyArg_ParseTuple(args, "ii|p", &from_fd, &to_fd, &recursive))
        return NULL;
    int fd = (int)syscall(VK_SYS_open_tree, from_fd, "",
                          VK_OPEN_TREE_CLONE | O_CLOEXEC | AT_EMPTY_PATH | (recursive ? VK_AT_RECURSIVE : 0));
    if (fd < 0)
        return fail();
    long rc = syscall(VK_SYS_move_mount, fd, "", to_fd, "", VK_MOVE_MOUNT_F_EMPTY_PATH | VK_MOVE_MOUNT_T_EMPTY_PATH);
    int err = errno;
    close(fd);
    if (rc < 0) {
        errno = err;
        return fail();
    }
    Py_RETURN_NONE;
}

/* set_mount_attrs(fd, attrs): mount_setattr(2) of the mount fd holds (not its submounts): MOUNT_ATTR_* set */
static PyObject *vk_set_mount_attrs(PyObject *self, PyObject *args) {
    int fd;
    unsigned long long attrs;
    if (!PyArg_ParseTuple(args, "iK", &fd, &attrs))
        return NULL;
    struct {
        uint64_t attr_set, attr_clr, propagation, userns_fd;
    } attr = {.attr_set = attrs};
    if (syscall(VK_SYS_mount_setattr, fd, "", AT_EMPTY_PATH, &attr, sizeof attr) < 0)
        return fail();
    Py_RETURN_NONE;
}

/* remove_tree(path): `path` and all below it (rm -rf, not following symlinks, not entering another file system:
 * a mount inside is left, an error), in one call without the GIL. Why C: storage/trash.py deletes removed
 * instances' trees in a background thread of virtkitd; in Python each entry took the GIL back from the request
 * threads (~30 handovers and ~1.5 ms of CPU a container here), in C none. The first error's errno is raised,
 * after removing all that can be. */
static int rm_entries(int fd, dev_t dev, int depth, int *first);

static void note(int *first) {
    if (*first == 0)
        *first = errno;
}

static void rm_at(int parent, const char *name, dev_t dev, int depth, int *first) {
    if (unlinkat(parent, name, 0) == 0 || errno == ENOENT)
        return;
    if (errno != EISDIR && errno != EPERM) {
        note(first);
        return;
    }
    if (depth > 512) {
        errno = ELOOP;
        note(first);
        return;
    }
    int fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        if (errno != ENOENT)
            note(first);
        return;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || (dev != 0 && st.st_dev != dev)) {     /* a mount point: not ours to empty */
        errno = EBUSY;
        note(first);
        close(fd);
        return;
    }
    rm_entries(fd, st.st_dev, depth + 1, first);
    if (unlinkat(parent, name, AT_REMOVEDIR) != 0 && errno != ENOENT)
        note(first);
}

static int rm_entries(int fd, dev_t dev, int depth, int *first) {
    DIR *d = fdopendir(fd);
    if (d == NULL) {
        note(first);
        close(fd);
        return -1;
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        rm_at(dirfd(d), e->d_name, dev, depth, first);
    }
    closedir(d);
    return 0;
}

static PyObject *vk_remove_tree(PyObject *self, PyObject *args) {
    const char *path;
    if (!PyArg_ParseTuple(args, "y", &path))
        return NULL;
    int first = 0;
    Py_BEGIN_ALLOW_THREADS
    rm_at(AT_FDCWD, path, 0, 0, &first);
    Py_END_ALLOW_THREADS
    if (first != 0) {
        errno = first;
        return PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, PyTuple_GET_ITEM(args, 0));
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"mount", vk_mount, METH_VARARGS, "mount(source|None, target, fstype|None, flags, data|None)"},
    {"umount2", vk_umount2, METH_VARARGS, "umount2(target, flags)"},
    {"pivot_root", vk_pivot_root, METH_VARARGS, "pivot_root(new_root, put_old)"},
    {"unshare", vk_unshare, METH_VARARGS, "unshare(flags)"},
    {"setns", vk_setns, METH_VARARGS, "setns(fd, nstype)"},
    {"sethostname", vk_sethostname, METH_VARARGS, "sethostname(name)"},
    {"setdomainname", vk_setdomainname, METH_VARARGS, "setdomainname(name)"},
    {"prctl", vk_prctl, METH_VARARGS, "prctl(option[, arg2, arg3, arg4, arg5]) -> int"},
    {"openat2", vk_openat2, METH_VARARGS, "openat2(dirfd, path, flags, mode, resolve) -> fd"},
    {"ioctl", vk_ioctl, METH_VARARGS, "ioctl(fd, request, buffer) -> buffer as the kernel left it"},
    {"capset", vk_capset, METH_VARARGS, "capset(effective, permitted, inheritable) for this process"},
    {"seccomp_filter", vk_seccomp_filter, METH_VARARGS, "seccomp_filter(flags, bpf_program)"},
    {"setrlimit", vk_setrlimit, METH_VARARGS, "setrlimit(resource, soft, hard)"},
    {"fork_sibling", vk_fork_sibling, METH_VARARGS, "fork_sibling(namespace_flags) -> pid (0 in the child)"},
    {"fsmount", vk_fsmount, METH_VARARGS, "fsmount(fstype, [(key, value|None)], mount_attrs) -> detached mount fd"},
    {"remove_tree", vk_remove_tree, METH_VARARGS, "remove_tree(path): rm -rf without the GIL"},
    {"place_mount", vk_place_mount, METH_VARARGS,
     "place_mount(from_fd, to_fd[, recursive]): a new mount of from_fd's there"},
    {"set_mount_attrs", vk_set_mount_attrs, METH_VARARGS, "set_mount_attrs(fd, mount_attrs): mount_setattr"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_linux", NULL, -1, methods};

PyMODINIT_FUNC PyInit__linux(void) { return PyModule_Create(&module); }
