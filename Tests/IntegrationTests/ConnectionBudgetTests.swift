import Foundation
import Shared
import Synchronization
import XCTest

/// `database.max_connections` caps the sessions of the whole instance, read-ahead sessions
/// included, on a server of the test's own with little room: the service never holds more than its
/// budget while 30 tables drain at once, delivers every change, and the application's own role can
/// connect and write throughout.
final class ConnectionBudgetTests: IntegrationTestCase {
    private var supervisors: [SupervisorProcess] = []
    private var postgres: NetworkPostgresServer?

    override func tearDownWithError() throws {
        for supervisor in supervisors where supervisor.process.isRunning { supervisor.process.stop(timeout: 15) }
        supervisors.removeAll()
        try super.tearDownWithError()
        postgres?.stop()
        postgres = nil
    }

    func testThirtyTablesUnderABudgetOf35_onAServerOf50_neverHoldMoreThan35_deliverEverything_andLeaveTheApplicationRoom() throws {
        try drainUnderBudget(tableCount: 30, walTables: 0, budget: 35)
    }

    /// A WAL-mode table's worker also holds its stream's two sessions (the WAL sender and the key
    /// writer): the budget counts them before any read-ahead session is handed out.
    func testSixTablesOneOfThemInWALMode_underABudgetOf10_neverHoldMoreThan10_deliverEverything() throws {
        try drainUnderBudget(tableCount: 6, walTables: 1, budget: 10)
    }

