import Foundation
import Shared
import Synchronization
import XCTest

/// Two instances on two simulated hosts (network namespaces), PostgreSQL and the ingestor on a
/// third address of the test's own network. The leading host's link is cut during a write stream
/// (no FIN, no RST): its lease must be released by PostgreSQL's keepalives within ~30 s, the
/// standby must lead after the fence, no key may go backwards, nothing may be lost, and the old
/// leader must come back as a standby.
final class NetworkPartitionTests: IntegrationTestCase {
    private var network: TestNetwork?
    private var postgres: NetworkPostgresServer?
    private var instances: [SupervisorProcess] = []

    override func tearDownWithError() throws {
        for s in instances where s.process.isRunning { s.process.stop(timeout: 15) }
        instances.removeAll()
        postgres?.stop()
        network?.tearDown()
        try super.tearDownWithError()
    }

    private let items = WatchedTable(name: "items", changeColumns: ["v"],
                                     atomicDataQuery: "SELECT id, v FROM items WHERE id = $PRIMARY_KEY",
                                     publishEndpoint: "/api/v1/items")

    func testCuttingTheLeadersLink_aStandbyLeadsWithin30sPlusTheFence_andNoKeyGoesBackwards() throws {
        let net = try TestNetwork(hostCount: 2, logDirectory: workDirectory)
        network = net
        let pg = try NetworkPostgresServer(directory: workDirectory.appendingPathComponent("net-pg"), listen: TestNetwork.gateway)
        postgres = pg
        let keys = 100
        let admin = try PostgresConnection.connect(ConnectionParameters(pg.localConfig, applicationName: "partition-test"))
        try admin.executeScript("CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL DEFAULT 0); INSERT INTO items (id) SELECT g FROM generate_series(1, \(keys)) g;")
        let ingestor = try startIngestor(host: TestNetwork.gateway)

        var byName: [String: SupervisorProcess] = [:]
        for host in net.hosts {
            var database = pg.localConfig
            database.host = TestNetwork.gateway
            var config = ConfigFile.forTests(database: database, ingestorURL: ingestor.baseURL, tables: [items])
            config.service.healthCheckAddress = host.address
            config.service.healthCheckPort = 3000
            config.service.instanceId = host.name
            config.ingestor.timeoutSeconds = 2
            config.service.leaseFenceSeconds = -1  // automatic: 4 s
            config.service.leaseRetrySeconds = 0.5
            // database keepalives: the defaults (10 s idle, 5 s apart, 3 probes; tcp_user_timeout 30 s)
            let url = try writeConfig(config, name: "\(host.name).toml")
            let s = try SupervisorProcess(configURL: url, healthPort: 3000, directory: workDirectory, name: host.name, wrapper: net.wrapper(host))
            s.healthHost = host.address
            instances.append(s)
            byName[host.name] = s
            addDiagnostics { s.process.stderrTail() }
        }
        var leaderName = ""
        try waitUntil(timeout: 30, "one host leads") {
            for (name, s) in byName where (try? s.health().body["components"]?["tables"]?["items"]?["lease"]) == "leader" { leaderName = name }
            return !leaderName.isEmpty
        }
        let leaderHost = net.hosts.first { $0.name == leaderName }!
        let standbyName = net.hosts.first { $0.name != leaderName }!.name

        // A stream of changes through the cut: 40 s, 50 changes a second.
        let writer = BackgroundWriter(database: pg.localConfig, name: "partition-writer", rounds: 400, perRound: 5, keys: keys, pauseMicroseconds: 100_000)
        try waitUntil("the leader publishes") { try ingestor.requests().count >= 50 }
        try net.cut(leaderHost)
        let cutAt = Date()
        try waitUntil(timeout: 90, "the standby takes over and publishes") {
            try ingestor.requests().contains { $0.header("X-Publisher-Instance") == standbyName }
        }
        let takeover = Date().timeIntervalSince(cutAt)
        print("network cut of the leading host: the standby published \(String(format: "%.1f", takeover)) s after the cut (keepalives 10 s + 3 x 5 s, fence 4 s)")
        XCTAssertLessThanOrEqual(takeover, 30 + 4 + 5, "within 30 s plus the fence and the lease retry")

        try waitUntil(timeout: 90, "the writer is done") { writer.isDone }
        XCTAssertNil(writer.error)
        // The old leader comes back as a standby once its link is restored.
        try net.restore(leaderHost)
        try waitUntil(timeout: 60, "the old leader is back, standing by") {
            let entry = try? byName[leaderName]!.health().body["components"]?["tables"]?["items"]
            return entry?["lease"] == "standby" && entry?["leader"] == .string(standbyName)
        }
        let expected = Dictionary(uniqueKeysWithValues: try admin.execute("SELECT id::text, v FROM items WHERE v > 0").rows.map { ($0[0]!, Int($0[1]!)!) })
        var sequences: [String: [Int]] = [:]
        try waitUntil(timeout: 60, "every key's final state arrives") {
            sequences = [:]
            for r in try ingestor.requests() where r.status == 200 {
                if let k = r.body["primary_key"]?.string, let v = r.body["atomic_data"]?[0]?["v"]?.int { sequences[k, default: []].append(v) }
            }
            return expected.allSatisfy { sequences[$0.key]?.last == $0.value }
        }
        for (key, values) in sequences {
            XCTAssertEqual(values, values.sorted(), "key \(key) went backwards: \(values)")
        }
        // After the cut, only the new leader published.
        let cutIndex = try ingestor.requests().lastIndex { $0.header("X-Publisher-Instance") == leaderName } ?? -1
        let afterCut = try ingestor.requests().suffix(from: cutIndex + 1)
        XCTAssertTrue(afterCut.allSatisfy { $0.header("X-Publisher-Instance") == standbyName }, "the old leader published after the new one started")
        XCTAssertEqual(try byName[standbyName]!.metrics()["tables"]?["items"]?["takeovers"]?.int, 1)
    }
}
