#ifndef CPOSIX_H
#define CPOSIX_H
#include <sys/types.h>

/* pipe2(O_CLOEXEC): so sibling workers never inherit each other's pipe ends. */
int cposix_pipe_cloexec(int fds[2]);
/* prctl(PR_SET_PDEATHSIG, sig): the worker dies with the thread that spawned it. */
int cposix_set_pdeathsig(int sig);
/* posix_spawn with stdin/stdout wired to the given fds, stderr inherited, signals reset to default
   and the signal mask cleared. Returns 0 and sets *pid, or an errno value. */
int cposix_spawn(pid_t *pid, const char *path, char *const argv[], char *const envp[], int stdin_fd, int stdout_fd);
/* Install a handler that only records the signal number in a flag and writes one byte to a
   self-pipe; cposix_take_signals returns and clears the set of pending signals as a bitmask. */
int cposix_install_signal_flag(int sig);
unsigned long cposix_take_signals(void);
int cposix_signal_wake_fd(void);
int cposix_ignore_signal(int sig);
/* glibc malloc for a process whose batches come and go: fixed mmap and trim thresholds (bytes).
   By default a freed large block raises both thresholds (up to 32 MiB and 64 MiB), after which the
   next batch's buffers live in the heap and its free pages are never returned. */
void cposix_malloc_fix_thresholds(int mmap_threshold, int trim_threshold);
/* malloc_trim(0): return the free pages of the heap to the kernel. */
int cposix_malloc_trim(void);
/* ioctl(FIONREAD): bytes written to the pipe and not read yet (Linux answers on either end).
   Returns -1 with errno set when the descriptor cannot say. */
int cposix_unread_bytes(int fd);
#endif