    /// The first `walTables` tables have `capture = "wal"`.
    private func drainUnderBudget(tableCount: Int, walTables: Int, budget: Int, file: StaticString = #filePath, line: UInt = #line) throws {
        let keys = 200, serverMax = 50
        let settings = "max_connections = \(serverMax)" + (walTables > 0 ? "\nwal_level = logical" : "")
        let server = try NetworkPostgresServer(directory: workDirectory.appendingPathComponent("pg"), listen: "127.0.0.1", settings: settings)
        postgres = server
        // The server's superuser, over its socket: sets up, samples, and always finds a reserved slot.
        let admin = try PostgresConnection.connect(ConnectionParameters(server.localConfig, applicationName: "budget-test-admin"))
        defer { admin.close() }
        try admin.executeScript("CREATE ROLE adp LOGIN\(walTables > 0 ? " REPLICATION" : ""); CREATE ROLE app LOGIN;")
        try admin.execute("CREATE DATABASE budget OWNER adp")
        var superuser = server.localConfig
        superuser.databaseName = "budget"
        let setup = try PostgresConnection.connect(ConnectionParameters(superuser, applicationName: "budget-test-setup"))
        let names = (0..<tableCount).map { String(format: "t%02d", $0) }
        try setup.executeScript("SET ROLE adp;\n"
            + names.map { "CREATE TABLE \($0) (id integer PRIMARY KEY, v integer NOT NULL);" }.joined(separator: "\n")
            + "\nCREATE TABLE app_log (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now());"
            + "\nGRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO app; GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO app;")

        func tcp(_ role: String) -> DatabaseConfig {
            var config = DatabaseConfig()
            config.host = "127.0.0.1"
            config.port = server.port
            config.username = role
            config.databaseName = "budget"
            config.sslmode = "disable"
            return config
        }
        let ingestor = try startIngestor()
        try ingestor.setControl(["delay": 0.05])  // batches take long enough to be read ahead
        let tables = names.enumerated().map { index, name in
            var table = WatchedTable(name: name, changeColumns: ["v"], atomicDataQuery: "SELECT id, v FROM \(name) WHERE id = $PRIMARY_KEY",
                                     publishEndpoint: "/api/v1/\(name)")
            if index < walTables { table.capture = .wal }
            return table
        }
        var config = ConfigFile.forTests(database: tcp("adp"), ingestorURL: ingestor.baseURL, tables: tables)
        config.database.maxConnections = budget
        config.service.batchSize = 10
        config.service.instanceId = "budget"
        config.service.healthCheckAddress = "127.0.0.1"
        config.service.healthCheckPort = try SupervisorProcess.freePort()
        config.logging.level = "info"
        let configURL = try writeConfig(config)

        // Sampling from here on: the service's sessions (its role's), its read-ahead sessions, and
        // an application that opens a new session for every write, 10 a second.
        let sampler = SessionSampler(admin: superuser, application: tcp("app"))
        defer { sampler.stop() }

        let supervisor = try SupervisorProcess(configURL: configURL, healthPort: config.service.healthCheckPort, directory: workDirectory, name: "supervisor")
        supervisors.append(supervisor)
        try waitUntil(timeout: 90, "all \(tableCount) workers run with their database up", file: file, line: line) {
            let tables = try supervisor.health().body["components"]?["tables"]?.object ?? [:]
            return tables.count == tableCount && tables.values.allSatisfy { $0["state"] == "running" && $0["database"] == "up" }
        }

        // The application's role writes every change: \(keys) inserts then one update per key, per table.
        let app = try PostgresConnection.connect(ConnectionParameters(tcp("app"), applicationName: "budget-test-app"))
        defer { app.close() }
        for name in names { try app.execute("INSERT INTO \(name) (id, v) SELECT g, 0 FROM generate_series(1, \(keys)) g") }
        for name in names { try app.execute("UPDATE \(name) SET v = 1") }

        let pending = names.map { "(SELECT count(*) FROM \($0)_changes)" }.joined(separator: " + ")
        if walTables > 0 {
            try waitUntil(timeout: 60, "the WAL tables' slots are streamed", file: file, line: line) {
                try admin.execute("SELECT count(*) FROM pg_replication_slots WHERE active AND database = 'budget'")[0, 0] == String(walTables)
            }
        }
        try waitUntil(timeout: 300, "every tracking table is empty", file: file, line: line) {
            try setup.execute("SELECT \(pending)")[0, 0] == "0"
        }
        sampler.stop()
        let seen = sampler.results

        // Every change delivered: each key's last payload carries its final value.
        var last: [String: Int] = [:]
        for request in try ingestor.requests() where request.status == 200 {
            guard let table = request.body["table_name"]?.string, let key = request.body["primary_key"]?.string,
                  let v = request.body["atomic_data"]?[0]?["v"]?.int else { continue }
            last["\(table)/\(key)"] = v
        }
        XCTAssertEqual(last.count, tableCount * keys, "every key of every table was published", file: file, line: line)
        XCTAssertTrue(last.values.allSatisfy { $0 == 1 }, "every key's last payload carries v = 1", file: file, line: line)
        XCTAssertEqual(try setup.execute("SELECT \(names.map { "(SELECT count(*) FROM \($0)_changes_failed)" }.joined(separator: " + "))")[0, 0], "0", file: file, line: line)

        XCTAssertGreaterThan(seen.samples, 50, "sampled throughout the drain", file: file, line: line)
        XCTAssertLessThanOrEqual(seen.peak, budget, "the instance never held more sessions than database.max_connections (WAL senders included)", file: file, line: line)
        XCTAssertGreaterThan(seen.readersPeak, 0, "the spare sessions were used to read ahead", file: file, line: line)
        XCTAssertLessThanOrEqual(seen.readersPeak, budget - tableCount - 2 * walTables, "read-ahead sessions stayed within the spare ones", file: file, line: line)
        XCTAssertGreaterThan(seen.applicationWrites, 20, "the application wrote throughout", file: file, line: line)
        XCTAssertEqual(seen.applicationFailures, [], "the application's role could always connect and write", file: file, line: line)
        print("ConnectionBudgetTests: \(tableCount) tables (\(walTables) in WAL mode), database.max_connections = \(budget), server max_connections = \(serverMax): peak \(seen.peak) sessions of the service (\(seen.readersPeak) reading ahead) over \(seen.samples) samples; the application connected and wrote \(seen.applicationWrites) times, \(seen.applicationFailures.count) failed")
        XCTAssertEqual(supervisor.process.stop(timeout: 15), .exited(0), file: file, line: line)
        XCTAssertEqual(supervisor.unexpectedLogLines(), [], file: file, line: line)
    }

