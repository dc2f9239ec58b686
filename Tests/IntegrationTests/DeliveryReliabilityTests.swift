import Foundation
import Shared
import Synchronization
import XCTest

/// DESIGN.md section 5's promise under failure: at least once, latest state wins, per-key order,
/// and a bad row never blocks the others. Real PostgreSQL, a real ingestor told to fail, real
/// processes killed with real signals.
final class DeliveryReliabilityTests: IntegrationTestCase {
    var supervisors: [SupervisorProcess] = []

    override func tearDownWithError() throws {
        for supervisor in supervisors where supervisor.process.isRunning { supervisor.process.stop(timeout: 15) }
        supervisors.removeAll()
        try super.tearDownWithError()
    }

    let items = WatchedTable(name: "items", changeColumns: ["v"],
                                     atomicDataQuery: "SELECT id, v FROM items WHERE id = $PRIMARY_KEY",
                                     publishEndpoint: "/api/v1/items")

    func itemsSQL(keys: Int) -> String {
        "CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL DEFAULT 0, divisor int NOT NULL DEFAULT 1); INSERT INTO items (id) SELECT g FROM generate_series(1, \(keys)) g;"
    }

    /// Per key, the `v` of every acknowledged payload in arrival order (a batch's in its order).
    func sequences(_ ingestor: Ingestor) throws -> [String: [Int]] {
        var result: [String: [Int]] = [:]
        for request in try ingestor.requests() {
            for document in request.acknowledgedDocuments {
                guard let key = document["primary_key"]?.string else { continue }
                if let v = document["atomic_data"]?[0]?["v"]?.int { result[key, default: []].append(v) }
            }
        }
        return result
    }

    func databaseValues(_ database: TestDatabase) throws -> [String: Int] {
        Dictionary(uniqueKeysWithValues: try database.execute("SELECT id::text, v FROM items").rows.map { ($0[0]!, Int($0[1]!)!) })
    }

    func waitUntilEveryFinalStateArrived(_ database: TestDatabase, _ ingestor: Ingestor, timeout: TimeInterval = 60) throws {
        let expected = try databaseValues(database).filter { $0.value != 0 }
        try waitUntil(timeout: timeout, "the ingestor holds the final state of all \(expected.count) changed keys") {
            let got = try self.sequences(ingestor)
            return expected.allSatisfy { got[$0.key]?.last == $0.value }
        }
        try waitUntilTrackingTableIsEmpty(database, items)
    }

    func assertNoKeyWentBackwards(_ ingestor: Ingestor, file: StaticString = #filePath, line: UInt = #line) throws -> (payloads: Int, duplicates: Int) {
        var payloads = 0
        var duplicates = 0
        for (key, values) in try sequences(ingestor) {
            payloads += values.count
            for (later, earlier) in zip(values.dropFirst(), values) {
                XCTAssertGreaterThanOrEqual(later, earlier, "key \(key) went backwards: \(values)", file: file, line: line)
                if later == earlier { duplicates += 1 }
            }
        }
        return (payloads, duplicates)
    }

    // MARK: - ingestor outage and circuit breaker

