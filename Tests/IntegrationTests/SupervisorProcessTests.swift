import Foundation
import Shared
import XCTest

/// The supervisor as operators run it: real worker processes, real signals, real PostgreSQL, a
/// real ingestor, /health and /metrics over HTTP, sd_notify on a real datagram socket.
final class SupervisorProcessTests: IntegrationTestCase {
    var supervisors: [SupervisorProcess] = []

    override func tearDownWithError() throws {
        for supervisor in supervisors where supervisor.process.isRunning {
            supervisor.process.stop(timeout: 15)
        }
        supervisors.removeAll()
        try super.tearDownWithError()
    }

    /// Tables `name (id int primary key, v int, note text)` watched on `v`.
    func counterTable(_ name: String) -> WatchedTable {
        WatchedTable(name: name, changeColumns: ["v"],
                     atomicDataQuery: "SELECT id, v, note FROM \(name) WHERE id = $PRIMARY_KEY",
                     publishEndpoint: "/api/v1/\(name)")
    }

    func counterTablesSQL(_ names: [String], keys: Int) -> String {
        names.map { "CREATE TABLE \($0) (id int PRIMARY KEY, v int NOT NULL DEFAULT 0, note text); INSERT INTO \($0) (id) SELECT g FROM generate_series(1, \(keys)) g;" }
            .joined(separator: "\n")
    }

    struct Setup {
        var database: TestDatabase
        var ingestor: Ingestor
        var config: PublisherConfig
        var configURL: URL
        var supervisor: SupervisorProcess
    }

    func startSupervisor(tables: [WatchedTable], keys: Int = 10, environment: [String: String] = [:],
                                 adjust: (inout PublisherConfig) -> Void = { _ in }, waitHealthy: Bool = true,
                                 file: StaticString = #filePath, line: UInt = #line) throws -> Setup {
        let database = try makeDatabase()
        try database.executeScript(counterTablesSQL(tables.map(\.name), keys: keys))
        let ingestor = try startIngestor()
        var config = ConfigFile.forTests(database: database.config, ingestorURL: ingestor.baseURL, tables: tables)
        config.service.healthCheckAddress = "127.0.0.1"
        config.service.healthCheckPort = try SupervisorProcess.freePort()
        adjust(&config)
        let configURL = try writeConfig(config)
        for table in tables { addDiagnostics { Self.trackingTableSummary(database, table) } }
        let supervisor = try launch(configURL: configURL, port: config.service.healthCheckPort, environment: environment)
        if waitHealthy {
            try waitUntil("/health reports healthy with \(tables.count) running workers", file: file, line: line) {
                let (status, body) = try supervisor.health()
                let running = try supervisor.workerPIDs().count
                return status == 200 && body["status"] == "healthy" && running == tables.count
            }
        }
        return Setup(database: database, ingestor: ingestor, config: config, configURL: configURL, supervisor: supervisor)
    }

    func launch(configURL: URL, port: Int, environment: [String: String] = [:], wrapper: [String] = []) throws -> SupervisorProcess {
        let supervisor = try SupervisorProcess(configURL: configURL, healthPort: port, directory: workDirectory,
                                               name: "supervisor-\(supervisors.count + 1)", environment: environment, wrapper: wrapper)
        supervisors.append(supervisor)
        addDiagnostics { supervisor.process.stderrTail() }
        return supervisor
    }

    /// The last payload per (table, key): its `v`.
    func finalValues(_ ingestor: Ingestor) throws -> [String: Int] {
        var values: [String: Int] = [:]
        for request in try ingestor.requests() where request.status == 200 {
            guard let table = request.body["table_name"]?.string, let key = request.body["primary_key"]?.string else { continue }
            values["\(table):\(key)"] = request.body["atomic_data"]?[0]?["v"]?.int
        }
        return values
    }

    func expectedValues(_ database: TestDatabase, tables: [String]) throws -> [String: Int] {
        var values: [String: Int] = [:]
        for table in tables {
            for row in try database.execute("SELECT id, v FROM \(table)").rows {
                values["\(table):\(row[0]!)"] = Int(row[1]!)
            }
        }
        return values
    }

    // MARK: - tests