    func testAWorkerTheServerRefuses_saysWhyInHealthAndReadyz_keepsTrying_isNotRestarted_andConnectsOnceThereIsRoom() throws {
        let server = try NetworkPostgresServer(directory: workDirectory.appendingPathComponent("pg"), listen: "127.0.0.1")
        postgres = server
        let admin = try PostgresConnection.connect(ConnectionParameters(server.localConfig, applicationName: "budget-test-admin"))
        defer { admin.close() }
        // Room for two of the three workers: the role's own limit.
        try admin.executeScript("CREATE ROLE adp LOGIN CONNECTION LIMIT 2;")
        try admin.execute("CREATE DATABASE budget OWNER adp")
        var superuser = server.localConfig
        superuser.databaseName = "budget"
        let setup = try PostgresConnection.connect(ConnectionParameters(superuser, applicationName: "budget-test-setup"))
        defer { setup.close() }
        let names = ["a", "b", "c"]
        try setup.executeScript("SET ROLE adp;\n" + names.map { "CREATE TABLE \($0) (id integer PRIMARY KEY, v integer NOT NULL);" }.joined(separator: "\n"))

        var database = DatabaseConfig()
        database.host = "127.0.0.1"
        database.port = server.port
        database.username = "adp"
        database.databaseName = "budget"
        database.sslmode = "disable"
        let ingestor = try startIngestor()
        let tables = names.map { WatchedTable(name: $0, changeColumns: ["v"], atomicDataQuery: "SELECT id, v FROM \($0) WHERE id = $PRIMARY_KEY",
                                              publishEndpoint: "/api/v1/\($0)") }
        var config = ConfigFile.forTests(database: database, ingestorURL: ingestor.baseURL, tables: tables)
        config.database.maxConnections = 3
        config.service.healthCheckAddress = "127.0.0.1"
        config.service.healthCheckPort = try SupervisorProcess.freePort()
        config.logging.level = "info"
        let configURL = try writeConfig(config)

        // check-config sees the shortage before anything starts: a warning with the figures, exit 0.
        let check = try ManagedProcess(name: "check-config", executable: try TestEnvironment.binary(named: "atomic-data-publisher"),
                                       arguments: ["--config", configURL.path, "check-config"], environment: [:],
                                       workingDirectory: workDirectory, logDirectory: workDirectory)
        XCTAssertEqual(check.waitForExit(timeout: 30), .exited(0))
        let output = check.stdoutLines().joined(separator: "\n")
        XCTAssertTrue(output.contains("warning: this instance may open up to 3 PostgreSQL sessions (3 workers, database.max_connections = 3) but only 2 are free for role adp (server max_connections 50, 3 reserved for superusers, "), output)
        XCTAssertTrue(output.contains("; role CONNECTION LIMIT 2 with 0 in use): not even one session per worker fits, so 1 of the 3 workers would wait for a session"), output)

        let supervisor = try SupervisorProcess(configURL: configURL, healthPort: config.service.healthCheckPort,
                                               directory: workDirectory, name: "supervisor")
        supervisors.append(supervisor)

        var refused = ""
        var problem = ""
        try waitUntil(timeout: 30, "two workers run and the third reports the refusal in /health") {
            let tables = try supervisor.health().body["components"]?["tables"]?.object ?? [:]
            guard tables.values.filter({ $0["state"] == "running" }).count == 2,
                  let entry = tables.first(where: { $0.value["database_problem"] != nil }) else { return false }
            refused = entry.key
            problem = entry.value["database_problem"]?.string ?? ""
            return true
        }
        XCTAssertTrue(problem.contains("SQLSTATE 53300"), problem)
        XCTAssertTrue(problem.contains("the role adp has reached its CONNECTION LIMIT"), problem)
        XCTAssertTrue(problem.contains("this instance may hold 3 sessions for its 3 workers (database.max_connections = 3)"), problem)
        XCTAssertTrue(problem.contains("raise the server's max_connections"), problem)
        let readyz = try supervisor.get("/readyz")
        XCTAssertEqual(readyz.status, 503)
        let reason = try JSON(parsing: Data(readyz.body))["reason"]?.string ?? ""
        XCTAssertEqual(reason, "table \(refused): \(problem)")

        // It keeps trying for longer than the stall limit, and is never restarted for it.
        let pid = try supervisor.health().body["components"]?["tables"]?[refused]?["pid"]?.int
        XCTAssertNotNil(pid)
        Thread.sleep(forTimeInterval: WorkerMessage.stallSeconds + 2)
        let entry = try supervisor.health().body["components"]?["tables"]?[refused]
        XCTAssertEqual(entry?["pid"]?.int, pid, "the same worker process")
        XCTAssertEqual(entry?["restarts"]?.int, 0)
        XCTAssertNotNil(entry?["database_problem"]?.string)

        try admin.execute("ALTER ROLE adp CONNECTION LIMIT 3")
        try waitUntil(timeout: 60, "the refused worker connects once there is room, and /readyz is ready") {
            let entry = try supervisor.health().body["components"]?["tables"]?[refused]
            let ready = try supervisor.get("/readyz").status == 200
            return entry?["state"] == "running" && entry?["database_problem"] == nil && ready
        }
        try setup.execute("INSERT INTO \(refused) (id, v) VALUES (1, 7)")
        try waitUntil("its change is delivered") {
            try ingestor.requests().contains { $0.body["table_name"]?.string == refused && $0.body["atomic_data"]?[0]?["v"]?.int == 7 }
        }
        XCTAssertEqual(supervisor.process.stop(timeout: 15), .exited(0))
        XCTAssertEqual(supervisor.unexpectedLogLines(), [])
    }
}

