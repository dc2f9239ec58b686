import Foundation
import XCTest

/// Thrown from a `Wait.until` condition to stop waiting at once: what is awaited can no longer
/// happen (the process exited, it reported a fatal error).
struct WaitAborted: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

enum Wait {
    /// Long enough for a loaded two-core machine; a passing wait returns as soon as its condition holds.
    static let defaultTimeout: TimeInterval = 30
    static let pollInterval: TimeInterval = 0.05

    /// Poll `condition` every 50 ms until it returns true. On timeout (or `WaitAborted`), record a
    /// failure naming what was awaited, with `lastSeen()` (the state at the deadline: requests
    /// received, rows in the tracking table, a process's stderr) and the condition's last error.
    /// Other errors thrown by the condition are remembered and polling goes on.
    @discardableResult
    static func until(
        timeout: TimeInterval = defaultTimeout,
        _ what: String,
        lastSeen: () -> String = { "" },
        file: StaticString = #filePath,
        line: UInt = #line,
        _ condition: () throws -> Bool
    ) -> Bool {
        let start = Date()
        let deadline = start.addingTimeInterval(timeout)
        var lastError: Error?
        while true {
            do {
                if try condition() { return true }
                lastError = nil
            } catch let aborted as WaitAborted {
                XCTFail("Gave up waiting until \(what) after \(elapsed(since: start)): \(aborted)\n\(lastSeen())", file: file, line: line)
                return false
            } catch {
                lastError = error
            }
            if Date() >= deadline { break }
            Thread.sleep(forTimeInterval: pollInterval)
        }
        var message = "Timed out after \(elapsed(since: start)) waiting until \(what)."
        if let lastError { message += "\nThe condition last threw: \(lastError)" }
        let seen = lastSeen()
        if !seen.isEmpty { message += "\nLast seen:\n\(seen)" }
        XCTFail(message, file: file, line: line)
        return false
    }

    private static func elapsed(since start: Date) -> String {
        String(format: "%.1f s", Date().timeIntervalSince(start))
    }
}