    func testThreeTables_runThreeWorkers_andKillNineOfOne_restartsItWhileTheOthersKeepPublishing() throws {
        let names = ["alpha", "beta", "gamma"]
        let s = try startSupervisor(tables: names.map(counterTable))
        let pids = try s.supervisor.workerPIDs()
        XCTAssertEqual(Set(pids.keys), Set(names))
        XCTAssertEqual(Set(pids.values).count, 3, "three distinct worker processes: \(pids)")
        for (table, pid) in pids {
            XCTAssertTrue(processIsAlive(pid))
            XCTAssertTrue(processCommandLine(pid).contains("atomic-data-table-worker --table \(table) --config-stdin"), processCommandLine(pid))
        }

        // Changes flow on all three tables; then beta's worker dies mid-stream.
        for round in 1...5 {
            for name in names { try s.database.execute("UPDATE \(name) SET v = v + 1 WHERE id = \(round)") }
        }
        let victim = pids["beta"]!
        XCTAssertEqual(kill(victim, SIGKILL), 0)
        let killedAt = Date()
        var sawDegraded = false
        try waitUntil("/health shows beta not running and the service degraded") {
            let (status, body) = try s.supervisor.health()
            sawDegraded = status == 200 && body["status"] == "degraded" && body["components"]?["tables"]?["beta"]?["state"] != "running"
            return sawDegraded
        }
        // While beta backs off (at least 1 s), alpha and gamma keep publishing.
        for name in ["alpha", "gamma"] { try s.database.execute("UPDATE \(name) SET v = v + 100, note = 'during' WHERE id = 7") }
        try waitUntil("alpha and gamma publish key 7 while beta is down") {
            let values = try self.finalValues(s.ingestor)
            return values["alpha:7"] == 100 && values["gamma:7"] == 100
        }
        XCTAssertNotEqual(try s.supervisor.tableState("beta"), "running", "beta must still be backing off: the others published without it")
        XCTAssertLessThan(Date().timeIntervalSince(killedAt), 5)
        try s.database.execute("UPDATE beta SET v = v + 100 WHERE id = 7")

        try waitUntil("beta's worker is restarted and /health is healthy again") {
            let (status, body) = try s.supervisor.health()
            guard status == 200, body["status"] == "healthy", let pid = body["components"]?["tables"]?["beta"]?["pid"]?.int else { return false }
            return Int32(pid) != victim
        }
        let metrics = try s.supervisor.metrics()
        XCTAssertEqual(metrics["tables"]?["beta"]?["restarts"], 1, "\(metrics)")
        XCTAssertEqual(metrics["tables"]?["alpha"]?["restarts"], 0)
        XCTAssertEqual(metrics["totals"]?["worker_restarts"], 1)
        XCTAssertEqual(try s.supervisor.workerPIDs()["alpha"], pids["alpha"], "alpha's worker was not restarted")

        // Nothing lost: every key's final state arrived and every tracking table is empty.
        let expected = try expectedValues(s.database, tables: names)
        try waitUntil("the ingestor holds the final state of every changed key") {
            let got = try self.finalValues(s.ingestor)
            return expected.allSatisfy { key, v in v == 0 || got[key] == v }
        }
        for table in names.map(counterTable) { try waitUntilTrackingTableIsEmpty(s.database, table) }
        XCTAssertTrue(sawDegraded)
        XCTAssertEqual(s.supervisor.unexpectedLogLines(), [])
    }

    func testWorkerExit78_isNotRestarted_theOthersKeepRunning_andHealthNamesIt() throws {
        let s = try startSupervisor(tables: ["alpha", "beta"].map(counterTable))
        let betaPID = try s.supervisor.workerPIDs()["beta"]!
        // The watched table is dropped under the worker: a permanent error (exit 78).
        try s.database.execute("DROP TABLE beta")
        try waitUntil("/health names beta as failed and answers 503") {
            let (status, body) = try s.supervisor.health()
            let beta = body["components"]?["tables"]?["beta"]
            return status == 503 && body["status"] == "unhealthy" && beta?["state"] == "failed"
                && beta?["last_exit"] == "exit status 78" && (beta?["last_error"]?.string ?? "").contains("public.beta")
        }
        XCTAssertFalse(processIsAlive(betaPID))
        try s.database.execute("UPDATE alpha SET v = 5 WHERE id = 3")
        try waitUntil("alpha keeps publishing") { try self.finalValues(s.ingestor)["alpha:3"] == 5 }
        // Well past the first restart delay: still failed, never restarted.
        Thread.sleep(forTimeInterval: 2.5)
        let body = try s.supervisor.health().body
        XCTAssertEqual(body["components"]?["tables"]?["beta"]?["state"], "failed")
        XCTAssertEqual(body["components"]?["tables"]?["beta"]?["restarts"], 0)
        XCTAssertEqual(body["components"]?["tables"]?["beta"]?["pid"], .null)
    }