    func testIngestorOutage_503ThenRefusingThenRecovering_deliversEverything_andOnlyProbesWhileTheBreakerIsOpen() throws {
        let database = try makeDatabase()
        try database.executeScript(itemsSQL(keys: 200))
        let port = try SupervisorProcess.freePort()
        var ingestor = try Ingestor.start(directory: workDirectory, name: "ingestor-a", port: port)
        var config = ConfigFile.forTests(database: database.config, ingestorURL: ingestor.baseURL, tables: [items])
        config.ingestor.circuitBreakerFailureThreshold = 3
        config.ingestor.circuitBreakerResetSeconds = 2
        config.ingestor.maxRetries = 1
        let worker = try startWorker(table: "items", config: try writeConfig(config))
        addDiagnostics { Self.trackingTableSummary(database, self.items) }

        // 503 for 10 seconds while changes keep coming.
        try ingestor.setControl(["status": 503])
        let outageStart = Date()
        var round = 0
        while Date().timeIntervalSince(outageStart) < 10 {
            round += 1
            try database.execute("UPDATE items SET v = v + 1 WHERE id % 10 = $1", [String(round % 10)])
            Thread.sleep(forTimeInterval: 0.25)
        }
        let during503 = try ingestor.requests().count
        // Then the ingestor is gone: connections are refused.
        ingestor.stop()
        Thread.sleep(forTimeInterval: 4)
        for k in 1...5 { try database.execute("UPDATE items SET v = v + 1 WHERE id = $1", [String(k)]) }
        XCTAssertTrue(worker.process.isRunning, worker.diagnostics())
        XCTAssertGreaterThan(try database.rowCount("items_changes"), 0, "the changes wait in the tracking table")

        // Recovery on the same port.
        ingestor = try Ingestor.start(directory: workDirectory, name: "ingestor-b", port: port)
        let recoveredAt = Date()
        try waitUntilEveryFinalStateArrived(database, ingestor)
        let drain = Date().timeIntervalSince(recoveredAt)
        _ = try assertNoKeyWentBackwards(ingestor)

        // Closed → open after 3 failures (plus what was already in flight: 5), then one probe per
        // 2 s reset period: 10 s of 503 allow at most 3 + 5 + 10/2 + 1 requests.
        let bound = 3 + config.service.maxConcurrentPublishes + 6
        print("ingestor outage: \(during503) requests during 10 s of 503 (bound \(bound)); drained \(String(format: "%.2f", drain)) s after recovery")
        XCTAssertLessThanOrEqual(during503, bound, "while the breaker is open only probes may be sent")
        XCTAssertGreaterThanOrEqual(during503, 3, "the breaker opens only after the threshold")
        let log = worker.process.stderrText()
        XCTAssertTrue(log.contains("circuit breaker closed -> open"), worker.diagnostics())
        XCTAssertTrue(log.contains("circuit breaker half_open -> closed"), worker.diagnostics())
    }

    func testAnIngestorThatNeverAnswers_isCutOffAfterTheTimeout_andCountedAsTransient() throws {
        let p = try startPipeline(schemaSQL: itemsSQL(keys: 3), tables: [items]) { config in
            config.ingestor.timeoutSeconds = 1
            config.ingestor.maxRetries = 0
            config.ingestor.circuitBreakerFailureThreshold = 1
            config.ingestor.circuitBreakerResetSeconds = 1
        }
        try p.ingestor.setControl(["stall": true])
        try p.database.execute("UPDATE items SET v = 1 WHERE id = 2")
        try waitUntil("the worker gives up on the stalled request") {
            p.worker.process.stderrText().contains("timed out") || p.worker.process.stderrText().contains("Timeout")
        }
        XCTAssertEqual(try p.ingestor.requests().first?.status, 0, "the ingestor held the request without answering")
        let failure = p.worker.process.stderrText().split(separator: "\n").first { $0.contains("ingestor request failed") }.map(String.init) ?? ""
        XCTAssertTrue(failure.contains("(CURLcode 28)"), failure)
        try waitUntil("the breaker opened on the timeout (a transient failure)") {
            p.worker.latestStats()?["circuit_breaker"] != "closed" && (p.worker.latestStats()?["publish_failures"]?.int ?? 0) >= 1
        }
        XCTAssertGreaterThanOrEqual(try p.database.rowCount("items_changes"), 1)
        try p.ingestor.setControl(["stall": false])
        try waitUntil("delivered after the ingestor answers again") {
            try self.sequences(p.ingestor)["2"]?.last == 1
        }
        try waitUntilTrackingTableIsEmpty(p.database, items)
    }

