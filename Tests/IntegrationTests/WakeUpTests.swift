import Foundation
import Shared
import XCTest

/// Wake-up from idle (docs/delivery.md "Polling and wake-up", TrackingSchema+Wake.swift): a sleeping worker
/// is notified of the first change at once, no change committed as it goes to sleep waits for the
/// poll, and an idle table costs at most one statement per polling interval.
final class WakeUpTests: IntegrationTestCase {
    private let devices = TestTables.devices
    /// Far longer than any delivery here: a missed wake-up would wait for it.
    private let longPoll = 60.0
    /// Well under `longPoll`, with a margin for a loaded two-core machine.
    private let deliveredWithin = 5.0

    private func update(_ db: TestDatabase, _ n: Int) throws {
        try db.execute("UPDATE devices SET updated_at = '2026-11-28 10:00:00+00'::timestamptz + $1::int * interval '1 second' WHERE id = 42", [String(n)])
    }

    /// Wait (polling the tracking table every millisecond) until every change is acknowledged;
    /// returns the seconds it took, or nil at the deadline.
    private func secondsUntilAcknowledged(_ db: TestDatabase, since start: Double, deadline: Double) throws -> Double? {
        while monotonicSeconds() < start + deadline {
            if try db.count("SELECT count(*) FROM devices_changes") == 0 { return monotonicSeconds() - start }
            usleep(1000)
        }
        return nil
    }

    private func flagHeld(_ db: TestDatabase) throws -> Bool {
        let bits = UInt64(bitPattern: TrackingSchema(table: devices).wakeKey())
        return try db.count("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND mode = 'ExclusiveLock' AND classid = $1::bigint::oid AND objid = $2::bigint::oid",
                            [String(bits >> 32), String(bits & 0xffff_ffff)]) == 1
    }

    /// The race: each change is committed at a different moment of the worker's way to sleep
    /// (its empty read, its short wait, taking the flag, its last check, asleep), 0 to 30 ms after
    /// the previous change was acknowledged, sweeping that window seven times. Each must be
    /// delivered long before the 60 s poll.
    func testChangeCommittedAsTheWorkerGoesToSleep_isDeliveredWithoutWaitingForThePoll() throws {
        let p = try startPipeline(schemaSQL: try TestTables.devicesSQL(), tables: [devices]) { $0.service.pollingIntervalSeconds = longPoll }
        try p.database.execute("INSERT INTO devices (id, name, firmware, updated_at) VALUES (42, 'hall sensor', 'v1', now())")
        guard try secondsUntilAcknowledged(p.database, since: monotonicSeconds(), deadline: deliveredWithin) != nil else {
            return XCTFail("the first change was not delivered within \(deliveredWithin) s\n\(diagnostics())")
        }
        var latencies: [Double] = []
        for i in 0..<(31 * 7) {
            let offsetMs = i % 31
            usleep(UInt32(offsetMs * 1000))
            let committed = monotonicSeconds()
            try update(p.database, i + 1)
            guard let seconds = try secondsUntilAcknowledged(p.database, since: committed, deadline: deliveredWithin) else {
                return XCTFail("""
                    change \(i + 1), committed \(offsetMs) ms after the previous one was acknowledged, was not delivered \
                    within \(deliveredWithin) s (polling interval \(longPoll) s): a lost wake-up. Wake-up flag held now: \
                    \(String(describing: try? flagHeld(p.database))); delivered so far: \(latencies.count), slowest \
                    \(Int((latencies.max() ?? 0) * 1000)) ms\n\(diagnostics())
                    """)
            }
            latencies.append(seconds)
        }
        latencies.sort()
        let requests = try p.ingestor.requests()
        XCTAssertEqual(requests.count, 31 * 7 + 1, "one payload per change: \(p.ingestor.summary())")
        print("wake-up race: \(latencies.count) changes, commit to acknowledged p50 \(Int(latencies[latencies.count / 2] * 1000)) ms, "
              + "p99 \(Int(latencies[latencies.count * 99 / 100] * 1000)) ms, max \(Int(latencies.last! * 1000)) ms")
    }

