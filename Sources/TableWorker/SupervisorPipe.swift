// The worker's end of its pipe to the supervisor (stdout): line-delimited WorkerMessage JSON.
//
// Invariants:
// - Supervised, the worker never blocks on this pipe: its end is O_NONBLOCK, and what does not fit
//   waits in a StatsOutbox (whole lines, in order, only the latest stats) until the supervisor
//   reads again. A supervisor that is stopped (SIGSTOP, a debugger) must not stop the publishing,
//   the lease renewal or the signal handling of its workers.
// - Run alone (not supervised), stdout may be a terminal shared with a shell: it stays blocking,
//   and writes go out at once as before.

import Shared
#if canImport(Glibc)
import Glibc
#endif

final class SupervisorPipe {
    private let fd: Int32
    private let supervised: Bool
    private var outbox: StatsOutbox
    /// The supervisor is gone (a write failed with EPIPE): nothing will ever be read again, so
    /// nothing is kept or waited for (an exiting worker after a kill -9 of its supervisor used
    /// to spin for the whole drain time on the broken pipe).
    private var readerGone = false

    init(fd: Int32 = 1, supervised: Bool) {
        self.fd = fd
        self.supervised = supervised
        outbox = StatsOutbox(now: monotonicSeconds())
        if supervised { Pipes.setNonBlocking(fd) }
    }

    /// Queue `message` and write what the pipe takes now.
    func send(_ message: WorkerMessage) {
        let line = message.encodedLine()
        guard supervised else {
            writeAll(fd: fd, line)
            return
        }
        if case .stats = message {
            outbox.enqueue(line, isStats: true)
        } else {
            outbox.enqueue(line, isStats: false)
        }
        flush()
    }

    /// Write what the pipe takes now, and look whether the supervisor reads.
    func flush() {
        guard supervised, !readerGone else { return }
        let now = monotonicSeconds()
        outbox.observed(unreadBytes: Pipes.unreadBytes(fd) ?? 0, at: now)
        while let chunk = outbox.next {
            let n = chunk.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n > 0 {
                outbox.wrote(n)
                continue
            }
            if n < 0 && errno == EINTR { continue }
            if n < 0 && errno == EPIPE {
                readerGone = true
                break
            }
            // EAGAIN: full, the rest waits. EPIPE: the supervisor is gone (stdin EOF says so too).
            break
        }
    }

    /// How long the supervisor has read nothing of what this worker wrote (0 unless supervised).
    func supervisorSilentSeconds(now: Double) -> Double {
        supervised ? outbox.readerSilentSeconds(now: now) : 0
    }

    /// Before exiting: let the rest go within `seconds` (the supervisor reads what a worker wrote
    /// before it died, a fatal error included).
    func drain(within seconds: Double) {
        guard supervised else { return }
        let deadline = monotonicSeconds() + seconds
        flush()
        while !outbox.isEmpty && !readerGone {
            let left = deadline - monotonicSeconds()
            if left <= 0 { return }
            _ = Poll.waitWritable(fd, timeout: left)
            flush()
        }
    }
}
