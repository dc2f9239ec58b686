import Foundation
import Shared
import XCTest

/// Insert, update, delete and NULL: one watched table, each change published as one exact payload.
final class ChangeLifecycleTests: IntegrationTestCase {
    private let devices = TestTables.devices

    private func insertDevice(_ db: TestDatabase, at updatedAt: String = "2026-11-28 10:00:00+00") throws {
        try db.execute("INSERT INTO devices (id, name, firmware, updated_at) VALUES (42, 'hall sensor', 'v1', $1)", [updatedAt])
    }

    func testInsert_publishesOneInsertPayloadWithTheRow() throws {
        let p = try startPipeline(schemaSQL: try TestTables.devicesSQL(), tables: [devices])

        let before = try p.database.now()
        try insertDevice(p.database)
        let after = try p.database.now()

        try waitForRequests(p.ingestor, count: 1)
        try waitUntilTrackingTableIsEmpty(p.database, devices)
        let requests = try p.ingestor.requests()
        XCTAssertEqual(requests.count, 1, "one change, one payload: \(requests)")
        assertPayload(requests[0], .init(
            table: devices, primaryKey: "42", operation: "insert",
            changeColumnValue: "2026-11-28 10:00:00+00",
            atomicData: [["id": 42, "name": "hall sensor", "firmware": "v1", "updated_at": "2026-11-28T10:00:00+00:00"]],
            trackingID: 1, changedBetween: before...after))
    }

    func testUpdateOfWatchedColumn_publishesUpdateWithTheNewValue() throws {
        let p = try startPipeline(schemaSQL: try TestTables.devicesSQL(), tables: [devices])
        try insertDevice(p.database)
        try waitForRequests(p.ingestor, count: 1)
        try waitUntilTrackingTableIsEmpty(p.database, devices)

        let before = try p.database.now()
        try p.database.execute("UPDATE devices SET updated_at = '2026-11-28 11:30:00+00', firmware = 'v2' WHERE id = 42")
        let after = try p.database.now()

        try waitForRequests(p.ingestor, count: 2)
        try waitUntilTrackingTableIsEmpty(p.database, devices)
        let requests = try p.ingestor.requests()
        XCTAssertEqual(requests.count, 2, "\(requests)")
        assertPayload(requests[1], .init(
            table: devices, primaryKey: "42", operation: "update",
            changeColumnValue: "2026-11-28 11:30:00+00",
            atomicData: [["id": 42, "name": "hall sensor", "firmware": "v2", "updated_at": "2026-11-28T11:30:00+00:00"]],
            trackingID: 2, changedBetween: before...after))
    }

    /// The queue has no CHECK on `operation` (it cost every captured row a parse and plan). A row inserted by hand with a code none of
    /// ours writes is published as an update of the key's current state and acknowledged, not
    /// left in the queue.
    func testATrackingRowWithAnUnknownOperationCode_isPublishedAsAnUpdateAndAcknowledged() throws {
        let p = try startPipeline(schemaSQL: try TestTables.devicesSQL(), tables: [devices])
        try insertDevice(p.database)
        try waitForRequests(p.ingestor, count: 1)
        try waitUntilTrackingTableIsEmpty(p.database, devices)

        try p.database.execute("INSERT INTO devices_changes (primary_key, operation, change_column_value) VALUES ('42', 'X', 'by hand')")
        try waitForRequests(p.ingestor, count: 2)
        try waitUntilTrackingTableIsEmpty(p.database, devices)
        let requests = try p.ingestor.requests()
        XCTAssertEqual(requests.count, 2, "\(requests)")
        XCTAssertEqual(requests[1].body["operation"], "update", "\(requests[1])")
        XCTAssertEqual(requests[1].body["primary_key"], "42", "\(requests[1])")
        XCTAssertEqual(requests[1].body["change_column_value"], "by hand", "\(requests[1])")
        XCTAssertEqual(requests[1].body["atomic_data"],
                       [["id": 42, "name": "hall sensor", "firmware": "v1", "updated_at": "2026-11-28T10:00:00+00:00"]], "\(requests[1])")
    }

