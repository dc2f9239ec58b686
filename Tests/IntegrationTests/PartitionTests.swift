import Foundation
import Shared
import XCTest

/// `partitions = N`: one table's keys split by a stable hash into N shares, each with its
/// own worker and lease, on a real PostgreSQL with real supervisors.
extension DeliveryReliabilityTests {
    private func partitioned(_ count: Int) -> WatchedTable {
        var table = items
        table.partitions = count
        return table
    }

    /// An instance (supervisor) named `instance` on `table`, with the automatic fence (the ingestor
    /// timeout + 2 s) and a standby that tries every 0.5 s.
    func startInstance(_ database: TestDatabase, _ ingestor: Ingestor, table: WatchedTable, instance: String,
                       ingestorTimeoutSeconds: Int = 2, previousRelease: URL? = nil,
                       configure: (inout PublisherConfig) -> Void = { _ in }) throws -> SupervisorProcess {
        var config = ConfigFile.forTests(database: database.config, ingestorURL: ingestor.baseURL, tables: [table])
        config.service.healthCheckAddress = "127.0.0.1"
        config.service.healthCheckPort = try SupervisorProcess.freePort()
        config.service.instanceId = instance
        config.ingestor.timeoutSeconds = ingestorTimeoutSeconds
        config.service.leaseFenceSeconds = -1  // automatic: the ingestor timeout + 2 s
        config.service.leaseRetrySeconds = 0.5
        configure(&config)
        let url = try writeConfig(config, name: "\(instance).toml")
        if previousRelease != nil {
            // The previous release refuses keys it does not know.
            let text = try String(contentsOf: url, encoding: .utf8)
            try text.components(separatedBy: "\n").filter { !$0.hasPrefix("lease_expiry_seconds") }.joined(separator: "\n")
                .write(to: url, atomically: true, encoding: .utf8)
        }
        let s = try SupervisorProcess(configURL: url, healthPort: config.service.healthCheckPort, directory: workDirectory, name: instance,
                                      binaryDirectory: previousRelease)
        supervisors.append(s)
        return s
    }

    /// The instances seen in X-Publisher-Instance over every request, in arrival order, collapsed.
    func publishingOrder(_ ingestor: Ingestor) throws -> [String] {
        var order: [String] = []
        for r in try ingestor.requests() { if let i = r.header("X-Publisher-Instance"), order.last != i { order.append(i) } }
        return order
    }

    /// Worker name → lease state ("leader"/"standby") for every entry of an instance's /health.
    private func leases(_ s: SupervisorProcess) throws -> [String: String] {
        var result: [String: String] = [:]
        for (name, entry) in try s.health().body["components"]?["tables"]?.object ?? [:] {
            result[name] = entry["lease"]?.string ?? "?"
        }
        return result
    }

    /// Per key, the instances that published it, in arrival order, collapsed.
    private func publishersPerKey(_ ingestor: Ingestor) throws -> [String: [String]] {
        var result: [String: [String]] = [:]
        for r in try ingestor.requests() where r.status == 200 {
            guard let key = r.body["primary_key"]?.string, let instance = r.header("X-Publisher-Instance") else { continue }
            if result[key]?.last != instance { result[key, default: []].append(instance) }
        }
        return result
    }

