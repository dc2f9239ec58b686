import Foundation
import Shared
import Synchronization
import XCTest

/// Several instances on one database, for failover: table leases through PostgreSQL advisory locks.
extension SupervisorProcessTests {
    private func leaseConfig(_ database: TestDatabase, _ ingestor: Ingestor, tables: [WatchedTable], instance: String) throws -> (PublisherConfig, URL) {
        var config = ConfigFile.forTests(database: database.config, ingestorURL: ingestor.baseURL, tables: tables)
        config.service.healthCheckAddress = "127.0.0.1"
        config.service.healthCheckPort = try SupervisorProcess.freePort()
        config.service.instanceId = instance
        config.ingestor.timeoutSeconds = 2
        config.service.leaseFenceSeconds = -1  // automatic: the ingestor timeout + 2 s
        config.service.leaseRetrySeconds = 0.5
        return (config, try writeConfig(config, name: "\(instance).toml"))
    }

    /// Per table, the instances seen in X-Publisher-Instance, in arrival order, collapsed.
    private func publishersOverTime(_ ingestor: Ingestor) throws -> [String: [String]] {
        var result: [String: [String]] = [:]
        for request in try ingestor.requests() {
            guard let table = request.body["table_name"]?.string, let instance = request.header("X-Publisher-Instance") else { continue }
            if result[table]?.last != instance { result[table, default: []].append(instance) }
        }
        return result
    }

    func testThreeInstancesOnOneDatabase_eachTableIsPublishedByExactlyOne_andEveryStateArrivesOnce() throws {
        let tables = ["alpha", "beta"].map(counterTable)
        let database = try makeDatabase()
        try database.executeScript(counterTablesSQL(["alpha", "beta"], keys: 50))
        let ingestor = try startIngestor()
        var instances: [SupervisorProcess] = []
        for name in ["host-a", "host-b", "host-c"] {
            let (config, url) = try leaseConfig(database, ingestor, tables: tables, instance: name)
            instances.append(try launch(configURL: url, port: config.service.healthCheckPort))
        }
        for table in tables { addDiagnostics { Self.trackingTableSummary(database, table) } }
        try waitUntil(timeout: 30, "every table has a leader and two standbys") {
            var leaders: [String: Int] = [:]
            var standbys: [String: Int] = [:]
            for s in instances {
                for (name, entry) in try s.health().body["components"]?["tables"]?.object ?? [:] {
                    if entry["lease"] == "leader" { leaders[name, default: 0] += 1 }
                    if entry["lease"] == "standby" && entry["leader"] != nil { standbys[name, default: 0] += 1 }
                }
            }
            return leaders == ["alpha": 1, "beta": 1] && standbys == ["alpha": 2, "beta": 2]
        }
        // A standby instance is healthy and names the leader.
        for s in instances {
            let (status, body) = try s.health()
            XCTAssertEqual(status, 200, "\(body)")
            for name in ["alpha", "beta"] {
                let entry = body["components"]?["tables"]?[name]
                if entry?["lease"] == "standby" { XCTAssertNotNil(entry?["leader"]?.string, "\(body)") }
            }
        }
        // Rounds of changes, each drained before the next (so no batch's covered-row limit can make
        // a key publish the same state twice: any repeat would come from a second publisher).
        for round in 1...10 {
            for table in ["alpha", "beta"] { try database.execute("UPDATE \(table) SET v = \(round) WHERE id <= 25 OR id % \(round) = 0") }
            for table in tables { try waitUntilTrackingTableIsEmpty(database, table) }
        }
        let expected = try expectedValues(database, tables: ["alpha", "beta"])
        try waitUntil(timeout: 60, "every key's final state arrives") { try self.finalValues(ingestor) == expected }
        let publishers = try publishersOverTime(ingestor)
        print("three instances: publishers per table over time: \(publishers)")
        XCTAssertEqual(publishers["alpha"]?.count, 1, "one instance published alpha, at every moment: \(publishers)")
        XCTAssertEqual(publishers["beta"]?.count, 1, "one instance published beta, at every moment: \(publishers)")
        var seen: [String: Int] = [:]
        for r in try ingestor.requests() where r.status == 200 {
            seen["\(r.body["table_name"]?.string ?? ""):\(r.body["primary_key"]?.string ?? ""):\(r.body["atomic_data"]?[0]?["v"]?.int ?? -1)", default: 0] += 1
        }
        XCTAssertEqual(seen.values.filter { $0 > 1 }.count, 0, "a state published twice: \(seen.filter { $0.value > 1 })")
        for s in instances {
            XCTAssertTrue(s.unexpectedLogLines().isEmpty, s.unexpectedLogLines().joined(separator: "\n"))
        }
    }

