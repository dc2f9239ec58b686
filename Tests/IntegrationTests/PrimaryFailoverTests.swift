import Foundation
import Shared
import Synchronization
import XCTest

/// A primary and its streaming standby in `database.host`, in either order, with no
/// target_session_attrs configured (several hosts: read-write by default). Mid-stream the primary
/// is stopped (immediate, as in a crash) and the standby promoted; the application's writer goes
/// on against the new primary. Publishing must resume within seconds of the promotion, every
/// key's final state must arrive, and no key may go backwards. The gap (last request before the
/// stop, first after the promotion) is printed.
final class PrimaryFailoverTests: IntegrationTestCase {
    private var servers: ReplicatedPostgresServers?
    private var supervisor: SupervisorProcess?
    private var writer: FailoverWriter?

    override func tearDownWithError() throws {
        writer?.stop()
        if let supervisor, supervisor.process.isRunning { supervisor.process.stop(timeout: 15) }
        servers = nil
        try super.tearDownWithError()
    }

    private let items = WatchedTable(name: "items", changeColumns: ["v"],
                                     atomicDataQuery: "SELECT id, v FROM items WHERE id = $PRIMARY_KEY",
                                     publishEndpoint: "/api/v1/items")

    func testFailover_primaryListedFirst_publishingResumesOnThePromotedStandby_nothingLost_noKeyBackwards() throws {
        try failover(standbyFirst: false)
    }

    /// Before target_session_attrs, libpq kept the first server that answered: the standby, where
    /// the worker could not set up and published nothing although the primary was up.
    func testFailover_standbyListedFirst_theServicePublishesFromThePrimary_thenFromThePromotedStandby() throws {
        try failover(standbyFirst: true)
    }

    /// WAL capture across a primary failover, on PostgreSQL 17 and later: setup creates the slot
    /// with `failover = true`, the standby keeps a synchronised copy, and after the promotion the
    /// worker continues that slot on the new primary: no gap, no "slot missing", no backfill.
    /// (On 15 and 16 a promotion loses the slot; docs/database.md says what to do then.)
    func testFailover_walCapture_postgreSQL18_theSlotSurvivesThePromotion_nothingLost_noKeyBackwards() throws {
        guard let bin = ProcessInfo.processInfo.environment["ADP_TEST_PG18_BIN"] else {
            if ProcessInfo.processInfo.environment["CI"] != nil { XCTFail("ADP_TEST_PG18_BIN is not set: dev/test fetches PostgreSQL 18 (adp_pg18_bindir)"); return }
            throw XCTSkip("needs PostgreSQL 18: ADP_TEST_PG18_BIN=$(source dev/lib/common.sh; adp_pg18_bindir)")
        }
        let pair = try ReplicatedPostgresServers(directory: workDirectory.appendingPathComponent("pg"), bin: URL(fileURLWithPath: bin), logicalFailoverSlots: true)
        try failover(standbyFirst: false, capture: .wal, pair: pair)
    }