    func testRetryAfterOn429_isHonouredBeforeTheNextAttempt() throws {
        let p = try startPipeline(schemaSQL: itemsSQL(keys: 3), tables: [items]) { config in
            config.ingestor.retryDelaySeconds = 0.05
            config.ingestor.maxRetryDelaySeconds = 5
            config.ingestor.maxRetries = 1
            config.ingestor.circuitBreakerFailureThreshold = 10
        }
        try p.ingestor.setControl(["status": 429, "retry_after": 2])
        try p.database.execute("UPDATE items SET v = 1 WHERE id = 3")
        try waitUntil("two attempts were refused with 429") { try p.ingestor.requests().count >= 2 }
        try p.ingestor.setControl(["status": 200])
        try waitUntil("delivered once the ingestor accepts") { try self.sequences(p.ingestor)["3"]?.last == 1 }
        let requests = try p.ingestor.requests()
        let times = try JSON(parsing: Data(try p.ingestor.rawRequestsBody())).array?.compactMap { $0["at"]?.number } ?? []
        XCTAssertEqual(times.count, requests.count)
        let gaps = zip(times.dropFirst(), times).map { $0 - $1 }
        print("Retry-After: 2 on 429: gaps between attempts \(gaps.map { String(format: "%.2f", $0) }) s (retry_delay_seconds 0.05)")
        XCTAssertGreaterThanOrEqual(gaps.first ?? 0, 1.9, "the immediate retry waits for Retry-After, not the 0.05 s backoff: \(gaps)")
        XCTAssertGreaterThanOrEqual(gaps.dropFirst().first ?? 0, 1.0, "the rescheduled attempt also waits for Retry-After: \(gaps)")
    }

    // MARK: - dead letters

    func testARejectedPayloadAndAFailingQuery_endInDeadLetters_whileOthersFlow_andReplayBringsThemBack() throws {
        let divided = WatchedTable(name: "items", changeColumns: ["v"],
                                   atomicDataQuery: "SELECT id, v, 100 / divisor AS ratio FROM items WHERE id = $PRIMARY_KEY",
                                   publishEndpoint: "/api/v1/items")
        let p = try startPipeline(schemaSQL: itemsSQL(keys: 100), tables: [divided]) { config in
            config.service.deadLetterAfterAttempts = 3
            config.ingestor.retryDelaySeconds = 0.1
            config.ingestor.maxRetryDelaySeconds = 0.2
        }
        p.worker.expectedErrorLogs = ["change moved to dead letters"]
        try p.ingestor.setControl(["fail_keys": ["13": 400]])
        try p.database.execute("UPDATE items SET divisor = 0 WHERE id = 7")
        try p.database.execute("UPDATE items SET v = 1 WHERE id IN (7, 13)")
        // 1,000 other changes meanwhile.
        for _ in 1...10 {
            try p.database.execute("UPDATE items SET v = v + 1 WHERE id NOT IN (7, 13)")
        }
        try waitUntil("both bad keys are dead letters") {
            try p.database.count("SELECT count(DISTINCT primary_key) FROM items_changes_failed") == 2
        }
        try waitUntil("the 1,000 other changes are published") {
            let seq = try self.sequences(p.ingestor)
            return (1...100).filter { $0 != 7 && $0 != 13 }.allSatisfy { seq[String($0)]?.last == 10 }
        }
        try waitUntilTrackingTableIsEmpty(p.database, divided)
        let errors = Dictionary(uniqueKeysWithValues: try p.database.execute(
            "SELECT primary_key, last_error, attempts FROM items_changes_failed").rows.map { ($0[0]!, ($0[1] ?? "", Int($0[2]!)!)) })
        XCTAssertTrue(errors["7"]?.0.contains("division by zero") ?? false, "\(errors)")
        XCTAssertTrue(errors["13"]?.0.contains("HTTP 400") ?? false, "\(errors)")
        XCTAssertEqual(errors["13"]?.1, 3)
        try waitUntil("the dead letters show in the worker's stats") {
            p.worker.latestStats()?["dead_letters"]?.int == 2 && (p.worker.latestStats()?["dead_lettered"]?.int ?? 0) >= 2
        }

        // Fix the causes, then replay: both are published.
        try p.ingestor.setControl(["fail_keys": [String: Int]()])
        try p.database.execute("UPDATE items SET divisor = 4 WHERE id = 7")
        let replay = try runPublisher(["--config", p.configURL.path, "replay", "--table", "items", "--all"])
        XCTAssertEqual(replay.status, 0, replay.output)
        XCTAssertTrue(replay.output.contains("2 dead letter(s) queued again"), replay.output)
        try waitUntil("the replayed keys are published") {
            let seq = try self.sequences(p.ingestor)
            return seq["7"]?.last == 1 && seq["13"]?.last == 1
        }
        try waitUntilTrackingTableIsEmpty(p.database, divided)
        XCTAssertEqual(try p.database.rowCount("items_changes_failed"), 0)
        let seven = try p.ingestor.requests().last { $0.body["primary_key"] == "7" && $0.status == 200 }
        XCTAssertEqual(seven?.body["atomic_data"]?[0]?["ratio"], 25)
    }

