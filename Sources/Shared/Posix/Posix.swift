// The one file that imports the CPosix shim: signals as flags, close-on-exec pipes, posix_spawn,
// the parent-death signal and poll(2). Signal handlers only set a flag and write a byte to a
// self-pipe; the owning loop notices the flag (DESIGN.md, postmaster style).

import CPosix
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

public struct SignalSet: OptionSet, Sendable {
    public let rawValue: UInt
    public init(rawValue: UInt) { self.rawValue = rawValue }
    public static let term = SignalSet(rawValue: 1 << UInt(SIGTERM))
    public static let int = SignalSet(rawValue: 1 << UInt(SIGINT))
    public static let hup = SignalSet(rawValue: 1 << UInt(SIGHUP))
    public static let chld = SignalSet(rawValue: 1 << UInt(SIGCHLD))
    public static let usr1 = SignalSet(rawValue: 1 << UInt(SIGUSR1))
}

public enum Signals {
    /// Route the given signals to the flag handler. SIGPIPE is ignored (a closed pipe is an
    /// error return, not a death).
    public static func install(_ signals: [Int32]) {
        for s in signals { _ = cposix_install_signal_flag(s) }
        _ = cposix_ignore_signal(SIGPIPE)
    }

    /// The descriptor that becomes readable when a flagged signal arrives: poll it.
    public static var wakeFD: Int32 { cposix_signal_wake_fd() }

    /// Pending signals since the last call; clears them.
    public static func take() -> SignalSet { SignalSet(rawValue: cposix_take_signals()) }

    /// Ask the kernel to send `signal` to this process when its parent (the spawning thread) dies.
    public static func setParentDeathSignal(_ signal: Int32) { _ = cposix_set_pdeathsig(signal) }
}

public struct SystemCallError: Error, CustomStringConvertible, Sendable {
    public var call: String
    public var errno: Int32
    public init(_ call: String, errno: Int32) {
        self.call = call
        self.errno = errno
    }
    public var description: String { "\(call) failed: \(String(cString: strerror(errno))) (errno \(errno))" }
}

public enum Pipes {
    /// A pipe whose both ends are close-on-exec, so sibling children never inherit them.
    public static func make() throws(SystemCallError) -> (read: Int32, write: Int32) {
        var fds: [Int32] = [-1, -1]
        if cposix_pipe_cloexec(&fds) != 0 { throw SystemCallError("pipe2()", errno: errno) }
        return (fds[0], fds[1])
    }

    public static func setNonBlocking(_ fd: Int32) {
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
    }

    /// Bytes written to the pipe `fd` (either end) and not read yet; nil when it cannot say.
    public static func unreadBytes(_ fd: Int32) -> Int? {
        let n = cposix_unread_bytes(fd)
        return n < 0 ? nil : Int(n)
    }
}

public enum Spawn {
    /// posix_spawn `path` with `arguments` (argv[0] included), stdin and stdout wired to the given
    /// descriptors, stderr inherited, signal mask and dispositions reset.
    public static func spawn(path: String, arguments: [String], environment: [String], stdin: Int32, stdout: Int32) throws(SystemCallError) -> pid_t {
        let argv = arguments.map { strdup($0) } + [nil]
        let envp = environment.map { strdup($0) } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var pid: pid_t = 0
        let rc = cposix_spawn(&pid, path, argv, envp, stdin, stdout)
        if rc != 0 { throw SystemCallError("posix_spawn(\(path))", errno: rc) }
        return pid
    }
}

public enum Poll {
    public struct Readiness: Sendable {
        public var readable: Set<Int32> = []
        public var hangup: Set<Int32> = []
    }

    /// poll(2)'s timeout for `seconds`: whole milliseconds rounded up, so a caller that waits
    /// until a deadline under a millisecond away sleeps once instead of spinning on poll(0) until
    /// it passes (the WAL stream waits for such deadlines hundreds of times a second).
    static func milliseconds(_ seconds: Double) -> Int32 {
        Int32((max(0, min(seconds, 3600)) * 1000).rounded(.up))
    }

    /// poll(2) the descriptors for input for up to `timeout` seconds. EINTR is a normal return.
    public static func wait(readable fds: [Int32], timeout: Double) -> Readiness {
        var pfds = fds.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        let ms = milliseconds(timeout)
        let n = poll(&pfds, nfds_t(pfds.count), ms)
        var result = Readiness()
        if n <= 0 { return result }
        for p in pfds {
            if p.revents & Int16(POLLIN) != 0 { result.readable.insert(p.fd) }
            if p.revents & Int16(POLLHUP | POLLERR | POLLNVAL) != 0 { result.hangup.insert(p.fd) }
        }
        return result
    }

    /// poll(2) one descriptor for room to write, for up to `timeout` seconds.
    public static func waitWritable(_ fd: Int32, timeout: Double) -> Bool {
        var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
        let ms = milliseconds(timeout)
        return poll(&p, 1, ms) > 0 && p.revents & Int16(POLLOUT) != 0
    }
}

/// Monotonic seconds, for durations and deadlines.
public func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

/// glibc's heap, for long-running processes whose memory use comes in batches (without it, a worker
/// kept 12 MiB more after one 100,000-change drain at batch 5000).
public enum HeapMemory {
    /// Fix the mmap threshold at 128 KiB and the trim threshold at 1 MiB: large buffers (a batch's
    /// rows, a request body) are mmapped and unmapped when freed, and a free heap top above 1 MiB
    /// is returned. Call once at startup, before other threads exist.
    public static func fixThresholds() {
        cposix_malloc_fix_thresholds(128 * 1024, 1024 * 1024)
    }

    /// Return every free page of the heap to the kernel (malloc_trim(0)); for the moment work
    /// turns into idleness, not for a hot path.
    public static func releaseFreePages() {
        _ = cposix_malloc_trim()
    }
}