    /// A writer whose transaction is open while the worker goes to sleep holds the flag's key in
    /// shared mode: the worker cannot take the flag and polls (from 10 ms, backing off) instead of
    /// sleeping, so the change is delivered soon after the writer commits.
    func testChangeOfATransactionOpenAcrossTheWorkersSleep_isDeliveredSoonAfterItsCommit() throws {
        let p = try startPipeline(schemaSQL: try TestTables.devicesSQL(), tables: [devices]) { $0.service.pollingIntervalSeconds = longPoll }
        try p.database.execute("INSERT INTO devices (id, name, firmware, updated_at) VALUES (42, 'hall sensor', 'v1', now())")
        guard try secondsUntilAcknowledged(p.database, since: monotonicSeconds(), deadline: deliveredWithin) != nil else {
            return XCTFail("the first change was not delivered within \(deliveredWithin) s\n\(diagnostics())")
        }
        let writer = try PostgresConnection.connect(ConnectionParameters(p.database.config, applicationName: "adp-integration-tests-writer"))
        defer { writer.close() }
        try writer.execute("BEGIN")
        try writer.execute("UPDATE devices SET updated_at = now() WHERE id = 42")
        // The worker goes to sleep within about 10 ms of its empty read; hold the change well past it.
        usleep(300_000)
        let committed = monotonicSeconds()
        try writer.execute("COMMIT")
        guard let seconds = try secondsUntilAcknowledged(p.database, since: committed, deadline: deliveredWithin) else {
            return XCTFail("the change was not delivered within \(deliveredWithin) s of its commit (polling interval \(longPoll) s)\n\(diagnostics())")
        }
        XCTAssertLessThan(seconds, 2.0, "the worker should poll within its backoff after the writer's commit")

        // And with the worker already asleep (holding the flag) when the writer begins: notified at its commit.
        try waitUntil("the worker sleeps holding the wake-up flag") { try flagHeld(p.database) }
        try writer.execute("BEGIN")
        try writer.execute("UPDATE devices SET updated_at = now() + interval '1 second' WHERE id = 42")
        usleep(300_000)
        let committed2 = monotonicSeconds()
        try writer.execute("COMMIT")
        guard let seconds2 = try secondsUntilAcknowledged(p.database, since: committed2, deadline: deliveredWithin) else {
            return XCTFail("the change was not delivered within \(deliveredWithin) s of its commit (polling interval \(longPoll) s)\n\(diagnostics())")
        }
        XCTAssertLessThan(seconds2, 2.0)
        XCTAssertEqual(try p.ingestor.requests().count, 3)
    }

    /// Rows the trigger does not write (replayed dead letters, a backfill's chunks) notify too.
    func testReplayedDeadLetter_wakesTheSleepingWorker() throws {
        let p = try startPipeline(schemaSQL: try TestTables.devicesSQL(), tables: [devices]) { $0.service.pollingIntervalSeconds = longPoll }
        try p.database.execute("INSERT INTO devices (id, name, firmware, updated_at) VALUES (42, 'hall sensor', 'v1', now())")
        guard try secondsUntilAcknowledged(p.database, since: monotonicSeconds(), deadline: deliveredWithin) != nil else {
            return XCTFail("the first change was not delivered within \(deliveredWithin) s\n\(diagnostics())")
        }
        try p.database.execute("""
            INSERT INTO devices_changes_failed (id, primary_key, operation, change_column_value, attempts, last_error)
            VALUES (1000, '42', 'U', '2026-11-28 10:00:00+00', 3, 'HTTP 500')
            """)
        try waitUntil("the worker sleeps holding the wake-up flag") { try flagHeld(p.database) }
        let replayed = monotonicSeconds()
        XCTAssertEqual(try TrackingSchema(table: devices).replay(p.database.connection, id: nil), 1)
        guard try secondsUntilAcknowledged(p.database, since: replayed, deadline: deliveredWithin) != nil else {
            return XCTFail("the replayed change was not delivered within \(deliveredWithin) s (polling interval \(longPoll) s)\n\(diagnostics())")
        }
        XCTAssertEqual(try p.ingestor.requests().count, 2)
    }