    func testUpdateOfAnotherColumn_recordsNoChange() throws {
        let p = try startPipeline(schemaSQL: try TestTables.devicesSQL(), tables: [devices])
        try insertDevice(p.database)
        try waitForRequests(p.ingestor, count: 1)
        try waitUntilTrackingTableIsEmpty(p.database, devices)

        let updated = try p.database.execute("UPDATE devices SET firmware = 'v2', name = 'hall sensor (moved)' WHERE id = 42")
        XCTAssertEqual(updated.affectedRows, 1)
        // The trigger runs inside the UPDATE: had it recorded a change, the tracking id sequence
        // would have moved past the insert's id 1 by now, whether or not the worker consumed the row.
        XCTAssertEqual(try p.database.value("SELECT last_value FROM devices_changes_id_seq"), "1",
                       "an update of unwatched columns must not write a tracking row")
        XCTAssertEqual(try p.database.rowCount("devices_changes"), 0)

        // A later watched change is the next tracking row (id 2) and the next payload: nothing
        // was published in between. It carries the current state, unwatched columns included.
        try p.database.execute("UPDATE devices SET updated_at = '2026-11-28 12:00:00+00' WHERE id = 42")
        try waitForRequests(p.ingestor, count: 2)
        try waitUntilTrackingTableIsEmpty(p.database, devices)
        let requests = try p.ingestor.requests()
        XCTAssertEqual(requests.count, 2, "the unwatched update must publish nothing: \(requests)")
        XCTAssertEqual(requests.map { $0.body["operation"] }, ["insert", "update"])
        assertPayload(requests[1], .init(
            table: devices, primaryKey: "42", operation: "update",
            changeColumnValue: "2026-11-28 12:00:00+00",
            atomicData: [["id": 42, "name": "hall sensor (moved)", "firmware": "v2", "updated_at": "2026-11-28T12:00:00+00:00"]],
            trackingID: 2))
    }

    func testDelete_publishesDeleteWithEmptyAtomicData() throws {
        let p = try startPipeline(schemaSQL: try TestTables.devicesSQL(), tables: [devices])
        try insertDevice(p.database)
        try waitForRequests(p.ingestor, count: 1)
        try waitUntilTrackingTableIsEmpty(p.database, devices)

        let before = try p.database.now()
        try p.database.execute("DELETE FROM devices WHERE id = 42")
        let after = try p.database.now()

        try waitForRequests(p.ingestor, count: 2)
        try waitUntilTrackingTableIsEmpty(p.database, devices)
        let requests = try p.ingestor.requests()
        XCTAssertEqual(requests.count, 2, "\(requests)")
        // change_column_value is the deleted row's last value.
        assertPayload(requests[1], .init(
            table: devices, primaryKey: "42", operation: "delete",
            changeColumnValue: "2026-11-28 10:00:00+00",
            atomicData: [],
            trackingID: 2, changedBetween: before...after))
    }

    func testNullWatchedValue_isRecordedAndPublishedAsNull() throws {
        let tickets = WatchedTable(
            name: "tickets", changeColumns: ["state"],
            atomicDataQuery: "SELECT id, title, state FROM tickets WHERE id = $PRIMARY_KEY",
            publishEndpoint: "/api/v1/tickets/atomic-data")
        let p = try startPipeline(
            schemaSQL: "CREATE TABLE tickets (id integer PRIMARY KEY, title text NOT NULL, state text);",
            tables: [tickets])
        // Stop the worker (it has installed the trigger) so the tracking row can be seen before it is published.
        p.worker.stopAndAssertCleanExit()

        // The application's own writes succeed with the trigger in their path.
        let inserted = try p.database.execute("INSERT INTO tickets (id, title, state) VALUES (7, 'printer jam', NULL)")
        XCTAssertEqual(inserted.affectedRows, 1)
        XCTAssertEqual(try p.database.value("SELECT count(*) FROM tickets WHERE id = 7 AND state IS NULL"), "1")
        let tracked = try p.database.execute("SELECT primary_key, operation::text, change_column_value IS NULL FROM tickets_changes")
        XCTAssertEqual(tracked.rows, [["7", "I", "t"]], "the insert is recorded with a NULL change_column_value")

        try startWorker(table: "tickets", config: p.configURL)
        try waitForRequests(p.ingestor, count: 1)
        try waitUntilTrackingTableIsEmpty(p.database, tickets)

        // NULL to a value and back to NULL are changes too (IS DISTINCT FROM).
        try p.database.execute("UPDATE tickets SET state = 'open' WHERE id = 7")
        try waitForRequests(p.ingestor, count: 2)
        try waitUntilTrackingTableIsEmpty(p.database, tickets)
        let cleared = try p.database.execute("UPDATE tickets SET state = NULL WHERE id = 7")
        XCTAssertEqual(cleared.affectedRows, 1)
        try waitForRequests(p.ingestor, count: 3)
        try waitUntilTrackingTableIsEmpty(p.database, tickets)

        let requests = try p.ingestor.requests()
        XCTAssertEqual(requests.count, 3, "\(requests)")
        assertPayload(requests[0], .init(
            table: tickets, primaryKey: "7", operation: "insert", changeColumnValue: nil,
            atomicData: [["id": 7, "title": "printer jam", "state": nil]], trackingID: 1))
        assertPayload(requests[1], .init(
            table: tickets, primaryKey: "7", operation: "update", changeColumnValue: "open",
            atomicData: [["id": 7, "title": "printer jam", "state": "open"]], trackingID: 2))
        assertPayload(requests[2], .init(
            table: tickets, primaryKey: "7", operation: "update", changeColumnValue: nil,
            atomicData: [["id": 7, "title": "printer jam", "state": nil]], trackingID: 3))
    }
}