    func testFourPartitionsAcrossTwoInstances_everyPartitionIsLed_eachKeyHasOnePublisher_andNoKeyGoesBackwards() throws {
        let keys = 400
        let database = try makeDatabase()
        try database.executeScript(itemsSQL(keys: keys))
        let ingestor = try startIngestor()
        addDiagnostics { Self.trackingTableSummary(database, self.items) }
        let a = try startInstance(database, ingestor, table: partitioned(4), instance: "host-a")
        let b = try startInstance(database, ingestor, table: partitioned(4), instance: "host-b")
        let partitions = ["items#0", "items#1", "items#2", "items#3"]
        var seen: ([String: String], [String: String]) = ([:], [:])
        try waitUntil(timeout: 30, "each of the four partitions has one leader and one standby across the two instances (last seen: \(seen))") {
            seen = (try self.leases(a), try self.leases(b))
            return partitions.allSatisfy { p in Set([seen.0[p], seen.1[p]]) == ["leader", "standby"] }
        }
        // Whoever started first took every lease; the partitions then spread, two each (clean
        // handoffs, one partition at a time, checked every 10 s).
        let spreadStarted = Date()
        try waitUntil(timeout: 60, "the partitions spread two and two across the instances (last seen: \(seen))") {
            seen = (try self.leases(a), try self.leases(b))
            let balanced = seen.0.values.filter { $0 == "leader" }.count == 2 && seen.1.values.filter { $0 == "leader" }.count == 2
            return balanced && partitions.allSatisfy { p in Set([seen.0[p], seen.1[p]]) == ["leader", "standby"] }
        }
        print("partitions spread two and two across two instances \(String(format: "%.1f", Date().timeIntervalSince(spreadStarted))) s after both stood")
        // Spreading moves one partition at a time: a two-and-two split can be a passing moment.
        // The leaders checked below are the ones that have held for a whole balance interval.
        var split = seen, since = Date()
        try waitUntil(timeout: 60, "the same leaders for 12 s, longer than a balance interval (last seen: \(seen))") {
            seen = (try self.leases(a), try self.leases(b))
            if seen != split { split = seen; since = Date() }
            return Date().timeIntervalSince(since) >= 12
        }
        for s in [a, b] {
            let (status, body) = try s.health()
            XCTAssertEqual(status, 200, "a standby partition is healthy: \(body)")
            let entry = body["components"]?["tables"]?["items#2"]
            XCTAssertEqual(entry?["table"]?.string, "items")
            XCTAssertEqual(entry?["partition"]?.int, 2)
            XCTAssertEqual(entry?["partitions"]?.int, 4)
            let prometheus = String(decoding: try s.get("/metrics/prometheus").body, as: UTF8.self)
            XCTAssertTrue(prometheus.contains("atomic_data_publisher_lease_leader{table=\"items\",partition=\"3\"}"), prometheus)
        }
        // Four sessions hold four distinct lease keys, and all eight hold the generation lock (4 partitions).
        XCTAssertEqual(try database.count("""
            SELECT count(DISTINCT objid) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 AND granted
              AND pid IN (SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'atomic-data-publisher/items#%')
            """), 4)
        XCTAssertEqual(try database.count("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 AND objid = 4 AND granted"), 8)

        let writer = BackgroundWriter(database: database.config, name: "partition-writer", rounds: 400, perRound: 10, keys: keys, pauseMicroseconds: 1_000)
        try waitUntil(timeout: 120, "the writer is done") { writer.isDone }
        XCTAssertNil(writer.error)
        try waitUntilEveryFinalStateArrived(database, ingestor, timeout: 120)
        let (payloads, _) = try assertNoKeyWentBackwards(ingestor)
        let publishers = try publishersPerKey(ingestor)
        let shared = publishers.filter { $0.value.count > 1 }
        XCTAssertTrue(shared.isEmpty, "a key published by two instances without a takeover: \(shared.prefix(5))")
        var perInstance: [String: Int] = [:]
        for (_, list) in publishers { perInstance[list[0], default: 0] += 1 }
        // Each key's partition, as PostgreSQL computes it: its publisher is the leader of that partition.
        let partitionOf = Dictionary(uniqueKeysWithValues: try database.execute("SELECT id::text, (hashtext(id::text) & 2147483647) % 4 FROM items").rows.map { ($0[0]!, Int($0[1]!)!) })
        let leaderOf = Dictionary(uniqueKeysWithValues: partitions.enumerated().map { ($0.offset, seen.0[$0.element] == "leader" ? "host-a" : "host-b") })
        for (key, list) in publishers {
            XCTAssertEqual(list, [leaderOf[partitionOf[key]!]!], "key \(key) (partition \(partitionOf[key]!)) was published by the leader of its partition")
        }
        print("partitions = 4 across two instances: \(payloads) payloads, keys per instance \(perInstance), leaders \(leaderOf.sorted { $0.key < $1.key })")
        for s in [a, b] { XCTAssertTrue(s.unexpectedLogLines().isEmpty, s.unexpectedLogLines().joined(separator: "\n")) }
    }

