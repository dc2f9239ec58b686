import Foundation
import Shared
import XCTest

/// Failure modes found by hostile probing: a lost privilege, a nullable key, a dropped
/// tracking table, ids after a recreation. Real PostgreSQL (a non-superuser role for the grant),
/// real worker processes, a real ingestor.
final class HostileProbeTests: IntegrationTestCase {
    private let items = WatchedTable(name: "items", changeColumns: ["v"],
                                     atomicDataQuery: "SELECT id, v FROM items WHERE id = $PRIMARY_KEY",
                                     publishEndpoint: "/api/v1/items")
    private let itemsSQL = "CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL DEFAULT 0); INSERT INTO items (id) SELECT g FROM generate_series(1, 5) g;"

    /// REVOKE SELECT at runtime used to make every key fail permanently (42501) until all were
    /// dead letters while /health stayed green. Now the table pauses, keeps its changes, reports
    /// the problem with the fix, and resumes by itself once the grant is back.
    func testARevokedGrant_pausesTheTable_keepsEveryChange_reportsIt_andResumesOnceGranted() throws {
        let database = try makeDatabase()
        try database.executeScript(itemsSQL)
        try TrackingSchema(table: items).install(on: try PostgresConnection.connect(ConnectionParameters(database.config, applicationName: "test")))
        let role = "adp_svc_\(database.name.suffix(8))"
        dropRolesAtTeardown(role)
        try database.executeScript("""
            CREATE ROLE \(role) LOGIN;
            GRANT CONNECT ON DATABASE \(quoteIdentifier(database.name)) TO \(role);
            GRANT USAGE ON SCHEMA public TO \(role);
            GRANT SELECT ON items TO \(role);
            GRANT SELECT, INSERT, UPDATE, DELETE ON items_changes, items_changes_failed TO \(role);
            GRANT USAGE ON SEQUENCE items_changes_id_seq TO \(role);
            GRANT SELECT, INSERT, UPDATE ON items_changes_lease TO \(role);
            """)
        let ingestor = try startIngestor()
        var config = ConfigFile.forTests(database: database.config, ingestorURL: ingestor.baseURL, tables: [items])
        config.database.username = role
        config.service.deadLetterAfterAttempts = 1  // before: the first 42501 dead-lettered the key
        let worker = try startWorker(table: "items", config: try writeConfig(config))
        worker.expectedErrorLogs = ["table cannot be published"]
        try database.execute("REVOKE SELECT ON items FROM \(role)")
        try database.execute("UPDATE items SET v = 7 WHERE id IN (1, 2)")
        try waitUntil("the worker reports the table problem") {
            (worker.latestStats()?["table_problem"]?.string ?? "").contains("42501")
        }
        let problem = worker.latestStats()?["table_problem"]?.string ?? ""
        print("revoked grant: \(problem)")
        XCTAssertTrue(problem.contains("grant the database user SELECT"), problem)
        XCTAssertEqual(try database.count("SELECT count(*) FROM items_changes WHERE attempts = 0 AND permanent_failures = 0"), 2, "the changes are kept, untouched")
        XCTAssertEqual(try database.rowCount("items_changes_failed"), 0, "nothing is dead-lettered")
        XCTAssertEqual(try ingestor.requests().count, 0)
        try database.execute("GRANT SELECT ON items TO \(role)")
        try waitUntilTrackingTableIsEmpty(database, items)
        XCTAssertEqual(try ingestor.requests().filter { $0.status == 200 }.count, 2)
        try waitUntil("the problem is cleared") { worker.latestStats()?["table_problem"] == nil }
        XCTAssertTrue(worker.process.stderrText().contains("table can be published again"))
    }

    /// A column the atomic data query reads is dropped while the worker runs, and then its session
    /// is lost. A reconnect prepares the query again, which now fails: that used to end the worker
    /// with 78 (the table marked failed, never resuming). It is the same table problem a batch
    /// meets: the table pauses, keeps its changes, and resumes once the column is back.
    func testADroppedQueryColumn_thenALostSession_keepsTheTablePaused_andResumesOnceRestored() throws {
        let database = try makeDatabase()
        try database.executeScript("CREATE TABLE notes (id int PRIMARY KEY, v int NOT NULL DEFAULT 0, note text); INSERT INTO notes (id) SELECT g FROM generate_series(1, 3) g;")
        let notes = WatchedTable(name: "notes", changeColumns: ["v"], atomicDataQuery: "SELECT id, v, note FROM notes WHERE id = $PRIMARY_KEY",
                                 publishEndpoint: "/api/v1/notes")
        let ingestor = try startIngestor()
        let config = ConfigFile.forTests(database: database.config, ingestorURL: ingestor.baseURL, tables: [notes])
        let worker = try startWorker(table: "notes", config: try writeConfig(config))
        worker.expectedErrorLogs = ["table cannot be published"]
        try database.execute("ALTER TABLE notes DROP COLUMN note")
        try database.execute("UPDATE notes SET v = 1 WHERE id = 1")
        try waitUntil("the worker reports the table problem") { (worker.latestStats()?["table_problem"]?.string ?? "").contains("42703") }
        try database.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE 'atomic-data-publisher/notes@%'")
        let cutAt = Date()
        // The reconnect's PREPARE fails now; two tries (every 5 s) later the worker still runs.
        try waitUntil(timeout: 20, "11 s after the session was lost") { Date().timeIntervalSince(cutAt) > 11 || worker.process.termination != nil }
        XCTAssertNil(worker.process.termination, "the worker still runs: \(worker.process.stderrText().suffix(2000))")
        XCTAssertEqual((worker.latestStats()?["table_problem"]?.string ?? "").contains("42703"), true)
        try database.execute("ALTER TABLE notes ADD COLUMN note text")
        try waitUntilTrackingTableIsEmpty(database, notes)
        XCTAssertTrue(worker.process.stderrText().contains("database connection restored"))
        XCTAssertEqual(try ingestor.requests().filter { $0.status == 200 }.count, 1)
    }