    func testAWorkerThatCrashesAtStart_isRestartedWithGrowingIntervals() throws {
        // A real process that dies at once, every time: it records when it was started.
        let stamps = workDirectory.appendingPathComponent("starts.log")
        let script = workDirectory.appendingPathComponent("crashing-worker")
        try "#!/bin/sh\ndate +%s.%N >> '\(stamps.path)'\nexit 1\n".write(to: script, atomically: true, encoding: .utf8)
        chmod(script.path, 0o755)
        let s = try startSupervisor(tables: [counterTable("alpha")], environment: ["ADP_WORKER_PATH": script.path], waitHealthy: false)
        var starts: [Double] = []
        try waitUntil(timeout: 30, "the crashing worker has been started 5 times") {
            starts = ((try? String(contentsOf: stamps, encoding: .utf8)) ?? "").split(separator: "\n").compactMap { Double($0) }
            return starts.count >= 5
        }
        let intervals = zip(starts.dropFirst(), starts).map { $0 - $1 }
        print("measured restart intervals (s): \(intervals.map { String(format: "%.2f", $0) }.joined(separator: ", "))")
        // 1 s doubling, jitter within ±25 %, never below 1 s.
        let bounds: [(Double, Double)] = [(0.95, 1.4), (1.45, 2.65), (2.9, 5.2), (5.9, 10.3)]
        for (interval, (low, high)) in zip(intervals, bounds) {
            XCTAssertTrue((low...high).contains(interval), "interval \(interval) outside \(low)...\(high); all: \(intervals)")
        }
        for (later, earlier) in zip(intervals.dropFirst(), intervals) {
            XCTAssertGreaterThan(later, earlier, "intervals must grow: \(intervals)")
        }
        let health = try s.supervisor.health()
        XCTAssertEqual(health.status, 503)
        XCTAssertGreaterThanOrEqual(health.body["components"]?["tables"]?["alpha"]?["restarts"]?.int ?? 0, 4)
    }

    func testKillNineOfTheSupervisor_everyWorkerExitsWithinTwoSeconds() throws {
        let s = try startSupervisor(tables: ["alpha", "beta", "gamma"].map(counterTable))
        let pids = Array(try s.supervisor.workerPIDs().values)
        XCTAssertEqual(pids.count, 3)
        s.supervisor.process.send(SIGKILL)
        let killedAt = Date()
        try waitUntil(timeout: 2, "every worker has exited after the supervisor's SIGKILL") {
            pids.allSatisfy { !processIsAlive($0) }
        }
        print(String(format: "workers gone %.2f s after kill -9 of the supervisor", Date().timeIntervalSince(killedAt)))
    }

    func testSigterm_withWorkInFlight_exitsZeroWithinTheShutdownTimeout_andLosesNothing() throws {
        let s = try startSupervisor(tables: [counterTable("alpha")], keys: 50)
        try s.ingestor.setControl(["stall": true])
        try s.database.execute("UPDATE alpha SET v = v + 1")
        try waitUntil("requests are in flight at the stalled ingestor") { try s.ingestor.requests().count >= 1 }
        let start = Date()
        s.supervisor.process.send(SIGTERM)
        let ended = s.supervisor.process.waitForExit(timeout: s.config.service.shutdownTimeoutSeconds + 2)
        XCTAssertEqual(ended, .exited(0), s.supervisor.process.stderrTail())
        print(String(format: "SIGTERM with work in flight: exit 0 after %.2f s", Date().timeIntervalSince(start)))
        XCTAssertEqual(try s.database.rowCount("alpha_changes"), 50, "no change may be acknowledged without a 2xx")

        // A new supervisor delivers everything.
        try s.ingestor.setControl(["stall": false])
        try s.ingestor.clearRequests()
        let again = try launch(configURL: s.configURL, port: s.config.service.healthCheckPort)
        try waitUntilTrackingTableIsEmpty(s.database, counterTable("alpha"))
        let values = try finalValues(s.ingestor)
        XCTAssertEqual(values.count, 50)
        XCTAssertTrue(values.values.allSatisfy { $0 == 1 }, "\(values)")
        again.process.stop()
    }

