import Foundation
import XCTest

/// `atomic-data-table-worker --table NAME --config PATH`, run standalone as a test's child
/// process. Its stdout carries the line-delimited JSON messages of DESIGN.md section 6
/// (`ready`, `stats`, `fatal`); its stderr the JSON log lines.
final class WorkerProcess {
    let table: String
    let configURL: URL
    let process: ManagedProcess
    /// Messages of error or critical log lines the test expects; any other such line fails the
    /// test at tearDown (IntegrationTestCase), as does a stderr line that is not JSON (a crash).
    var expectedErrorLogs: [String] = []

    init(table: String, configURL: URL, directory: URL, name: String? = nil) throws {
        self.table = table
        self.configURL = configURL
        process = try ManagedProcess(
            name: name ?? "worker-\(table)", executable: try TestEnvironment.binary(named: "atomic-data-table-worker"),
            arguments: ["--table", table, "--config", configURL.path],
            workingDirectory: directory, logDirectory: directory)
    }

    var pid: Int32 { process.pid }

    /// The stdout messages so far, decoded. A line that is not a JSON object is returned as
    /// `["type": "unparsable", "line": ...]` so that a test can fail on it.
    func messages() -> [JSON] {
        process.stdoutLines().map { line in
            if let json = try? JSON(parsing: line), json.object != nil { return json }
            return ["type": "unparsable", "line": .string(line)]
        }
    }

    /// The most recent `stats` message.
    func latestStats() -> JSON? {
        messages().last { $0["type"] == "stats" }
    }

    /// Wait for `{"type":"ready","table":...,"pid":...}`; stops early, with the reason, if the
    /// worker exits or reports a fatal error first.
    @discardableResult
    func waitUntilReady(timeout: TimeInterval = Wait.defaultTimeout, file: StaticString = #filePath, line: UInt = #line) -> Bool {
        Wait.until(timeout: timeout, "worker for '\(table)' reports ready on stdout",
                   lastSeen: { self.diagnostics() }, file: file, line: line) {
            let messages = self.messages()
            if let fatal = messages.first(where: { $0["type"] == "fatal" }) {
                throw WaitAborted("the worker reported \(fatal)")
            }
            if let ready = messages.first(where: { $0["type"] == "ready" }) {
                let expected: JSON = ["type": "ready", "table": .string(self.table), "pid": .number(Double(self.pid))]
                guard ready == expected else { throw WaitAborted("the ready line is \(ready), expected \(expected)") }
                return true
            }
            if let ended = self.process.termination { throw WaitAborted("the worker \(ended) before it was ready") }
            return false
        }
    }

    /// Stdout lines that break DESIGN.md section 6: not a JSON object, longer than 64 KiB, of an
    /// unknown type, or about another table.
    func protocolViolations() -> [String] {
        process.stdoutLines().filter { line in
            guard line.utf8.count <= 64 * 1024, let message = try? JSON(parsing: line) else { return true }
            switch message["type"]?.string {
            case "ready", "stats": return message["table"] != .string(table)
            case "fatal": return message["error"]?.string == nil
            default: return true
            }
        }
    }

    /// SIGTERM (then SIGKILL after `timeout`), and how it ended.
    @discardableResult
    func stop(timeout: TimeInterval = 10) -> ManagedProcess.Termination {
        process.stop(timeout: timeout)
    }

    /// Stop it and assert that it stopped cleanly: exit status 0 on SIGTERM (DESIGN.md section 7).
    func stopAndAssertCleanExit(timeout: TimeInterval = 10, file: StaticString = #filePath, line: UInt = #line) {
        let ended = stop(timeout: timeout)
        XCTAssertEqual(ended, .exited(0), "the worker for '\(table)' did not exit cleanly on SIGTERM\n\(diagnostics())",
                       file: file, line: line)
    }

    /// Stderr lines that are not JSON log lines, or that log at error or critical level with a
    /// message matching none of `expectedErrorLogs`.
    func unexpectedLogLines() -> [String] {
        process.stderrText().split(separator: "\n").map(String.init).filter { line in
            guard let entry = try? JSON(parsing: line), let level = entry["level"]?.string else { return true }
            guard level == "error" || level == "critical" else { return false }
            let message = entry["message"]?.string ?? ""
            return !expectedErrorLogs.contains { message.contains($0) }
        }
    }

    /// The tail of stderr and the last stdout message, for failure messages.
    func diagnostics(stderrLines: Int = 25) -> String {
        let last = process.stdoutLines().last.map { "--- last stdout line ---\n\($0)\n" } ?? "--- no stdout line ---\n"
        return last + process.stderrTail(lines: stderrLines)
    }
}
