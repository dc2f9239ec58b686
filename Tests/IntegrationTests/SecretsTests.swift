import Foundation
import Shared
import XCTest

/// Secrets go where they are due (the Authorization header) and nowhere else: not in a log line,
/// not in a worker message (DESIGN.md sections 3 and 9).
final class SecretsTests: IntegrationTestCase {
    func testAuthTokenAndPassword_areSentWhereDueAndNeverLogged() throws {
        let password = "pg-Secret-4711"
        let token = "tok-Secret-0815"
        let devices = TestTables.devices
        // The test server trusts local connections: libpq holds the password but is never asked for it.
        let p = try startPipeline(schemaSQL: try TestTables.devicesSQL(), tables: [devices]) { config in
            config.database.password = password
            config.ingestor.authToken = token
        }
        // A failure first, so that the error paths log too.
        try p.ingestor.setControl(["status": 500])
        try p.database.execute("INSERT INTO devices VALUES (1, 'one', 'v1', '2026-11-28 10:00:00+00')")
        try waitUntil("the first attempts have failed and are recorded") {
            (Int(try p.database.value("SELECT attempts FROM devices_changes") ?? "0") ?? 0) >= 1
        }
        try p.ingestor.setControl(["status": 200])
        try waitUntil("the change is accepted and devices_changes is empty") {
            let accepted = try p.ingestor.requests().contains { $0.status == 200 }
            let queued = try p.database.rowCount("devices_changes")
            return accepted && queued == 0
        }
        p.worker.stopAndAssertCleanExit()

        let requests = try p.ingestor.requests()
        XCTAssertFalse(requests.isEmpty)
        for request in requests {
            XCTAssertEqual(request.header("Authorization"), "Bearer \(token)", "\(request)")
        }
        let stderr = p.worker.process.stderrText()
        let stdout = p.worker.process.stdoutLines().joined(separator: "\n")
        XCTAssertFalse(stderr.isEmpty, "the worker logs at debug level")
        for secret in [password, token] {
            XCTAssertFalse(stderr.contains(secret), "stderr holds a secret:\n\(p.worker.diagnostics())")
            XCTAssertFalse(stdout.contains(secret), "stdout holds a secret")
        }
    }
}