    func testChangingPartitionsOnARunningSystem_theNewCountWaitsForTheOld_thenTakesOver_losingAndReorderingNothing() throws {
        let keys = 300
        let database = try makeDatabase()
        try database.executeScript(itemsSQL(keys: keys))
        let ingestor = try startIngestor()
        addDiagnostics { Self.trackingTableSummary(database, self.items) }
        let old = try startInstance(database, ingestor, table: items, instance: "old")
        try waitUntil("the unpartitioned worker leads") { try self.leases(old)["items"] == "leader" }
        let writer = BackgroundWriter(database: database.config, name: "repartition-writer", rounds: 600, perRound: 10, keys: keys, pauseMicroseconds: 2_000)
        // The operator changes partitions to 4 on another host and starts it: it must not publish
        // while the old count still runs.
        let new = try startInstance(database, ingestor, table: partitioned(4), instance: "new")
        try waitUntil(timeout: 30, "the four new partition workers stand by, naming the old instance") {
            let entries = try new.health().body["components"]?["tables"]?.object ?? [:]
            return entries.count == 4 && entries.values.allSatisfy { $0["lease"] == "standby" && $0["leader"] == "old" }
        }
        try waitUntil("the old instance keeps publishing the stream") { try ingestor.requests().count >= 300 }
        XCTAssertEqual(Set(try ingestor.requests().compactMap { $0.header("X-Publisher-Instance") }), ["old"], "nothing from the new partition count while the old one runs")
        // The old host is reconfigured (here: stopped); the new count takes over.
        old.process.stop(timeout: 15)
        let stoppedAt = Date()
        try waitUntil(timeout: 30, "the new instance publishes") { try ingestor.requests().contains { $0.header("X-Publisher-Instance") == "new" } }
        let handover = Date().timeIntervalSince(stoppedAt)
        try waitUntil(timeout: 120, "the writer is done") { writer.isDone }
        XCTAssertNil(writer.error)
        try waitUntilEveryFinalStateArrived(database, ingestor, timeout: 120)
        let (payloads, duplicates) = try assertNoKeyWentBackwards(ingestor)
        // Globally: every request of the old count arrived before the first of the new one.
        XCTAssertEqual(try publishingOrder(ingestor), ["old", "new"], "the two partition counts never published at the same time")
        XCTAssertGreaterThanOrEqual(handover, 4, "the new count fenced (ingestor timeout 2 s + 2 s) after the old one stopped")
        XCTAssertTrue(try database.tableExists("items_changes_p4_idx"), "the new count's index exists")
        print("repartition 1 -> 4 during a stream: the new count published \(String(format: "%.2f", handover)) s after the old stopped; \(payloads) payloads, \(duplicates) repeated states")
        XCTAssertTrue(new.unexpectedLogLines().isEmpty, new.unexpectedLogLines().joined(separator: "\n"))
    }
}

/// The SQL side of partitions against a real PostgreSQL: disjoint shares, an index scan per
/// partition, the generation lock, stale indexes.
final class PartitionSchemaTests: IntegrationTestCase {
    private func table(partitions: Int) -> WatchedTable {
        var t = WatchedTable(name: "items", changeColumns: ["v"], atomicDataQuery: "SELECT id, v FROM items WHERE id = $PRIMARY_KEY", publishEndpoint: "/items")
        t.partitions = partitions
        return t
    }

