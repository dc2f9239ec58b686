import Foundation
import Shared
import XCTest

/// The ingestor failing is not the change failing: it stays queued until acknowledged.
final class IngestorFailureTests: IntegrationTestCase {
    private let devices = TestTables.devices

    func testIngestorAnswering500_keepsTheChangeQueuedWithItsErrorUntilAccepted() throws {
        let p = try startPipeline(schemaSQL: try TestTables.devicesSQL(), tables: [devices])
        try p.ingestor.setControl(["status": 500])

        try p.database.execute("INSERT INTO devices (id, name, firmware, updated_at) VALUES (7, 'pump', 'v1', '2026-11-28 10:00:00+00')")

        // At least two attempts failed: the row is still there, with what went wrong and when to retry.
        var row: [String?] = []
        try waitUntil("the change has failed twice and is still queued") {
            let result = try p.database.execute("SELECT id, primary_key, operation::text, attempts, last_error, next_attempt_at IS NOT NULL FROM devices_changes")
            guard result.rows.count == 1 else { return false }
            row = result.rows[0]
            let received = try p.ingestor.requests().count
            return Int(row[3] ?? "0")! >= 2 && received >= 2
        }
        XCTAssertEqual(row[0], "1")
        XCTAssertEqual(row[1], "7")
        XCTAssertEqual(row[2], "I")
        XCTAssertTrue((row[4] ?? "").contains("500"), "last_error should say the ingestor answered 500: \(row)")
        XCTAssertEqual(row[5], "t", "next_attempt_at must be set")

        try p.ingestor.setControl(["status": 200])
        try waitUntil("a payload is accepted and devices_changes is empty") {
            let accepted = try p.ingestor.requests().contains { $0.status == 200 }
            let queued = try p.database.rowCount("devices_changes")
            return accepted && queued == 0
        }

        let requests = try p.ingestor.requests()
        let failed = requests.filter { $0.status == 500 }
        XCTAssertEqual(requests.filter { $0.status == 200 }.count, 1, "\(requests)")
        XCTAssertEqual(requests.last?.status, 200, "nothing is published after the accepted payload: \(requests)")
        XCTAssertEqual(failed.count, requests.count - 1, "\(requests)")
        // Every attempt is the same payload under the same id (the ingestor can deduplicate);
        // only metadata.retry_count grows, from 0 to at least the recorded attempts.
        let retryCounts = requests.map { $0.body["metadata"]?["retry_count"]?.int ?? -1 }
        XCTAssertEqual(retryCounts.first, 0, "\(retryCounts)")
        XCTAssertEqual(retryCounts, retryCounts.sorted(), "retry_count must never go back: \(retryCounts)")
        let recordedAttempts = Int(row[3] ?? "0")!
        XCTAssertGreaterThanOrEqual(retryCounts.last ?? -1, recordedAttempts,
                                    "the accepted payload must count the \(recordedAttempts) failed attempts recorded before it: \(retryCounts)")
        for (request, retryCount) in zip(requests, retryCounts) {
            assertPayload(request, .init(
                table: devices, primaryKey: "7", operation: "insert", changeColumnValue: "2026-11-28 10:00:00+00",
                atomicData: [["id": 7, "name": "pump", "firmware": "v1", "updated_at": "2026-11-28T10:00:00+00:00"]],
                trackingID: 1, retryCount: retryCount))
        }
        XCTAssertEqual(try p.database.rowCount("devices_changes_failed"), 0, "a 500 is transient: nothing is dead-lettered")
        try waitUntil("the worker's stats count \(failed.count) publish failures and 1 change published") {
            let stats = p.worker.latestStats()
            return stats?["publish_failures"] == .number(Double(failed.count)) && stats?["changes_published"] == 1
        }
    }

