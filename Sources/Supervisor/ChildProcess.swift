// One spawned worker process: its pid, the write end of its stdin (kept open: EOF tells the
// worker its supervisor is gone) and the read end of its stdout, split into lines.
//
// Invariants: both pipe ends the supervisor keeps are close-on-exec, so no sibling worker
// inherits them; the child gets only its own ends as fds 0 and 1 (posix_spawn dup2s them).

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif
import SharedCore

final class ChildProcess {
    let pid: pid_t
    let table: String
    private(set) var stdinFD: Int32
    private(set) var stdoutFD: Int32
    private var buffer: [UInt8] = []
    private var discarding = false
    /// Lines that were too long or not JSON.
    private(set) var malformedLines = 0

    private init(pid: pid_t, table: String, stdinFD: Int32, stdoutFD: Int32) {
        self.pid = pid
        self.table = table
        self.stdinFD = stdinFD
        self.stdoutFD = stdoutFD
    }

    deinit { closePipes() }

    /// Spawn `path --table NAME [--partition I] --config-stdin --supervisor-pid PID` and write its configuration
    /// line. The worker compares its parent with that pid (not with 1: the supervisor may itself be
    /// PID 1, as a container's entrypoint).
    static func spawn(path: String, table: String, partition: Int? = nil, configLine: [UInt8], environment: [String]) throws -> ChildProcess {
        let input = try Pipes.make()
        let output = try Pipes.make()
        let pid: pid_t
        do {
            let share = partition.map { ["--partition", String($0)] } ?? []
            pid = try Spawn.spawn(path: path, arguments: [path, "--table", table] + share + ["--config-stdin", "--supervisor-pid", String(getpid())],
                                  environment: environment, stdin: input.read, stdout: output.write)
        } catch {
            [input.read, input.write, output.read, output.write].forEach { close($0) }
            throw error
        }
        close(input.read)
        close(output.write)
        Pipes.setNonBlocking(output.read)
        let child = ChildProcess(pid: pid, table: table, stdinFD: input.write, stdoutFD: output.read)
        // The line is far below the pipe buffer (64 KiB) in practice; a larger one would block
        // until the worker reads it, which it does first thing.
        writeAll(fd: input.write, configLine)
        return child
    }

    /// Read what is available; return complete lines. Oversized lines are dropped and counted.
    func readLines() -> (lines: [[UInt8]], eof: Bool) {
        var lines: [[UInt8]] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        var eof = false
        while stdoutFD >= 0 {
            let n = read(stdoutFD, &chunk, chunk.count)
            if n > 0 {
                for byte in chunk[0..<n] {
                    if byte == UInt8(ascii: "\n") {
                        if discarding {
                            discarding = false
                        } else {
                            lines.append(buffer)
                        }
                        buffer.removeAll(keepingCapacity: true)
                    } else if !discarding {
                        buffer.append(byte)
                        if buffer.count > WorkerMessage.maxLineBytes {
                            malformedLines += 1
                            discarding = true
                            buffer.removeAll()
                        }
                    }
                }
            } else if n == 0 {
                eof = true
                break
            } else {
                if errno == EINTR { continue }
                if errno != EAGAIN { eof = true }
                break
            }
        }
        if eof, stdoutFD >= 0 {
            close(stdoutFD)
            stdoutFD = -1
        }
        return (lines, eof)
    }


    func signal(_ sig: WorkerSignal) {
        _ = kill(pid, sig == .term ? SIGTERM : SIGKILL)
    }

    /// waitpid(pid, WNOHANG): the exit reason once the process has exited.
    func reap() -> ExitReason? {
        var status: Int32 = 0
        let r = waitpid(pid, &status, WNOHANG)
        guard r == pid else { return nil }
        let termsig = status & 0x7f
        if termsig == 0 { return .exited((status >> 8) & 0xff) }
        return .signaled(termsig)
    }

    func closePipes() {
        if stdinFD >= 0 { close(stdinFD); stdinFD = -1 }
        if stdoutFD >= 0 { close(stdoutFD); stdoutFD = -1 }
    }
}
