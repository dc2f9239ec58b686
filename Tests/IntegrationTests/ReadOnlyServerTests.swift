import Foundation
import Shared
import XCTest

/// One server of the test's own that stops accepting writes under a running worker, as a primary
/// demoted by a failover tool does.
final class ReadOnlyServerTests: IntegrationTestCase {
    private var supervisor: SupervisorProcess?
    private var singleServer: NetworkPostgresServer?

    override func tearDownWithError() throws {
        if let supervisor, supervisor.process.isRunning { supervisor.process.stop(timeout: 15) }
        singleServer?.stop()
        singleServer = nil
        try super.tearDownWithError()
    }

    private let items = WatchedTable(name: "items", changeColumns: ["v"],
                                     atomicDataQuery: "SELECT id, v FROM items WHERE id = $PRIMARY_KEY",
                                     publishEndpoint: "/api/v1/items")

    /// A primary that stops accepting writes under a running worker (a failover tool demoting it,
    /// here `default_transaction_read_only`): the worker's next write fails with SQLSTATE 25006.
    /// It must count as a lost session (reconnect with backoff, `database: down`), never as a
    /// crash, and publishing must resume by itself once the server accepts writes again.
    func testAServerTurningReadOnly_reconnectsWithBackoff_withoutARestart_andResumesWhenWritable() throws {
        let pg = try NetworkPostgresServer(directory: workDirectory.appendingPathComponent("ro-pg"), listen: "127.0.0.1")
        singleServer = pg
        let admin = try PostgresConnection.connect(ConnectionParameters(pg.localConfig, applicationName: "read-only-test"))
        try admin.executeScript("CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL DEFAULT 0); INSERT INTO items (id) SELECT g FROM generate_series(1, 10) g;")
        let ingestor = try startIngestor()
        var config = ConfigFile.forTests(database: pg.localConfig, ingestorURL: ingestor.baseURL, tables: [items])
        config.service.healthCheckAddress = "127.0.0.1"
        config.service.healthCheckPort = try SupervisorProcess.freePort()
        let s = try SupervisorProcess(configURL: try writeConfig(config), healthPort: config.service.healthCheckPort,
                                      directory: workDirectory, name: "supervisor")
        supervisor = s
        addDiagnostics { s.process.stderrTail() }
        func entry() throws -> JSON? { try s.health().body["components"]?["tables"]?["items"] }
        try waitUntil("the worker leads") { try entry()?["lease"] == "leader" }
        try admin.execute("UPDATE items SET v = 1 WHERE id = 1")
        try waitUntil("the change is published") { try ingestor.requests().contains { $0.body["primary_key"] == "1" } }
        let pid = try XCTUnwrap(try entry()?["pid"]?.int)

        try admin.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        try admin.execute("SELECT pg_reload_conf()")
        try waitUntil(timeout: 20, "the worker reports the database down") { try entry()?["database"] == "down" }
        // Long enough for several reconnect attempts (the lease is renewed every 2 s).
        Thread.sleep(forTimeInterval: 6)
        XCTAssertEqual(try entry()?["pid"]?.int, pid, "the same worker process")
        XCTAssertEqual(try entry()?["restarts"]?.int, 0)
        XCTAssertEqual(try entry()?["database"], "down")
        XCTAssertTrue(s.process.stderrText().contains("accepts no writes"), "the log says why")

        try admin.execute("SET default_transaction_read_only = off")
        try admin.execute("ALTER SYSTEM RESET default_transaction_read_only")
        try admin.execute("SELECT pg_reload_conf()")
        try admin.execute("UPDATE items SET v = 42 WHERE id = 3")
        try waitUntil(timeout: 30, "publishing resumes once the server accepts writes") {
            try ingestor.requests().contains { $0.body["primary_key"] == "3" && $0.body["atomic_data"]?[0]?["v"]?.int == 42 }
        }
        XCTAssertEqual(try entry()?["pid"]?.int, pid)
        XCTAssertEqual(try entry()?["restarts"]?.int, 0)
        XCTAssertEqual(try entry()?["database"], "up")
        XCTAssertEqual(s.unexpectedLogLines(), [])
    }
}
