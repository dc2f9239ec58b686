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
        XCTAssertEqual(try p.database.value("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public.devices'::regclass"), "2", "the capture and TRUNCATE triggers, once")
        second.stopAndAssertCleanExit()
    }

    /// The queue's CHECK on `operation` cost the writers a parse and plan of it at every
    /// captured row. Setup drops the one an older version made when its role owns the tracking
    /// table; a role that does not own it (least privilege, path B) leaves it and still starts.
    func testAnOlderVersionsCheckOnOperation_isDroppedByTheOwner_andLeftAloneByARoleThatDoesNotOwnTheTable() throws {
        let database = try makeDatabase()
        try database.executeScript(try TestTables.devicesSQL())
        let schema = TrackingSchema(table: devices)
        try schema.install(on: database.connection)
        let checks = "SELECT count(*) FROM pg_constraint WHERE conrelid = 'devices_changes'::regclass AND contype = 'c'"
        XCTAssertEqual(try database.count(checks), 0, "a new queue has no CHECK on operation")
        let oldCheck = "ALTER TABLE devices_changes ADD CONSTRAINT devices_changes_operation_check CHECK (operation IN ('I', 'U', 'D', 'B'))"

        // A role that does not own the table: the old CHECK stays, setup succeeds, the trigger stays.
        try database.execute(oldCheck)
        let oid = try XCTUnwrap(try triggerOID(database))
        let role = "adp_nonowner_\(database.name.suffix(8))"
        dropRolesAtTeardown(role)
        try database.executeScript("""
            CREATE ROLE \(role);
            GRANT USAGE ON SCHEMA public TO \(role);
            GRANT SELECT ON public.devices TO \(role);
            GRANT SELECT, INSERT, UPDATE, DELETE ON public.devices_changes, public.devices_changes_failed TO \(role);
            GRANT USAGE ON SEQUENCE public.devices_changes_id_seq TO \(role);
            GRANT SELECT, INSERT, UPDATE ON public.devices_changes_lease TO \(role);
            """)
        try database.execute("SET ROLE \(role)")
        XCTAssertFalse(try schema.install(on: database.connection), "the trigger is already right: left alone")
        try database.execute("RESET ROLE")
        XCTAssertEqual(try database.count(checks), 1, "a role that does not own the queue leaves its CHECK alone")

        // The owner drops it, and nothing else changes.
        XCTAssertFalse(try schema.install(on: database.connection), "the trigger is already right: left alone")
        XCTAssertEqual(try database.count(checks), 0, "the owner drops the old CHECK")
        XCTAssertEqual(try triggerOID(database), oid)
        XCTAssertEqual(try database.count("SELECT count(*) FROM pg_constraint WHERE conrelid = 'devices_changes_failed'::regclass AND contype = 'c'"), 1,
                       "the dead letters keep theirs")
        try database.execute("INSERT INTO devices VALUES (1, 'device 1', 'v1', now())")
        XCTAssertEqual(try database.value("SELECT operation::text FROM devices_changes"), "I")
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