    private func connect(_ database: TestDatabase, _ name: String) throws -> PostgresConnection {
        try PostgresConnection.connect(ConnectionParameters(database.config, applicationName: name))
    }

    func testFourPartitions_shareTheKeysWithoutOverlap_keepEachKeyInOneShare_andReadThroughTheirIndex() throws {
        let database = try makeDatabase()
        try database.executeScript("CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL DEFAULT 0); INSERT INTO items (id) SELECT g FROM generate_series(1, 2000) g;")
        let db = try connect(database, "partition-test")
        defer { db.close() }
        try TrackingSchema(table: table(partitions: 4)).install(on: db)
        try database.execute("UPDATE items SET v = 1")
        try database.execute("UPDATE items SET v = 2 WHERE id % 3 = 0")
        let total = try database.count("SELECT count(*) FROM items_changes")
        var owner: [String: Int] = [:]
        var rows = 0
        for index in 0..<4 {
            let schema = TrackingSchema(table: table(partitions: 4), partition: TablePartition(index: index, count: 4))
            let due = try schema.fetchDue(db, limit: 10_000)
            rows += due.count
            XCTAssertGreaterThan(due.count, total / 8, "partition \(index) has a fair share: \(due.count) of \(total)")
            for row in due {
                if let other = owner[row.primaryKey], other != index { XCTFail("key \(row.primaryKey) in partitions \(other) and \(index)") }
                owner[row.primaryKey] = index
            }
            XCTAssertEqual(try db.execute(schema.anyDueSQL)[0, 0], "t")
            XCTAssertEqual(try schema.backlog(db).count, due.count, "partition \(index)'s backlog counts its own rows")
        }
        XCTAssertEqual(rows, total, "the four partitions together read every row once")
        XCTAssertEqual(owner.count, 2000)

        // A large backlog: a partition's batch is an index scan in id order, not a scan and sort.
        try database.execute("INSERT INTO items_changes (primary_key, operation) SELECT (g % 50000)::text, 'U' FROM generate_series(1, 300000) g")
        try database.execute("ANALYZE items_changes")
        let schema = TrackingSchema(table: table(partitions: 4), partition: TablePartition(index: 2, count: 4))
        let plan = try db.execute("EXPLAIN " + schema.fetchDueSQL.replacingOccurrences(of: "$1", with: "100")).rows.compactMap { $0[0] }.joined(separator: "\n")
        XCTAssertTrue(plan.contains("items_changes_p4_idx"), plan)
        XCTAssertFalse(plan.contains("Sort"), plan)
        XCTAssertFalse(plan.contains("Seq Scan on items_changes c"), plan)
        let started = Date()
        _ = try schema.fetchDue(db, limit: 100)
        print("partition 2 of 4: a batch of 100 from 300,000 tracking rows took \(String(format: "%.1f", Date().timeIntervalSince(started) * 1000)) ms; plan:\n\(plan)")
    }