    // MARK: - database outage

    func testPostgresRestartMidStream_losesNothing_andTheWorkerReconnects() throws {
        guard let data = ProcessInfo.processInfo.environment["ADP_TEST_PGDATA"], let bin = ProcessInfo.processInfo.environment["ADP_TEST_PGBIN"] else {
            return XCTFail("ADP_TEST_PGDATA and ADP_TEST_PGBIN must name the test server (dev/test exports them)")
        }
        let p = try startPipeline(schemaSQL: itemsSQL(keys: 50), tables: [items])
        p.worker.expectedErrorLogs = []
        for _ in 1...5 { try p.database.execute("UPDATE items SET v = v + 1") }
        // -l: the restarted server must not inherit our output pipe (it would never close).
        let log = URL(fileURLWithPath: data).deletingLastPathComponent().appendingPathComponent("postgres.log").path
        let restart = try runAsServerOwner(["\(bin)/pg_ctl", "-D", data, "-l", log, "-m", "fast", "-w", "-t", "60", "restart"])
        XCTAssertEqual(restart.status, 0, restart.output)
        try p.database.reconnect()
        for _ in 1...5 { try p.database.execute("UPDATE items SET v = v + 1") }
        try waitUntilEveryFinalStateArrived(p.database, p.ingestor)
        XCTAssertTrue(p.worker.process.isRunning)
        XCTAssertTrue(p.worker.process.stderrText().contains("database connection restored"), p.worker.diagnostics())
        _ = try assertNoKeyWentBackwards(p.ingestor)
    }

    // MARK: - crash test

    func testCrashTest_killNineWorkersAndTheSupervisorDuringAWriteStream_losesNothingAndNeverGoesBackwards() throws {
        try crashTest(mode: "single-document")
    }

    /// Ten worker kills and a supervisor kill during a stream of 20,000 changes: everything arrives
    /// and no key goes back (`adjust`: the delivery mode under test).
    func crashTest(mode: String, adjust: (inout PublisherConfig) -> Void = { _ in }) throws {
        let keys = 500, changes = 20_000
        let database = try makeDatabase()
        try database.executeScript(itemsSQL(keys: keys))
        let ingestor = try startIngestor()
        var config = ConfigFile.forTests(database: database.config, ingestorURL: ingestor.baseURL, tables: [items])
        config.service.healthCheckAddress = "127.0.0.1"
        config.service.healthCheckPort = try SupervisorProcess.freePort()
        config.service.batchSize = 200
        config.service.restartDelaySeconds = 0.1
        config.service.maxRestartDelaySeconds = 0.5
        adjust(&config)
        let configURL = try writeConfig(config)
        addDiagnostics { Self.trackingTableSummary(database, self.items) }

        // The writer: 20,000 increments over 500 keys, 10 per transaction, from its own thread.
        let workerKills = 10
        let (supervisor, writer) = try killStorm(configURL: configURL, healthPort: config.service.healthCheckPort, worker: "items",
                                                 workerKills: workerKills) {
            BackgroundWriter(database: database.config, name: "crash-test-writer", rounds: changes / 10, perRound: 10, keys: keys)
        }
        XCTAssertNil(writer.error, "the writer failed")
        try waitUntilEveryFinalStateArrived(database, ingestor, timeout: 120)
        let (payloads, sameState) = try assertNoKeyWentBackwards(ingestor)
        XCTAssertEqual(try databaseValues(database).values.reduce(0, +), changes)
        // A duplicate: a payload id (Idempotency-Key) acknowledged more than once, i.e. delivered
        // again because a kill came between the ingestor's 2xx and the delete.
        var seen: [String: Int] = [:]
        for request in try ingestor.requests() {
            for document in request.acknowledgedDocuments { seen[document["id"]?.string ?? "", default: 0] += 1 }
        }
        let duplicates = seen.values.reduce(0) { $0 + $1 - 1 }
        print("crash test (\(mode)): \(changes) changes, \(workerKills) worker kills + 1 supervisor kill: \(payloads) payloads acknowledged, \(duplicates) duplicate ids (\(String(format: "%.1f", Double(duplicates) / Double(workerKills + 1))) per kill), \(sameState) consecutive payloads with an unchanged state (coalescing reads the latest state)")
        XCTAssertEqual(supervisor.process.stop(), .exited(0))
    }