    func testPayloadRejectedWith400_isDeadLetteredAfterItsAttemptsWithoutBlockingOtherKeys() throws {
        // A rejected key waits 1.5 to 3 s (half-jittered backoff) before its second and last attempt.
        let p = try startPipeline(schemaSQL: try TestTables.devicesSQL(), tables: [devices]) { config in
            config.service.deadLetterAfterAttempts = 2
            config.ingestor.retryDelaySeconds = 3
            config.ingestor.maxRetryDelaySeconds = 3
        }
        p.worker.expectedErrorLogs = ["change moved to dead letters"]
        try p.ingestor.setControl(["fail_keys": ["13": 400]])

        try p.database.executeScript("""
            INSERT INTO devices VALUES (12, 'twelve', 'v1', '2026-11-28 10:00:00+00');
            INSERT INTO devices VALUES (13, 'thirteen', 'v1', '2026-11-28 10:00:00+00');
            INSERT INTO devices VALUES (14, 'fourteen', 'v1', '2026-11-28 10:00:00+00');
            """)
        try waitUntil("key 13 has been rejected once and keys 12 and 14 are accepted") {
            let requests = try p.ingestor.requests()
            let accepted = Set(requests.filter { $0.status == 200 }.compactMap { $0.body["primary_key"]?.string })
            return accepted == ["12", "14"] && requests.contains { $0.status == 400 }
        }
        // While 13 waits for its next attempt, a new change to 14 goes through.
        try p.database.execute("UPDATE devices SET updated_at = '2026-11-28 11:00:00+00' WHERE id = 14")

        try waitUntil("key 13 is dead-lettered and devices_changes is empty") {
            let dead = try p.database.rowCount("devices_changes_failed")
            let queued = try p.database.rowCount("devices_changes")
            return dead == 1 && queued == 0
        }
        let dead = try p.database.execute("SELECT id, primary_key, operation::text, attempts, last_error, failed_at IS NOT NULL FROM devices_changes_failed")
        XCTAssertEqual(dead.rows.count, 1)
        XCTAssertEqual(Array(dead.rows[0][0...3]), ["2", "13", "I", "2"], "the tracking row, with its 2 attempts: \(dead.rows)")
        XCTAssertTrue((dead.rows[0][4] ?? "").contains("400"), "last_error names the ingestor's answer: \(dead.rows)")
        XCTAssertEqual(dead.rows[0][5], "t")

        let requests = try p.ingestor.requests()
        let forKey = Dictionary(grouping: requests) { $0.body["primary_key"]?.string ?? "" }
        XCTAssertEqual(forKey["13"]?.map(\.status), [400, 400], "a 400 is not retried at once, only after a backoff: \(requests)")
        XCTAssertEqual(forKey["12"]?.map(\.status), [200])
        XCTAssertEqual(forKey["14"]?.map(\.status), [200, 200])
        XCTAssertEqual(forKey["14"]?.last?.body["change_column_value"], "2026-11-28 11:00:00+00")
        XCTAssertEqual(forKey["13"]?.compactMap { $0.body["id"]?.string?.split(separator: ":").last.map(String.init) }, ["2", "2"])
        // 14's new change did not wait for 13's backoff: it arrived before 13's second attempt.
        let fourteenUpdated = requests.firstIndex { $0.body["primary_key"] == "14" && $0.body["operation"] == "update" }
        let thirteenRetried = requests.lastIndex { $0.body["primary_key"] == "13" }
        XCTAssertLessThan(fourteenUpdated ?? .max, thirteenRetried ?? -1, "\(requests)")
        try waitUntil("the worker's stats count 1 dead-lettered change") {
            p.worker.latestStats()?["dead_lettered"] == 1
        }
    }