    func testAStandaloneWorker_nextToASupervisedOne_standsBy_andPublishesNothing() throws {
        let database = try makeDatabase()
        try database.executeScript(counterTablesSQL(["alpha"], keys: 5))
        let ingestor = try startIngestor()
        let (config, url) = try leaseConfig(database, ingestor, tables: [counterTable("alpha")], instance: "supervised")
        let supervisor = try launch(configURL: url, port: config.service.healthCheckPort)
        try waitUntil("the supervised worker leads") {
            try supervisor.health().body["components"]?["tables"]?["alpha"]?["lease"] == "leader"
        }
        var standaloneConfig = config
        standaloneConfig.service.instanceId = "standalone"
        let standalone = try startWorker(table: "alpha", config: try writeConfig(standaloneConfig, name: "standalone.toml"))
        try waitUntil("the standalone worker stands by, naming the leader") {
            standalone.latestStats()?["lease"] == "standby" && standalone.latestStats()?["lease_holder"] == "supervised"
        }
        for v in 1...5 { try database.execute("UPDATE alpha SET v = \(v)") }
        try waitUntil("every key's final state arrives") { try self.finalValues(ingestor).count == 5 && self.finalValues(ingestor).values.allSatisfy { $0 == 5 } }
        let instances = Set(try ingestor.requests().compactMap { $0.header("X-Publisher-Instance") })
        XCTAssertEqual(instances, ["supervised"], "the standalone worker published nothing")
    }

    func testTenInstancesStartingAtOnce_createTheObjectsOnce_withoutAnyError() throws {
        let database = try makeDatabase()
        try database.executeScript(counterTablesSQL(["alpha"], keys: 3))
        let ingestor = try startIngestor()
        var instances: [SupervisorProcess] = []
        var configs: [(PublisherConfig, URL)] = []
        for i in 1...10 { configs.append(try leaseConfig(database, ingestor, tables: [counterTable("alpha")], instance: "node-\(i)")) }
        for (config, url) in configs { instances.append(try launch(configURL: url, port: config.service.healthCheckPort)) }
        try waitUntil(timeout: 60, "all ten run a worker, one of them leading") {
            var leaders = 0
            for s in instances {
                let entry = try s.health().body["components"]?["tables"]?["alpha"]
                guard entry?["state"] == "running", entry?["lease"] == "leader" || entry?["lease"] == "standby" else { return false }
                if entry?["lease"] == "leader" { leaders += 1 }
            }
            return leaders == 1
        }
        XCTAssertEqual(try database.count("SELECT count(*) FROM pg_trigger WHERE tgname = 'atomic_data_publisher_capture'"), 1)
        XCTAssertTrue(try database.tableExists("alpha_changes"))
        try database.execute("UPDATE alpha SET v = 9 WHERE id = 2")
        try waitUntil("the change is published once") { try self.finalValues(ingestor)["alpha:2"] == 9 }
        for s in instances {
            let unexpected = s.unexpectedLogLines()
            XCTAssertTrue(unexpected.isEmpty, "\(s.process.name): \(unexpected.joined(separator: "\n"))")
            XCTAssertEqual(try s.metrics()["tables"]?["alpha"]?["restarts"], 0)
        }
    }
}

extension DeliveryReliabilityTests {
    /// Two instances ("host-a", "host-b") on `items`: once one leads and the other stands by, the
    /// instances and which is which.
    func startLeaderAndStandby(_ database: TestDatabase, _ ingestor: Ingestor, ingestorTimeoutSeconds: Int) throws
        -> (instances: [String: SupervisorProcess], leader: String, standby: String) {
        var instances: [String: SupervisorProcess] = [:]
        for name in ["host-a", "host-b"] {
            instances[name] = try startInstance(database, ingestor, table: items, instance: name, ingestorTimeoutSeconds: ingestorTimeoutSeconds)
        }
        var leaderName = ""
        try waitUntil(timeout: 30, "one instance leads") {
            for (name, s) in instances where try s.health().body["components"]?["tables"]?["items"]?["lease"] == "leader" { leaderName = name }
            return !leaderName.isEmpty
        }
        let standbyName = leaderName == "host-a" ? "host-b" : "host-a"
        try waitUntil("the standby stands by") { try instances[standbyName]!.health().body["components"]?["tables"]?["items"]?["lease"] == "standby" }
        return (instances, leaderName, standbyName)
    }