/// On two threads of its own: counts the service's sessions in pg_stat_activity every 20 ms, and
/// opens a new session as the application's role every 100 ms to insert a row.
private final class SessionSampler: Sendable {
    struct Results: Sendable {
        var samples = 0
        var peak = 0
        var readersPeak = 0
        var applicationWrites = 0
        var applicationFailures: [String] = []
    }

    private let state = Mutex<(stopped: Bool, results: Results)>((false, Results()))
    private let finished = DispatchGroup()

    init(admin: DatabaseConfig, application: DatabaseConfig) {
        finished.enter()
        Thread { [self] in
            defer { finished.leave() }
            guard let db = try? PostgresConnection.connect(ConnectionParameters(admin, applicationName: "budget-test-sampler")) else {
                state.withLock { $0.results.applicationFailures.append("the sampler cannot connect") }
                return
            }
            defer { db.close() }
            while !state.withLock({ $0.stopped }) {
                if let row = try? db.execute("""
                    SELECT count(*), count(*) FILTER (WHERE application_name LIKE 'atomic-data-publisher-reader/%')
                    FROM pg_stat_activity WHERE usename = 'adp'
                    """).rows.first, let all = Int(row[0] ?? ""), let readers = Int(row[1] ?? "") {
                    state.withLock {
                        $0.results.samples += 1
                        $0.results.peak = max($0.results.peak, all)
                        $0.results.readersPeak = max($0.results.readersPeak, readers)
                    }
                }
                usleep(20_000)
            }
        }.start()
        finished.enter()
        Thread { [self] in
            defer { finished.leave() }
            while !state.withLock({ $0.stopped }) {
                do {
                    let db = try PostgresConnection.connect(ConnectionParameters(application, applicationName: "budget-test-application"))
                    defer { db.close() }
                    try db.execute("INSERT INTO app_log DEFAULT VALUES")
                    state.withLock { $0.results.applicationWrites += 1 }
                } catch {
                    state.withLock { $0.results.applicationFailures.append("\(error)") }
                }
                usleep(100_000)
            }
        }.start()
    }

    func stop() {
        state.withLock { $0.stopped = true }
        finished.wait()
    }

    var results: Results { state.withLock { $0.results } }
}
