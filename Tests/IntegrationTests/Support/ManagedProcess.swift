import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A child process for a test: its stdout and stderr go to files (nothing is lost, no pipe fills
/// up and blocks the child), read back as lines; it is stopped with SIGTERM and, after a deadline,
/// SIGKILL. Started through `setpriv --pdeathsig KILL` when available, so the kernel kills it even
/// if the test runner itself crashes and never reaches tearDown. The kernel ties that signal to
/// the *thread* that spawned the child: start processes from a long-lived thread (XCTest's main
/// thread, where synchronous tests run), never from a short-lived one.
///
/// Used from one test thread at a time.
final class ManagedProcess {
    enum Termination: Equatable, CustomStringConvertible {
        case exited(Int32)
        case signaled(Int32)

        var description: String {
            switch self {
            case .exited(let code): "exited with status \(code)"
            case .signaled(let signal): "killed by signal \(signal)"
            }
        }
    }

    struct StartFailed: Error, CustomStringConvertible {
        let description: String
    }

    let name: String
    let executable: URL
    let arguments: [String]
    let stdoutURL: URL
    let stderrURL: URL
    private let process = Process()
    private let stdinPipe: Pipe?
    private var stdoutReader: LineReader

    /// Environment variables that would change how a child behaves under test: the product's own
    /// configuration overrides, and systemd's (which would switch logging to the journal).
    static let scrubbedEnvironmentPrefixes = ["ATOMIC_DATA_PUBLISHER_", "NOTIFY_SOCKET", "WATCHDOG_", "JOURNAL_STREAM",
                                              "INVOCATION_ID", "LISTEN_FDS", "LISTEN_PID", "CREDENTIALS_DIRECTORY"]

    /// Start `executable`. Logs go to `<logDirectory>/<name>.stdout` and `.stderr`. With
    /// `stdin: true` the child's stdin is a pipe (`writeToStdin`, `closeStdin`); otherwise /dev/null.
    init(name: String, executable: URL, arguments: [String], environment overrides: [String: String] = [:],
         workingDirectory: URL, logDirectory: URL, stdin: Bool = false) throws {
        self.name = name
        self.executable = executable
        self.arguments = arguments
        stdoutURL = logDirectory.appendingPathComponent("\(name).stdout")
        stderrURL = logDirectory.appendingPathComponent("\(name).stderr")
        stdoutReader = LineReader(url: stdoutURL)

        let files = FileManager.default
        try files.createDirectory(at: logDirectory, withIntermediateDirectories: true)
        guard files.createFile(atPath: stdoutURL.path, contents: nil), files.createFile(atPath: stderrURL.path, contents: nil) else {
            throw StartFailed(description: "cannot create log files for \(name) in \(logDirectory.path)")
        }
        let stdoutHandle = try FileHandle(forWritingTo: stdoutURL)
        let stderrHandle = try FileHandle(forWritingTo: stderrURL)
        defer {
            try? stdoutHandle.close()
            try? stderrHandle.close()
        }

        let setpriv = URL(fileURLWithPath: "/usr/bin/setpriv")
        if files.isExecutableFile(atPath: setpriv.path) {
            process.executableURL = setpriv
            process.arguments = ["--pdeathsig", "KILL", "--", executable.path] + arguments
        } else {
            process.executableURL = executable
            process.arguments = arguments
        }
        var environment = ProcessInfo.processInfo.environment.filter { key, _ in
            !Self.scrubbedEnvironmentPrefixes.contains { key.hasPrefix($0) }
        }
        environment.merge(overrides) { _, new in new }
        process.environment = environment
        process.currentDirectoryURL = workingDirectory
        process.standardOutput = stdoutHandle
        process.standardError = stderrHandle
        if stdin {
            let pipe = Pipe()
            stdinPipe = pipe
            process.standardInput = pipe
        } else {
            stdinPipe = nil
            process.standardInput = FileHandle.nullDevice
        }
        do {
            try process.run()
        } catch {
            throw StartFailed(description: "cannot start \(name) (\(executable.path)): \(error)")
        }
        try? stdinPipe?.fileHandleForReading.close()
    }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
    }

    var pid: Int32 { process.processIdentifier }
    var isRunning: Bool { process.isRunning }

    /// How the process ended, or nil while it runs.
    var termination: Termination? {
        if process.isRunning { return nil }
        switch process.terminationReason {
        case .exit: return .exited(process.terminationStatus)
        case .uncaughtSignal: return .signaled(process.terminationStatus)
        @unknown default: return .exited(process.terminationStatus)
        }
    }

    /// Every complete line the process has written to stdout so far.
    func stdoutLines() -> [String] {
        stdoutReader.refresh()
        return stdoutReader.lines
    }

    func stderrText() -> String {
        (try? String(contentsOf: stderrURL, encoding: .utf8)) ?? ""
    }

    /// The last `lines` lines of stderr, for failure messages.
    func stderrTail(lines: Int = 25) -> String {
        let all = stderrText().split(separator: "\n", omittingEmptySubsequences: true)
        let tail = all.suffix(lines).joined(separator: "\n")
        let skipped = all.count > lines ? "[... \(all.count - lines) earlier lines in \(stderrURL.path)]\n" : ""
        return "--- \(name) stderr (pid \(pid), \(termination?.description ?? "running")) ---\n\(skipped)\(tail)"
    }

    func writeToStdin(_ text: String) throws {
        guard let pipe = stdinPipe else { throw StartFailed(description: "\(name) was started without a stdin pipe") }
        try pipe.fileHandleForWriting.write(contentsOf: Data(text.utf8))
    }

    func closeStdin() {
        try? stdinPipe?.fileHandleForWriting.close()
    }

    func send(_ signal: Int32) {
        if process.isRunning { kill(process.processIdentifier, signal) }
    }

    /// Wait for the process to end, polling; nil if it still runs at the deadline.
    func waitForExit(timeout: TimeInterval) -> Termination? {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline {
            Thread.sleep(forTimeInterval: 0.02)
        }
        return termination
    }

    /// SIGTERM, then SIGKILL if it has not ended after `timeout` seconds. Returns how it ended
    /// (already ended: how it ended then).
    @discardableResult
    func stop(timeout: TimeInterval = 10) -> Termination {
        if let ended = termination { closeStdin(); return ended }
        send(SIGTERM)
        if let ended = waitForExit(timeout: timeout) { closeStdin(); return ended }
        send(SIGKILL)
        process.waitUntilExit()
        closeStdin()
        return termination ?? .signaled(SIGKILL)
    }
}

/// Reads a growing file as lines, remembering where it stopped; an incomplete last line waits
/// for its newline.
struct LineReader {
    let url: URL
    private(set) var lines: [String] = []
    private var offset: UInt64 = 0
    private var partial = Data()

    init(url: URL) { self.url = url }

    mutating func refresh() {
        guard let handle = try? FileHandle(forReadingFrom: url) else { return }
        defer { try? handle.close() }
        guard (try? handle.seek(toOffset: offset)) != nil, let data = try? handle.readToEnd(), !data.isEmpty else { return }
        offset += UInt64(data.count)
        partial.append(data)
        while let newline = partial.firstIndex(of: UInt8(ascii: "\n")) {
            lines.append(String(decoding: partial[partial.startIndex..<newline], as: UTF8.self))
            partial = Data(partial[partial.index(after: newline)...])
        }
    }
}
