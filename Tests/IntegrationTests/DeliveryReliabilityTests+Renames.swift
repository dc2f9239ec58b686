import Foundation
import Shared
import XCTest

/// A RENAME COLUMN of the change column and the key column never makes the application's writes
/// fail: the event trigger rewrites the capture function in the ALTER's own transaction, the
/// worker says which configured column is gone, and after the configuration names the new columns
/// and a reload, every change made meanwhile is published.
extension DeliveryReliabilityTests {
    func testRenamingTheChangeAndKeyColumnsUnderAWriter_failsNoApplicationWrite_namesTheColumn_andLosesNothing() throws {
        let database = try makeDatabase()
        try database.executeScript(itemsSQL(keys: 20) + "CREATE SEQUENCE writer_ids START 1000;")
        let ingestor = try startIngestor()
        addDiagnostics { Self.trackingTableSummary(database, self.items) }
        var configURL: URL?
        let supervisor = try startInstance(database, ingestor, table: items, instance: "host-a") { config in
            configURL = self.workDirectory.appendingPathComponent("host-a.toml")
            _ = config
        }
        try waitUntil("the table is published") { try supervisor.health().body["components"]?["tables"]?["items"]?["lease"] == "leader" }

        // The application inserts rows without naming columns, so its statement is the same
        // before and after the renames; before the fix, the trigger itself failed it.
        let writer = BackgroundWriter(database: database.config, name: "rename-writer", rounds: 400, perRound: 3, keys: 20,
                                      pauseMicroseconds: 3_000, statement: "INSERT INTO items VALUES (nextval('writer_ids'), $1)")
        try waitUntil("the writer's first rows are published") { try ingestor.requests().count >= 20 }
        try database.executeScript("BEGIN; ALTER TABLE items RENAME COLUMN v TO v2; ALTER TABLE items RENAME COLUMN id TO key; COMMIT;")
        // Writes naming the new columns, right after the rename committed.
        try database.execute("UPDATE items SET v2 = v2 + 100 WHERE key = 1")
        try database.execute("DELETE FROM items WHERE key = 2")
        try waitUntil(timeout: 60, "the writer finishes") { writer.isDone }
        XCTAssertNil(writer.error, "an application write failed")

        addDiagnostics { "items in /health: \(String(describing: try? supervisor.health().body["components"]?["tables"]?["items"]))" }
        try waitUntil("/health names the renamed columns") {
            let entry = try supervisor.health().body["components"]?["tables"]?["items"]
            let error = entry?["last_error"]?.string ?? ""
            return entry?["state"] == "failed" && error.contains("\"v\" of public.items") && error.contains("\"id\" of public.items") && error.contains("no longer exist")
        }
        XCTAssertTrue(supervisor.process.stderrText().contains("columns that no longer exist"), "the log says so too")

        // The operator names the columns as they are now and reloads.
        var renamed = items
        renamed.primaryKey = "key"
        renamed.changeColumns = ["v2"]
        renamed.atomicDataQuery = "SELECT key, v2 FROM items WHERE key = $PRIMARY_KEY"
        let url = try XCTUnwrap(configURL)
        let text = try String(contentsOf: url, encoding: .utf8)
            .replacingOccurrences(of: "primary_key = \"id\"", with: "primary_key = \"key\"")
            .replacingOccurrences(of: "change_columns = [\"v\"]", with: "change_columns = [\"v2\"]")
            .replacingOccurrences(of: ConfigFile.string(items.atomicDataQuery), with: ConfigFile.string(renamed.atomicDataQuery))
        try text.write(to: url, atomically: true, encoding: .utf8)
        let functionBefore = try database.value("SELECT prosrc FROM pg_proc WHERE oid = 'public.items_changes_capture()'::regprocedure")
        supervisor.process.send(SIGHUP)
        try waitUntilTrackingTableIsEmpty(database, renamed, timeout: 60)
        XCTAssertEqual(try database.value("SELECT prosrc FROM pg_proc WHERE oid = 'public.items_changes_capture()'::regprocedure"), functionBefore,
                       "the event trigger's rewrite is exactly the body setup makes from the new names")

        // Every changed row's last document is its current state; the deleted one's is a delete.
        var last: [String: RecordedRequest] = [:]
        for request in try ingestor.requests() where request.status == 200 {
            if let key = request.body["primary_key"]?.string { last[key] = request }
        }
        // The changed rows: the writer's (keys from 1000) and key 1; keys 3 to 20 were never written.
        let rows = try database.execute("SELECT key::text, v2::text FROM items WHERE key >= 1000 OR key = 1").rows
        XCTAssertEqual(rows.count, 1_201)
        for row in rows {
            let payload = last[row[0]!]
            let value = payload?.body["atomic_data"]?[0]?["v2"] ?? payload?.body["atomic_data"]?[0]?["v"]
            XCTAssertEqual(value, .number(Double(row[1]!)!), "key \(row[0]!): \(String(describing: payload))")
        }
        XCTAssertEqual(last["1"]?.body["atomic_data"]?[0]?["v2"], .number(100), "the update naming the new column was published")
        XCTAssertEqual(last["2"]?.body["operation"], "delete")
    }

    /// Path A without a superuser: setup works, and says that renames are not followed and how to
    /// get the event trigger.
    func testSetupByARoleThatIsNotASuperuser_warnsThatRenamesAreNotFollowed() throws {
        let database = try makeDatabase()
        let role = "adp_owner_\(database.name.suffix(8))"
        dropRolesAtTeardown(role)
        try database.executeScript("""
            CREATE ROLE \(role) LOGIN;
            GRANT CONNECT ON DATABASE \(quoteIdentifier(database.name)) TO \(role);
            GRANT USAGE, CREATE ON SCHEMA public TO \(role);
            \(itemsSQL(keys: 3))
            ALTER TABLE items OWNER TO \(role);
            """)
        var config = ConfigFile.forTests(database: database.config, ingestorURL: "http://127.0.0.1:9", tables: [items])
        config.database.username = role
        let url = try writeConfig(config, name: "owner.toml")
        let setup = try runPublisher(["--config", url.path, "setup"])
        XCTAssertEqual(setup.status, 0, setup.output)
        XCTAssertTrue(setup.output.contains("warning: renaming a column that the capture of public.items names (RENAME COLUMN) would make the application's writes to it fail"), setup.output)
        XCTAssertTrue(setup.output.contains("apply `print-sql` as one"), setup.output)
        XCTAssertEqual(try database.value("SELECT count(*)::text FROM pg_event_trigger WHERE evtname LIKE 'adp_items_%'"), "0")
        // A superuser's setup creates it, and the owner's next setup is quiet.
        XCTAssertEqual(try runPublisher(["--config", try writeConfig(ConfigFile.forTests(database: database.config, ingestorURL: "http://127.0.0.1:9", tables: [items]), name: "superuser.toml").path, "setup"]).status, 0)
        XCTAssertEqual(try database.value("SELECT count(*)::text FROM pg_event_trigger WHERE evtname LIKE 'adp_items_%'"), "1")
        let quiet = try runPublisher(["--config", url.path, "setup"])
        XCTAssertEqual(quiet.status, 0, quiet.output)
        XCTAssertFalse(quiet.output.contains("warning"), quiet.output)
    }
}