    /// After the leader went away at `since`: the standby publishes (the seconds that took), the
    /// writer finishes, every key's final state arrives and none went backwards (the payloads).
    func waitForTakeover(by standby: String, since: Date, _ database: TestDatabase, _ ingestor: Ingestor,
                         _ writer: BackgroundWriter) throws -> (seconds: Double, payloads: Int) {
        try waitUntil(timeout: 30, "the standby publishes") {
            try ingestor.requests().contains { $0.header("X-Publisher-Instance") == standby }
        }
        let seconds = Date().timeIntervalSince(since)
        try waitUntil(timeout: 120, "the writer is done") { writer.isDone }
        XCTAssertNil(writer.error)
        try waitUntilEveryFinalStateArrived(database, ingestor, timeout: 120)
        return (seconds, try assertNoKeyWentBackwards(ingestor).payloads)
    }

    /// kill -9 of the leading instance (supervisor and workers, as a dying host) during a write
    /// stream: a standby takes over after the fence; every key's final state arrives and no key
    /// goes backwards.
    func testKillNineOfTheLeadingInstance_duringAStream_aStandbyTakesOver_andNoKeyGoesBackwards() throws {
        let keys = 300, changes = 6_000
        let database = try makeDatabase()
        try database.executeScript(itemsSQL(keys: keys))
        let ingestor = try startIngestor()
        addDiagnostics { Self.trackingTableSummary(database, self.items) }
        let (instances, leaderName, standbyName) = try startLeaderAndStandby(database, ingestor, ingestorTimeoutSeconds: 2)  // fence 4 s
        let leader = instances[leaderName]!

        let writer = BackgroundWriter(database: database.config, name: "lease-test-writer", rounds: changes / 10, perRound: 10, keys: keys, pauseMicroseconds: 2_000)
        try waitUntil("the leader publishes part of the stream") { try ingestor.requests().count >= 200 }
        // The host dies: the supervisor and its workers at once.
        let workerPID = try leader.workerPIDs()["items"]
        leader.process.send(SIGKILL)
        if let workerPID { kill(workerPID, SIGKILL) }
        let killedAt = Date()
        let beforeKill = try ingestor.requests().count
        let (failover, payloads) = try waitForTakeover(by: standbyName, since: killedAt, database, ingestor, writer)
        var seen: [String: Int] = [:]
        for request in try ingestor.requests() where request.status == 200 { seen[request.body["id"]?.string ?? "", default: 0] += 1 }
        let duplicates = seen.values.reduce(0) { $0 + $1 - 1 }
        print("lease takeover after kill -9 of the leading instance: the standby published \(String(format: "%.2f", failover)) s later (fence 4 s = ingestor timeout 2 s + 2 s); \(payloads) payloads, \(duplicates) duplicate ids; \(beforeKill) requests before the kill")
        let takeovers = try instances[standbyName]!.metrics()["tables"]?["items"]?["takeovers"]?.int
        XCTAssertEqual(takeovers, 1)
        XCTAssertGreaterThanOrEqual(failover, 4, "the new holder waited for the fence before its first request")
    }
}

extension DeliveryReliabilityTests {
    /// A leader that stops gracefully (SIGTERM, a deploy) with nothing in flight hands its lease
    /// over: the standby publishes without waiting the fence, and order holds.
    func testGracefulStopOfTheLeader_handsTheLeaseOver_theStandbyPublishesWithoutTheFence() throws {
        let keys = 200
        let database = try makeDatabase()
        try database.executeScript(itemsSQL(keys: keys))
        let ingestor = try startIngestor()
        addDiagnostics { Self.trackingTableSummary(database, self.items) }
        let (instances, leaderName, standbyName) = try startLeaderAndStandby(database, ingestor, ingestorTimeoutSeconds: 5)  // fence 7 s
        let writer = BackgroundWriter(database: database.config, name: "handoff-writer", rounds: 400, perRound: 10, keys: keys, pauseMicroseconds: 2_000)
        try waitUntil("the leader publishes part of the stream") { try ingestor.requests().count >= 200 }
        let stoppedAt = Date()
        instances[leaderName]!.process.send(SIGTERM)
        let (handover, payloads) = try waitForTakeover(by: standbyName, since: stoppedAt, database, ingestor, writer)
        XCTAssertEqual(try publishingOrder(ingestor), [leaderName, standbyName], "the old leader sent nothing after the handover")
        let log = instances[standbyName]!.process.stderrText()
        XCTAssertTrue(log.contains("\"clean_handoff\":\"true\""), "the standby took over from a clean handoff:\n\(log.suffix(3000))")
        XCTAssertTrue(instances[leaderName]!.process.stderrText().contains("handed the lease of this table over"))
        print("graceful stop of the leader: the standby published \(String(format: "%.2f", handover)) s later (fence 7 s not needed); \(payloads) payloads")
        XCTAssertLessThan(handover, 7, "no fence after a clean handoff")
    }
}