    func testNewChangeToAKeyWhoseRetryIsPending_waitsForItAndIsPublishedTogether() throws {
        // No immediate retries: a failed key waits 1 to 2 s (half-jittered backoff) in the table.
        let p = try startPipeline(schemaSQL: try TestTables.devicesSQL(), tables: [devices]) { config in
            config.ingestor.maxRetries = 0
            config.ingestor.retryDelaySeconds = 2
            config.ingestor.maxRetryDelaySeconds = 2
        }
        try p.ingestor.setControl(["fail_keys": ["7": 503]])
        try p.database.execute("INSERT INTO devices VALUES (7, 'pump', 'v1', '2026-11-28 10:00:00+00')")
        try waitUntil("the insert of key 7 has failed and waits for its retry") {
            try p.database.value("SELECT attempts FROM devices_changes WHERE id = 1") == "1"
        }

        try p.database.execute("UPDATE devices SET updated_at = '2026-11-28 11:00:00+00', firmware = 'v2' WHERE id = 7")
        try waitUntil("the ingestor has seen the payload covering both changes") {
            try p.ingestor.requests().contains { $0.body["id"]?.string?.hasSuffix(":2") == true }
        }
        try p.ingestor.setControl(["fail_keys": [String: Int]()])
        try waitUntil("key 7 is accepted and devices_changes is empty") {
            let accepted = try p.ingestor.requests().contains { $0.status == 200 }
            let queued = try p.database.rowCount("devices_changes")
            return accepted && queued == 0
        }

        // The newer change never overtook the older one: ids only grow, and the accepted payload
        // (the last request) covers both changes with the latest state.
        let requests = try p.ingestor.requests()
        let ids = requests.compactMap { $0.body["id"]?.string?.split(separator: ":").last.flatMap { Int($0) } }
        XCTAssertEqual(ids.first, 1, "\(requests)")
        XCTAssertEqual(ids, ids.sorted(), "a newer change was published before an older one: \(ids)")
        XCTAssertEqual(requests.filter { $0.status == 200 }.count, 1, "\(requests)")
        let accepted = try XCTUnwrap(requests.last)
        XCTAssertEqual(accepted.status, 200, "\(requests)")
        assertPayload(accepted, .init(
            table: devices, primaryKey: "7", operation: "update", changeColumnValue: "2026-11-28 11:00:00+00",
            atomicData: [["id": 7, "name": "pump", "firmware": "v2", "updated_at": "2026-11-28T11:00:00+00:00"]],
            trackingID: 2, retryCount: accepted.body["metadata"]?["retry_count"]?.int ?? -1))
        XCTAssertGreaterThanOrEqual(accepted.body["metadata"]?["retry_count"]?.int ?? -1, 1, "it covers a change that failed before")
    }

    func testSIGTERMWhileAPublishIsStalled_exitsCleanlyAndTheChangeIsPublishedAfterRestart() throws {
        try assertStalledPublishSurvives(stopping: { worker in
            let started = Date()
            XCTAssertEqual(worker.stop(timeout: 10), .exited(0), worker.diagnostics())
            XCTAssertLessThan(Date().timeIntervalSince(started), 5, "SIGTERM must interrupt a stalled publish, not wait for its 10 s timeout")
        })
    }

    func testWorkerKilledWhileAPublishIsStalled_losesNothingAfterRestart() throws {
        try assertStalledPublishSurvives(stopping: { worker in
            worker.process.send(SIGKILL)
            XCTAssertEqual(worker.process.waitForExit(timeout: 10), .signaled(SIGKILL))
        })
    }

    /// Stall the ingestor, let the worker send a payload, stop the worker with `stopping`, then
    /// check the change is still queued and is delivered, under the same id, by a new worker.
    private func assertStalledPublishSurvives(stopping: (WorkerProcess) -> Void, file: StaticString = #filePath, line: UInt = #line) throws {
        let p = try startPipeline(schemaSQL: try TestTables.devicesSQL(), tables: [devices])
        try p.ingestor.setControl(["stall": true])
        try p.database.execute("INSERT INTO devices VALUES (5, 'five', 'v1', '2026-11-28 10:00:00+00')")
        let stalled = try waitForRequests(p.ingestor, count: 1, file: file, line: line)
        XCTAssertEqual(stalled[0].status, 0, "the ingestor holds the request without answering", file: file, line: line)

        stopping(p.worker)
        XCTAssertEqual(try p.database.rowCount("devices_changes"), 1, "an unacknowledged change stays queued", file: file, line: line)

        try p.ingestor.setControl(["stall": false])
        try startWorker(table: "devices", config: p.configURL, file: file, line: line)
        try waitUntil("the change is accepted and devices_changes is empty", file: file, line: line) {
            let accepted = try p.ingestor.requests().contains { $0.status == 200 }
            let queued = try p.database.rowCount("devices_changes")
            return accepted && queued == 0
        }
        let requests = try p.ingestor.requests()
        XCTAssertEqual(requests.map(\.status), [0, 200], "\(requests)", file: file, line: line)
        for request in requests {
            assertPayload(request, .init(
                table: devices, primaryKey: "5", operation: "insert", changeColumnValue: "2026-11-28 10:00:00+00",
                atomicData: [["id": 5, "name": "five", "firmware": "v1", "updated_at": "2026-11-28T10:00:00+00:00"]],
                trackingID: 1), file: file, line: line)
        }
    }
}
