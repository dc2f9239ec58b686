import Foundation
import Shared
import XCTest

/// Many changes to few keys: coalescing may drop intermediate states, never the last one.
final class CoalescingTests: IntegrationTestCase {
    func testThousandChangesToHundredKeys_deliverEveryKeysFinalStateAndEmptyTheQueue() throws {
        let counters = WatchedTable(
            name: "counters", changeColumns: ["n"],
            atomicDataQuery: "SELECT id, n FROM counters WHERE id = $PRIMARY_KEY",
            publishEndpoint: "/api/v1/counters/atomic-data")
        let p = try startPipeline(
            schemaSQL: "CREATE TABLE counters (id text PRIMARY KEY, n integer NOT NULL);",
            tables: [counters])
        let keys = (0..<100).map { String(format: "key-%03d", $0) }
        let rounds = 9
        let started = Date()

        // 100 inserts in one transaction, then, ten keys at a time, 9 increments of those keys
        // in 9 transactions (so a batch of tracking rows holds several changes per key), written
        // while the worker publishes: 1,000 changes in 91 transactions.
        try p.database.execute("INSERT INTO counters (id, n) SELECT unnest($1::text[]), 0", [Self.textArray(keys)])
        var changes = keys.count
        for chunk in stride(from: 0, to: keys.count, by: 10) {
            for _ in 1...rounds {
                let updated = try p.database.execute("UPDATE counters SET n = n + 1 WHERE id = ANY($1::text[])",
                                                     [Self.textArray(Array(keys[chunk..<chunk + 10]))])
                changes += updated.affectedRows
            }
        }
        XCTAssertEqual(changes, 1_000)
        let written = Date()

        var lastByKey: [String: RecordedRequest] = [:]
        try waitUntil(timeout: 90, "every key's last payload carries n = \(rounds) and counters_changes is empty") {
            lastByKey = [:]
            for request in try p.ingestor.requests() {
                if let key = request.body["primary_key"]?.string { lastByKey[key] = request }
            }
            let queued = try p.database.rowCount("counters_changes")
            return queued == 0 && keys.allSatisfy { lastByKey[$0]?.body["atomic_data"]?[0]?["n"] == .number(Double(rounds)) }
        }
        let finished = Date()

        let requests = try p.ingestor.requests()
        XCTAssertEqual(Set(requests.compactMap { $0.body["primary_key"]?.string }), Set(keys), "payloads only for the keys written")
        for key in keys {
            let last = try XCTUnwrap(lastByKey[key])
            XCTAssertEqual(last.body["operation"], "update", "\(last)")
            XCTAssertEqual(last.body["change_column_value"], .string(String(rounds)), "\(last)")
            XCTAssertEqual(last.body["atomic_data"], [["id": .string(key), "n": .number(Double(rounds))]], "\(last)")
        }
        for request in requests {
            XCTAssertEqual(request.status, 200, "\(request)")
            XCTAssertEqual(request.path, counters.publishEndpoint)
            assertIdempotencyKey(request)
        }
        assertEachKeysPayloadsInCommitOrder(requests)
        // Every tracking row was covered by exactly one acknowledged payload.
        try waitUntil("the worker's stats report 1,000 changes published") {
            p.worker.latestStats()?["changes_published"] == 1_000
        }

        let duplicates = requests.count - Set(requests.compactMap { $0.body["id"]?.string }).count
        print(String(format: """
            CoalescingTests: %d changes to %d keys -> %d requests received (%.1f changes per request, %d duplicate ids); \
            written in %.2f s, all delivered %.2f s after the last commit
            """, changes, keys.count, requests.count, Double(changes) / Double(max(1, requests.count)), duplicates,
            written.timeIntervalSince(started), finished.timeIntervalSince(written)))
    }

    func testChangesQueuedForOneKey_arePublishedAsOnePayloadWithTheLatestState() throws {
        let devices = TestTables.devices
        let p = try startPipeline(schemaSQL: try TestTables.devicesSQL(), tables: [devices])
        // With no worker running, five changes to one key (and one to another) queue up.
        p.worker.stopAndAssertCleanExit()
        try p.database.execute("INSERT INTO devices VALUES (1, 'one', 'v1', '2026-11-28 10:00:00+00')")
        try p.database.execute("INSERT INTO devices VALUES (2, 'two', 'v1', '2026-11-28 10:00:00+00')")
        for minute in 1...4 {
            try p.database.execute("UPDATE devices SET updated_at = $1, firmware = $2 WHERE id = 1",
                                   ["2026-11-28 10:0\(minute):00+00", "v\(minute + 1)"])
        }
        XCTAssertEqual(try p.database.rowCount("devices_changes"), 6)

        try startWorker(table: "devices", config: p.configURL)
        try waitForRequests(p.ingestor, count: 2)
        try waitUntilTrackingTableIsEmpty(p.database, devices)
        let requests = try p.ingestor.requests()
        XCTAssertEqual(requests.count, 2, "one payload per key: \(requests)")
        let one = try XCTUnwrap(requests.first { $0.body["primary_key"] == "1" }, "\(requests)")
        let two = try XCTUnwrap(requests.first { $0.body["primary_key"] == "2" }, "\(requests)")
        // The payload is named after the key's latest tracking row and carries its operation and value.
        assertPayload(one, .init(
            table: devices, primaryKey: "1", operation: "update", changeColumnValue: "2026-11-28 10:04:00+00",
            atomicData: [["id": 1, "name": "one", "firmware": "v5", "updated_at": "2026-11-28T10:04:00+00:00"]],
            trackingID: 6))
        assertPayload(two, .init(
            table: devices, primaryKey: "2", operation: "insert", changeColumnValue: "2026-11-28 10:00:00+00",
            atomicData: [["id": 2, "name": "two", "firmware": "v1", "updated_at": "2026-11-28T10:00:00+00:00"]],
            trackingID: 2))
    }

    /// A PostgreSQL text[] literal.
    static func textArray(_ values: [String]) -> String {
        "{" + values.map { "\"" + $0.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\"" }
            .joined(separator: ",") + "}"
    }
}
