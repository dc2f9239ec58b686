import Foundation
import Shared
import XCTest

/// A worker's start-up setup is idempotent: a trigger that is already right is left alone, so a
/// restart opens no window in which a change could be missed.
final class SetupIdempotencyTests: IntegrationTestCase {
    private let devices = TestTables.devices

    private func triggerOID(_ db: TestDatabase) throws -> String? {
        try db.value("""
            SELECT oid::text FROM pg_trigger
            WHERE tgrelid = 'public.devices'::regclass AND tgname = 'atomic_data_publisher_capture'
            """)
    }

    func testSecondWorkerOnTheSameTable_keepsTheTriggerAndLosesNothing() throws {
        let p = try startPipeline(schemaSQL: try TestTables.devicesSQL(), tables: [devices])
        let oid = try XCTUnwrap(try triggerOID(p.database), "the first worker must have created the trigger")
        try p.database.execute("INSERT INTO devices VALUES (1, 'device 1', 'v1', '2026-11-28 10:00:00+00')")
        try waitForRequests(p.ingestor, count: 1)
        try waitUntilTrackingTableIsEmpty(p.database, devices)
        p.worker.stopAndAssertCleanExit()

        // While no worker runs, changes queue up in the tracking table.
        try p.database.execute("""
            INSERT INTO devices SELECT g, 'device ' || g, 'v1', '2026-11-28 10:00:00+00' FROM generate_series(2, 51) g
            """)
        XCTAssertEqual(try p.database.rowCount("devices_changes"), 50)

        // More changes are committed one by one while the second worker starts and runs its setup.
        let writerConfig = p.database.config
        let writerDone = DispatchSemaphore(value: 0)
        let writerError = LockedBox<String?>(nil)
        let writer = Thread {
            defer { writerDone.signal() }
            do {
                let connection = try PostgresConnection.connect(ConnectionParameters(writerConfig, applicationName: "adp-it-writer"))
                defer { connection.close() }
                for id in 52...251 {
                    try connection.execute("INSERT INTO devices VALUES ($1, $2, 'v1', '2026-11-28 10:00:00+00')", [String(id), "device \(id)"])
                }
            } catch {
                writerError.value = "\(error)"
            }
        }
        writer.start()
        let second = try startWorker(table: "devices", config: p.configURL)
        XCTAssertEqual(writerDone.wait(timeout: .now() + 60), .success, "the writer did not finish")
        XCTAssertNil(writerError.value, "the application's inserts must not fail while a worker sets up")

        XCTAssertEqual(try triggerOID(p.database), oid, "the second worker must not drop and recreate a trigger that is already right")
        try waitUntil("all 251 devices are published and devices_changes is empty") {
            let keys = Set(try p.ingestor.requests().compactMap { $0.body["primary_key"]?.string })
            let queued = try p.database.rowCount("devices_changes")
            return keys.count == 251 && queued == 0
        }
        let requests = try p.ingestor.requests()
        XCTAssertEqual(Set(requests.compactMap { $0.body["primary_key"]?.string }), Set((1...251).map(String.init)))
        for request in requests {
            let key = request.body["primary_key"]?.string ?? "?"
            XCTAssertEqual(request.body["operation"], "insert", "\(request)")
            XCTAssertEqual(request.body["atomic_data"],
                           [["id": .number(Double(key) ?? -1), "name": .string("device \(key)"), "firmware": "v1", "updated_at": "2026-11-28T10:00:00+00:00"]],
                           "\(request)")
        }
        XCTAssertEqual(requests.count, 251, "one payload per inserted device: \(requests.count) received")
        XCTAssertEqual(try p.database.value("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public.devices'::regclass"), "1")
        second.stopAndAssertCleanExit()
    }

    func testRestartOnAMixedCaseTableInAnotherSchema_keepsTheTrigger() throws {
        let table = WatchedTable(
            name: "Devices", schema: "inventory", changeColumns: ["Revision"],
            atomicDataQuery: #"SELECT id, "Revision" FROM inventory."Devices" WHERE id = $PRIMARY_KEY"#,
            publishEndpoint: "/api/v1/inventory/devices")
        let p = try startPipeline(schemaSQL: #"""
            CREATE SCHEMA inventory;
            CREATE TABLE inventory."Devices" (id integer PRIMARY KEY, "Revision" integer NOT NULL);
            """#, tables: [table])
        let triggerSQL = """
            SELECT oid::text FROM pg_trigger
            WHERE tgrelid = 'inventory."Devices"'::regclass AND tgname = 'atomic_data_publisher_capture'
            """
        let oid = try XCTUnwrap(try p.database.value(triggerSQL), "the first worker must have created the trigger")
        p.worker.stopAndAssertCleanExit()

        try startWorker(table: "Devices", config: p.configURL)
        XCTAssertEqual(try p.database.value(triggerSQL), oid, "the second worker must not drop and recreate a trigger that is already right")

        try p.database.execute(#"INSERT INTO inventory."Devices" VALUES (1, 7)"#)
        try waitForRequests(p.ingestor, count: 1)
        try waitUntilTrackingTableIsEmpty(p.database, table)
        let requests = try p.ingestor.requests()
        XCTAssertEqual(requests.count, 1, "\(requests)")
        assertPayload(requests[0], .init(table: table, primaryKey: "1", operation: "insert", changeColumnValue: "7",
                                         atomicData: [["id": 1, "Revision": 7]], trackingID: 1))
    }
}