    func testGenerationLock_workersWithAnotherPartitionCount_seeEachOther_andStaleIndexesAreDroppedOnlyWhenUnused() throws {
        let database = try makeDatabase()
        try database.executeScript("CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL DEFAULT 0);")
        let one = try connect(database, "atomic-data-publisher/items@host-one")
        let four = try connect(database, "atomic-data-publisher/items#0@host-four")
        defer { one.close(); four.close() }
        let whole = TrackingSchema(table: table(partitions: 1))
        let quarter = TrackingSchema(table: table(partitions: 4), partition: TablePartition(index: 0, count: 4))
        try quarter.install(on: four)
        try TrackingSchema(table: table(partitions: 2)).install(on: four)  // an index of a former count
        XCTAssertTrue(try database.tableExists("items_changes_p2_idx"))
        XCTAssertTrue(try database.tableExists("items_changes_p4_idx"))

        try whole.takeGeneration(one)
        try quarter.takeGeneration(four)
        XCTAssertEqual(try quarter.otherGenerations(four), [TrackingSchema.OtherGeneration(partitions: 1, applicationName: "atomic-data-publisher/items@host-one")])
        XCTAssertEqual(try whole.otherGenerations(one).map(\.partitions), [4], "each side sees the other")
        // The lease keys differ per partition and the whole table's is unchanged by the feature.
        XCTAssertNotEqual(quarter.leaseKey, whole.leaseKey)
        XCTAssertNotEqual(quarter.leaseKey, TrackingSchema(table: table(partitions: 4), partition: TablePartition(index: 1, count: 4)).leaseKey)
        XCTAssertEqual(whole.leaseKey, TrackingSchema(table: table(partitions: 1), partition: .whole).leaseKey)

        // Index p2: no session holds generation 2, so the 4-partition worker drops it; p4 stays.
        XCTAssertEqual(try quarter.dropStalePartitionIndexes(four), ["items_changes_p2_idx"])
        XCTAssertFalse(try database.tableExists("items_changes_p2_idx"))
        // The whole-table worker would drop p4, but generation 4 is held: it stays.
        XCTAssertEqual(try whole.dropStalePartitionIndexes(one), [])
        XCTAssertTrue(try database.tableExists("items_changes_p4_idx"))
        try quarter.releaseGeneration(four)
        XCTAssertEqual(try whole.otherGenerations(one), [])
        XCTAssertEqual(try whole.dropStalePartitionIndexes(one), ["items_changes_p4_idx"])
    }
}

extension DeliveryReliabilityTests {
    /// Every partition's worker sleeps on its own flag; the trigger notifies the changed key's
    /// partition, so a change after idle is delivered at once whatever partition it falls in.
    func testFourPartitionsAsleep_aChangeInEachPartition_isDeliveredWithoutWaitingForThePoll() throws {
        let database = try makeDatabase()
        try database.executeScript(itemsSQL(keys: 40))
        let ingestor = try startIngestor()
        var config = ConfigFile.forTests(database: database.config, ingestorURL: ingestor.baseURL, tables: [{ var t = items; t.partitions = 4; return t }()])
        config.service.healthCheckAddress = "127.0.0.1"
        config.service.healthCheckPort = try SupervisorProcess.freePort()
        config.service.pollingIntervalSeconds = 60  // a missed wake-up would wait for it
        let s = try SupervisorProcess(configURL: try writeConfig(config), healthPort: config.service.healthCheckPort, directory: workDirectory, name: "partitions")
        supervisors.append(s)
        let key32 = TrackingSchema(table: { var t = items; t.partitions = 4; return t }()).partitionWakeKey
        try waitUntil(timeout: 30, "the four partition workers sleep on their own flags") {
            try database.count("SELECT count(DISTINCT objid) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2 AND classid = $1::bigint::oid",
                               [String(UInt32(bitPattern: key32))]) == 4
        }
        // One key of each partition, one after the other, each once every worker sleeps again.
        let keys = try database.execute("SELECT DISTINCT ON ((hashtext(id::text) & 2147483647) % 4) id, (hashtext(id::text) & 2147483647) % 4 FROM items ORDER BY 2, 1").rows
        XCTAssertEqual(keys.count, 4)
        for (round, row) in keys.enumerated() {
            try waitUntil("every partition worker sleeps") {
                try database.count("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2 AND classid = $1::bigint::oid",
                                   [String(UInt32(bitPattern: key32))]) == 4
            }
            let started = Date()
            try database.execute("UPDATE items SET v = $1 WHERE id = $2", [String(round + 1), row[0]!])
            try waitUntil(timeout: 5, "the change of partition \(row[1]!) arrives long before the 60 s poll") {
                try ingestor.requests().contains { $0.body["primary_key"]?.string == row[0]! }
            }
            print("partition \(row[1]!): first change after idle delivered in \(Int(Date().timeIntervalSince(started) * 1000)) ms")
        }
    }
}