    /// A key column that may be NULL used to be accepted; then the application's INSERT of a NULL
    /// key failed in our trigger (tracking primary_key is NOT NULL) and its statement rolled back.
    func testANullableKeyColumn_isRefusedBeforeAnyTriggerIsInstalled_namingTheKey() throws {
        let database = try makeDatabase()
        try database.executeScript("CREATE TABLE loose (code text, v int)")
        let loose = WatchedTable(name: "loose", primaryKey: "code", changeColumns: ["v"],
                                 atomicDataQuery: "SELECT code, v FROM loose WHERE code = $PRIMARY_KEY", publishEndpoint: "/api/v1/loose")
        let config = ConfigFile.forTests(database: database.config, ingestorURL: "http://127.0.0.1:9", tables: [loose])
        let url = try writeConfig(config)
        let check = try ManagedProcess(name: "check-config", executable: try TestEnvironment.binary(named: "atomic-data-publisher"),
                                       arguments: ["--config", url.path, "check-config"], workingDirectory: workDirectory, logDirectory: workDirectory)
        XCTAssertEqual(check.waitForExit(timeout: 30), .exited(78))
        let output = check.stdoutLines().joined(separator: "\n") + check.stderrText()
        XCTAssertTrue(output.contains("primary_key \"code\" of public.loose must be declared NOT NULL and unique"), output)
        let worker = try startWorkerWithoutWaiting(table: "loose", config: url)
        worker.expectedErrorLogs = ["must be declared NOT NULL and unique"]
        XCTAssertEqual(worker.process.waitForExit(timeout: 30), .exited(78))
        XCTAssertFalse(try database.tableExists("loose_changes"), "nothing was created")
        try database.execute("INSERT INTO loose (code, v) VALUES (NULL, 1)")  // the application's write still works
    }

    /// Dropping the tracking table used to make every application write fail until someone
    /// reloaded; and a recreated table's ids start at 1 again, so payload ids repeated. Now the
    /// worker recreates it at once, says so, and the ids carry a new epoch.
    func testADroppedTrackingTable_isRecreatedAtOnce_andPayloadIdsDoNotRepeat() throws {
        let p = try startPipeline(schemaSQL: itemsSQL, tables: [items])
        p.worker.expectedErrorLogs = ["was dropped while the service ran"]
        try p.database.execute("UPDATE items SET v = 1 WHERE id = 1")
        let first = try waitForRequests(p.ingestor, count: 1)[0]
        let firstID = first.body["id"]?.string ?? ""
        try waitUntilTrackingTableIsEmpty(p.database, items)
        try p.database.execute("DROP TABLE items_changes")
        let droppedAt = Date()
        var failedWrites = 0
        try waitUntil(timeout: 15, "the application's writes work again") {
            do {
                try p.database.execute("UPDATE items SET v = 2 WHERE id = 1")
                return true
            } catch {
                failedWrites += 1
                Thread.sleep(forTimeInterval: 0.05)
                return false
            }
        }
        print("dropped tracking table: writes worked again after \(String(format: "%.2f", Date().timeIntervalSince(droppedAt))) s (\(failedWrites) failed writes)")
        let second = try waitForRequests(p.ingestor, count: 2)[1]
        let secondID = second.body["id"]?.string ?? ""
        XCTAssertEqual(second.body["atomic_data"]?[0]?["v"], 2)
        XCTAssertNotEqual(firstID, secondID)
        XCTAssertEqual(firstID.split(separator: ":").last, secondID.split(separator: ":").last, "the new table's ids start at 1 again")
        XCTAssertNotEqual(firstID.split(separator: ":")[1], secondID.split(separator: ":")[1], "a new epoch: ids never repeat")
        XCTAssertTrue(p.worker.process.isRunning)
        XCTAssertTrue(p.worker.process.stderrText().contains("was dropped while the service ran: recreated it"), p.worker.diagnostics())
    }
}