    func testSystemdNotifications_readyStatusWatchdogAndStopping() throws {
        let socketPath = "/tmp/adp-notify-\(UUID().uuidString.prefix(8)).sock"
        let notify = try NotifySocket(path: socketPath)
        let s = try startSupervisor(tables: ["alpha", "beta"].map(counterTable),
                                    environment: ["NOTIFY_SOCKET": socketPath, "WATCHDOG_USEC": "1000000"])
        try waitUntil("READY=1 and a STATUS= line arrive") {
            let keys = notify.assignments.map(\.key)
            return keys.contains("READY") && keys.contains("STATUS")
        }
        let ready = notify.assignments.first { $0.key == "READY" }!
        XCTAssertEqual(ready.value, "1")
        try waitUntil("a STATUS= line says both workers run") {
            notify.assignments.contains { $0.key == "STATUS" && $0.value.contains("2/2 workers running") }
        }
        // WATCHDOG_USEC=1 s: the loop pings every 0.5 s.
        let watchFrom = Date()
        try waitUntil(timeout: 5, "four WATCHDOG=1 pings after READY") {
            notify.assignments.filter { $0.key == "WATCHDOG" && $0.at >= watchFrom }.count >= 4
        }
        let pings = notify.assignments.filter { $0.key == "WATCHDOG" }.map(\.at)
        let gaps = zip(pings.dropFirst(), pings).map { $0.timeIntervalSince($1) }
        XCTAssertLessThan(gaps.max() ?? 99, 0.9, "watchdog gaps \(gaps)")
        s.supervisor.process.send(SIGTERM)
        XCTAssertEqual(s.supervisor.process.waitForExit(timeout: 10), .exited(0))
        XCTAssertTrue(notify.assignments.contains { $0.key == "STOPPING" && $0.value == "1" })
        // Workers never notify: only the main process talks to systemd.
        XCTAssertEqual(notify.assignments.filter { $0.key == "READY" }.count, 1)
    }

    func testSighup_afterAddingATable_startsItsWorker_withoutRestartingTheOthers() throws {
        var s = try startSupervisor(tables: [counterTable("alpha")])
        try s.database.executeScript(counterTablesSQL(["beta"], keys: 3))
        let alphaPID = try s.supervisor.workerPIDs()["alpha"]!
        s.config.service.watchedTables.append(counterTable("beta"))
        try ConfigFile.write(s.config, to: s.configURL)
        s.supervisor.process.send(SIGHUP)
        try waitUntil("beta's worker runs after SIGHUP") { try s.supervisor.workerPIDs()["beta"] != nil }
        XCTAssertEqual(try s.supervisor.workerPIDs()["alpha"], alphaPID, "alpha's worker must keep running (same pid)")
        try s.database.execute("UPDATE beta SET v = 9 WHERE id = 2")
        try waitUntil("beta publishes") { try self.finalValues(s.ingestor)["beta:2"] == 9 }

        // A broken config on SIGHUP is logged and the running one kept.
        try "this is = = not toml".write(to: s.configURL, atomically: true, encoding: .utf8)
        s.supervisor.process.send(SIGHUP)
        try waitUntil("the failed reload is logged") { s.supervisor.process.stderrText().contains("reload failed") }
        XCTAssertEqual(try s.supervisor.workerPIDs()["alpha"], alphaPID)
        XCTAssertEqual(try s.supervisor.health().body["status"], "healthy")
    }

    func testPrometheusEndpoint_passesPromtoolCheckMetrics() throws {
        let s = try startSupervisor(tables: ["alpha", "beta"].map(counterTable))
        try s.database.execute("UPDATE alpha SET v = 1 WHERE id = 1")
        try waitUntil("alpha publishes") { try self.finalValues(s.ingestor)["alpha:1"] == 1 }
        let response = try s.supervisor.get("/metrics/prometheus")
        XCTAssertEqual(response.status, 200)
        XCTAssertEqual(response.headers["content-type"], "text/plain; version=0.0.4; charset=utf-8")
        let text = response.bodyText
        XCTAssertTrue(text.contains("atomic_data_publisher_worker_up{table=\"alpha\"} 1"), text)
        guard let promtool = ["/usr/bin/promtool", "/usr/local/bin/promtool"].first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            return XCTFail("promtool is missing: dev/test installs Debian's prometheus package for this check")
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: promtool)
        process.arguments = ["check", "metrics"]
        let input = Pipe(), output = Pipe()
        process.standardInput = input
        process.standardOutput = output
        process.standardError = output
        try process.run()
        try input.fileHandleForWriting.write(contentsOf: Data(text.utf8))
        try input.fileHandleForWriting.close()
        process.waitUntilExit()
        let said = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertEqual(process.terminationStatus, 0, "promtool check metrics: \(said)")
        XCTAssertEqual(said.trimmingCharacters(in: .whitespacesAndNewlines), "", "promtool must report no problem")
    }
}