    // MARK: - helpers

    /// Starts a supervisor on `configURL`, then the writer (once the worker runs: its setup made
    /// the trigger), and while the writer runs kills the worker `worker` with SIGKILL `workerKills`
    /// times at random moments 0.1-0.5 s apart, and the supervisor itself once halfway (a new one
    /// is started). Returns the supervisor running at the end, and the writer.
    func killStorm(configURL: URL, healthPort: Int, worker: String, workerKills: Int,
                   startWriter: () -> BackgroundWriter) throws -> (SupervisorProcess, BackgroundWriter) {
        func launch() throws -> SupervisorProcess {
            let s = try SupervisorProcess(configURL: configURL, healthPort: healthPort, directory: workDirectory,
                                          name: "supervisor-\(supervisors.count + 1)")
            supervisors.append(s)
            try waitUntil("the supervisor's worker runs") { try s.workerPIDs()[worker] != nil }
            return s
        }
        var supervisor = try launch()
        let writer = startWriter()
        var kills = 0
        var supervisorKilled = false
        while kills < workerKills || !writer.isDone {
            Thread.sleep(forTimeInterval: Double.random(in: 0.1...0.5))
            if kills == workerKills / 2 && !supervisorKilled {
                supervisor.process.send(SIGKILL)
                supervisorKilled = true
                _ = supervisor.process.waitForExit(timeout: 5)
                supervisor = try launch()
                continue
            }
            if kills < workerKills, let pid = try? supervisor.workerPIDs()[worker] {
                kill(pid, SIGKILL)
                kills += 1
                try waitUntil("the killed worker is replaced") {
                    guard let next = try supervisor.workerPIDs()[worker] else { return false }
                    return next != pid
                }
            }
        }
        return (supervisor, writer)
    }

    func runPublisher(_ arguments: [String]) throws -> (status: Int32, output: String) {
        try run(try TestEnvironment.binary(named: "atomic-data-publisher").path, arguments)
    }

    func runAsServerOwner(_ command: [String]) throws -> (status: Int32, output: String) {
        if getuid() == 0 { return try run("/usr/sbin/runuser", ["-u", "postgres", "--"] + command) }
        return try run(command[0], Array(command.dropFirst()))
    }

    /// posix_spawn + waitpid, output to a file. Not Foundation.Process: its exit detection hung
    /// when the command left a daemon behind (pg_ctl restart starts the server).
    func run(_ executable: String, _ arguments: [String]) throws -> (status: Int32, output: String) {
        let outputURL = workDirectory.appendingPathComponent("command-\(UUID().uuidString.prefix(6)).out")
        let out = open(outputURL.path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        let null = open("/dev/null", O_RDONLY | O_CLOEXEC)
        defer { close(out); close(null) }
        let environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("ATOMIC_DATA_PUBLISHER_") }.map { "\($0.key)=\($0.value)" }
        let pid = try Spawn.spawn(path: executable, arguments: [executable] + arguments, environment: environment, stdin: null, stdout: out)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let code = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        return (code, (try? String(contentsOf: outputURL, encoding: .utf8)) ?? "")
    }
}