    private func failover(standbyFirst: Bool, capture: CaptureMode = .trigger, pair given: ReplicatedPostgresServers? = nil,
                          file: StaticString = #filePath, line: UInt = #line) throws {
        let order = (standbyFirst ? "standby first" : "primary first") + (capture == .wal ? ", WAL capture" : "")
        let pair = try given ?? ReplicatedPostgresServers(directory: workDirectory.appendingPathComponent("pg"))
        servers = pair
        addDiagnostics { pair.logTail("primary") + "\n" + pair.logTail("standby") }
        let keys = 100
        let primary = try pair.connect(port: pair.primaryPort)
        try primary.executeScript("CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL DEFAULT 0); INSERT INTO items (id) SELECT g FROM generate_series(1, \(keys)) g;")
        primary.close()
        let ingestor = try startIngestor()

        let ports = standbyFirst ? [pair.standbyPort, pair.primaryPort] : [pair.primaryPort, pair.standbyPort]
        var table = items
        table.capture = capture
        var config = ConfigFile.forTests(database: pair.config(ports: ports), ingestorURL: ingestor.baseURL, tables: [table])
        XCTAssertEqual(config.database.targetSessionAttrs, "", "the default is under test")
        config.service.healthCheckAddress = "127.0.0.1"
        config.service.leaseFenceSeconds = -1  // automatic, as in production: a reconnect must not wait for it
        config.service.healthCheckPort = try SupervisorProcess.freePort()
        let s = try SupervisorProcess(configURL: try writeConfig(config), healthPort: config.service.healthCheckPort,
                                      directory: workDirectory, name: "supervisor")
        supervisor = s
        addDiagnostics { s.process.stderrTail(lines: 80) }

        // The application: a stream of increments through the failover, against whichever server
        // is the primary (the same host list, read-write).
        let w = FailoverWriter(database: pair.config(ports: ports), keys: keys)
        writer = w
        try waitUntil(timeout: 30, "the service publishes (\(order))", file: file, line: line) { try ingestor.requests().count >= 100 }
        if capture == .wal {
            let standby = try pair.connect(port: pair.standbyPort)
            defer { standby.close() }
            try waitUntil(timeout: 90, "the standby holds a synchronised copy of the slot", file: file, line: line) {
                try standby.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'adp_items_%' AND synced AND NOT temporary AND failover")[0, 0] == "1"
            }
        }

        let stoppedAt = Date()
        try pair.stopPrimary()
        // A failover tool notices and promotes after a moment.
        Thread.sleep(forTimeInterval: 1)
        try pair.promoteStandby()
        let promotedAt = Date()
        let committedAtPromotion = w.commits
        addDiagnostics {
            guard let db = try? pair.connect(port: pair.standbyPort) else { return "--- the promoted standby is unreachable ---" }
            defer { db.close() }
            let total = (try? db.execute("SELECT count(*) FROM items_changes")[0, 0]) ?? "?"
            let rows = (try? db.execute("SELECT id, primary_key, attempts, coalesce(last_error, ''), next_attempt_at::text FROM items_changes ORDER BY id LIMIT 10").rows) ?? []
            return "--- items_changes on the promoted standby: \(total) row(s) (id | key | attempts | last_error | next_attempt_at) ---\n"
                + rows.map { "  " + $0.map { $0 ?? "NULL" }.joined(separator: " | ") }.joined(separator: "\n")
        }
        try waitUntil(timeout: 60, "publishing resumes after the promotion (\(order))", file: file, line: line) {
            try self.arrivals(ingestor).contains { $0 > promotedAt.timeIntervalSince1970 }
        }
        try waitUntil(timeout: 60, "the writer commits on the new primary", file: file, line: line) { w.commits >= committedAtPromotion + 100 }
        w.stop()
        writer = nil

        let times = try arrivals(ingestor)
        let lastBefore = times.filter { $0 < stoppedAt.timeIntervalSince1970 }.max() ?? 0
        let firstAfter = times.filter { $0 > promotedAt.timeIntervalSince1970 }.min() ?? .infinity
        print(String(format: "primary failover (%@): last request %.2f s before the stop, first request %.2f s after the promotion; gap %.2f s (stop to promotion %.2f s)",
                     order, stoppedAt.timeIntervalSince1970 - lastBefore, firstAfter - promotedAt.timeIntervalSince1970, firstAfter - lastBefore,
                     promotedAt.timeIntervalSince(stoppedAt)))
        XCTAssertLessThan(firstAfter - promotedAt.timeIntervalSince1970, 10, "publishing resumes within seconds of the promotion", file: file, line: line)

        let promoted = try pair.connect(port: pair.standbyPort)
        let expected = Dictionary(uniqueKeysWithValues: try promoted.execute("SELECT id::text, v FROM items WHERE v > 0").rows.map { ($0[0]!, Int($0[1]!)!) })
        var sequences: [String: [Int]] = [:]
        try waitUntil(timeout: 60, "every key's final state arrives (\(order))", file: file, line: line) {
            sequences = [:]
            for r in try ingestor.requests() where r.status == 200 {
                if let k = r.body["primary_key"]?.string, let v = r.body["atomic_data"]?[0]?["v"]?.int { sequences[k, default: []].append(v) }
            }
            return expected.allSatisfy { sequences[$0.key]?.last == $0.value }
        }
        for (key, values) in sequences.sorted(by: { $0.key < $1.key }) {
            XCTAssertEqual(values, values.sorted(), "key \(key) went backwards: \(values)", file: file, line: line)
        }
        XCTAssertEqual(try promoted.execute("SELECT count(*) FROM items_changes")[0, 0], "0", "every change acknowledged on the new primary", file: file, line: line)
        let entry = try s.health().body["components"]?["tables"]?["items"]
        XCTAssertEqual(entry?["restarts"]?.int, 0, "a failover reconnects the worker, it does not restart it", file: file, line: line)
        if capture == .wal {
            XCTAssertEqual(try promoted.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'items'::regclass")[0, 0], "0", "WAL mode: no trigger of ours", file: file, line: line)
            XCTAssertEqual(try promoted.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'adp_items_%' AND wal_status <> 'lost' AND active")[0, 0], "1",
                           "the worker streams the synchronised slot on the new primary", file: file, line: line)
            XCTAssertNotEqual(entry?["status"]?.string, "failed", "the slot survived: the table is not failed", file: file, line: line)
        }
        XCTAssertEqual(s.unexpectedLogLines(), [], file: file, line: line)
    }

    private func arrivals(_ ingestor: Ingestor) throws -> [Double] {
        try JSON(parsing: Data(try ingestor.rawRequestsBody())).array?.compactMap { $0["at"]?.number } ?? []
    }
}

/// The application during a failover: transactions of five increments of random keys, one after
/// another; a failed one (the primary gone, or not promoted yet) is retried on a new connection
/// after 50 ms. What was committed is read back from the new primary, so a transaction whose
/// outcome the writer never learned needs no bookkeeping.
final class FailoverWriter: Sendable {
    private let state = Mutex<(stop: Bool, commits: Int)>((false, 0))
    private let finished = Mutex(false)

    init(database: DatabaseConfig, keys: Int) {
        let thread = Thread { [self] in
            var db: PostgresConnection?
            var generator = SystemRandomNumberGenerator()
            while !state.withLock({ $0.stop }) {
                do {
                    if db == nil { db = try PostgresConnection.connect(ConnectionParameters(database, applicationName: "failover-writer"), heartbeats: false) }
                    try db!.execute("BEGIN")
                    for _ in 0..<5 { try db!.execute("UPDATE items SET v = v + 1 WHERE id = $1", [String(Int.random(in: 1...keys, using: &generator))]) }
                    try db!.execute("COMMIT")
                    state.withLock { $0.commits += 1 }
                    usleep(10_000)
                } catch {
                    db?.close()
                    db = nil
                    usleep(50_000)
                }
            }
            db?.close()
            finished.withLock { $0 = true }
        }
        thread.start()
    }

    var commits: Int { state.withLock { $0.commits } }

    /// Stops after the current transaction; returns once the thread is done (at most 10 s).
    func stop() {
        state.withLock { $0.stop = true }
        let deadline = Date().addingTimeInterval(10)
        while !finished.withLock({ $0 }) && Date() < deadline { usleep(10_000) }
    }
}