    /// Idle with `config/default.toml`'s polling interval (1 s): the worker sleeps holding the flag
    /// and runs at most one statement per second (no transaction around it), counted in the
    /// server's own statement log; then the first change is delivered at once.
    func testIdleTable_costsAtMostOneStatementPerSecond_andWakesAtOnce() throws {
        guard let data = ProcessInfo.processInfo.environment["ADP_TEST_PGDATA"] else {
            return XCTFail("ADP_TEST_PGDATA must name the test server's data directory (dev/test exports it): its log is read here")
        }
        let log = URL(fileURLWithPath: data).deletingLastPathComponent().appendingPathComponent("postgres.log").path
        let database = try makeDatabase()
        try database.executeScript(try TestTables.devicesSQL())
        try database.execute("ALTER DATABASE \(quoteIdentifier(database.name)) SET log_statement = 'all'")
        let ingestor = try startIngestor()
        var config = ConfigFile.forTests(database: database.config, ingestorURL: ingestor.baseURL, tables: [devices])
        config.service.pollingIntervalSeconds = 1
        try startWorker(table: devices.name, config: try writeConfig(config))
        try database.execute("INSERT INTO devices (id, name, firmware, updated_at) VALUES (42, 'hall sensor', 'v1', now())")
        guard try secondsUntilAcknowledged(database, since: monotonicSeconds(), deadline: deliveredWithin) != nil else {
            return XCTFail("the first change was not delivered within \(deliveredWithin) s\n\(diagnostics())")
        }
        try waitUntil("the worker sleeps holding the wake-up flag") { try flagHeld(database) }
        let pid = try database.value("SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name LIKE 'atomic-data-publisher/%'", [database.name]) ?? "?"

        let window = 12.0
        let start = try FileManager.default.attributesOfItem(atPath: log)[.size] as? UInt64 ?? 0
        usleep(UInt32(window * 1_000_000))
        let handle = try FileHandle(forReadingFrom: URL(fileURLWithPath: log))
        try handle.seek(toOffset: start)
        let text = String(decoding: handle.readDataToEndOfFile(), as: UTF8.self)
        try handle.close()
        let statements = text.split(separator: "\n").filter {
            $0.contains("[\(pid)] LOG:  statement: ") || $0.contains("[\(pid)] LOG:  execute ")
        }
        XCTAssertLessThanOrEqual(Double(statements.count), window,
                                 "an idle table may cost at most one statement per second; in \(window) s the worker ran:\n\(statements.joined(separator: "\n"))")
        XCTAssertFalse(statements.contains { $0.contains("BEGIN") }, "no transaction around an idle poll:\n\(statements.joined(separator: "\n"))")
        XCTAssertTrue(try flagHeld(database), "the idle worker sleeps holding the wake-up flag")

        let committed = monotonicSeconds()
        try update(database, 1)
        guard let seconds = try secondsUntilAcknowledged(database, since: committed, deadline: deliveredWithin) else {
            return XCTFail("the first change after idle was not delivered within \(deliveredWithin) s\n\(diagnostics())")
        }
        XCTAssertLessThan(seconds, 0.5, "the first change after idle is notified, not found by the next poll")
        print("idle worker: \(statements.count) statements in \(window) s; first change after idle acknowledged in \(Int(seconds * 1000)) ms\n"
              + statements.joined(separator: "\n"))
    }
}

extension WakeUpTests {
    /// A server that allows prepared transactions: PostgreSQL refuses PREPARE TRANSACTION after
    /// NOTIFY, so the trigger must never notify there, and the worker polls instead of sleeping.
    func testAServerWithTwoPhaseCommit_theApplicationsPrepareTransactionWorks_andChangesArriveByPolling() throws {
        let server = try NetworkPostgresServer(directory: workDirectory.appendingPathComponent("pg-2pc"), listen: "127.0.0.1",
                                               settings: "max_prepared_transactions = 4")
        defer { server.stop() }
        let admin = try PostgresConnection.connect(ConnectionParameters(server.localConfig, applicationName: "adp-integration-tests"))
        defer { admin.close() }
        try admin.executeScript(try TestTables.devicesSQL())
        let ingestor = try startIngestor()
        var config = ConfigFile.forTests(database: server.localConfig, ingestorURL: ingestor.baseURL, tables: [devices])
        config.service.healthCheckAddress = "127.0.0.1"
        config.service.healthCheckPort = try SupervisorProcess.freePort()
        config.service.pollingIntervalSeconds = 1
        let supervisor = try SupervisorProcess(configURL: try writeConfig(config), healthPort: config.service.healthCheckPort, directory: workDirectory, name: "two-phase")
        defer { supervisor.process.stop(timeout: 15) }
        try waitUntil(timeout: 30, "the worker leads") { try supervisor.health().body["components"]?["tables"]?["devices"]?["lease"] == "leader" }
        usleep(1_500_000)  // idle: where a worker would sleep on its flag
        let bits = UInt64(bitPattern: TrackingSchema(table: devices).wakeKey())
        XCTAssertEqual(try admin.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = $1::bigint::oid AND objid = $2::bigint::oid",
                                         [String(bits >> 32), String(bits & 0xffff_ffff)])[0, 0], "0", "the worker does not sleep on the flag")
        for i in 1...3 {
            try admin.execute("BEGIN")
            try admin.execute("INSERT INTO devices (id, name, firmware, updated_at) VALUES ($1::int, 'sensor', 'v1', now())", [String(i)])
            try admin.execute("PREPARE TRANSACTION 'adp-test-\(i)'")  // refused if the trigger had notified
            try admin.execute("COMMIT PREPARED 'adp-test-\(i)'")
            try waitUntil(timeout: 10, "change \(i) arrives by polling") { try ingestor.requests().count == i }
            usleep(1_200_000)
        }
    }
}
