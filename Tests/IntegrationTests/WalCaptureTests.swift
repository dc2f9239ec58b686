import Foundation
import Shared
import XCTest

/// `capture = "wal"`: the lease holder reads the table's logical replication slot and writes the
/// keys into T_changes; the documents, order and loss guarantees are trigger mode's. These tests
/// run on a server of their own with wal_level = logical (OwnPostgresServer).
extension DeliveryReliabilityTests {
    var walHotspots: WatchedTable {
        var table = hotspots
        table.capture = .wal
        return table
    }

    var walItems: WatchedTable {
        var table = items
        table.capture = .wal
        return table
    }

    func useLogicalServer() throws {
        useServer(try OwnPostgresServer.shared(walLevel: "logical").config)
    }

    /// The highest tracking id a payload covers (the last part of its `id`).
    func trackingId(_ request: RecordedRequest) -> Int {
        Int(request.body["id"]?.string?.split(separator: ":").last ?? "") ?? -1
    }

    /// The WAL tests' usual start on the logical server: a database with `items` 1...`keys` (and
    /// `extraSQL`), an ingestor, and a configuration of `table` with a health port;
    /// `crashTolerant`: restarts within 0.5 s and no lease fence, for the kill -9 tests.
    func walSetup(keys: Int, extraSQL: String = "", table: WatchedTable? = nil, crashTolerant: Bool = false) throws
        -> (database: TestDatabase, ingestor: Ingestor, config: PublisherConfig, configURL: URL) {
        try useLogicalServer()
        let database = try makeDatabase()
        try database.executeScript(itemsSQL(keys: keys) + extraSQL)
        let ingestor = try startIngestor()
        var config = ConfigFile.forTests(database: database.config, ingestorURL: ingestor.baseURL, tables: [table ?? walItems])
        config.service.healthCheckAddress = "127.0.0.1"
        config.service.healthCheckPort = try SupervisorProcess.freePort()
        if crashTolerant {
            config.service.restartDelaySeconds = 0.1
            config.service.maxRestartDelaySeconds = 0.5
            config.service.leaseFenceSeconds = 0
        }
        let configURL = try writeConfig(config)
        addDiagnostics { Self.trackingTableSummary(database, self.items) }
        return (database, ingestor, config, configURL)
    }

    /// Triggers on `tables` that are not PostgreSQL's own (foreign keys): ours, in trigger mode.
    func userTriggers(_ database: TestDatabase, on tables: [String]) throws -> Int {
        try database.count("SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal AND tgrelid = ANY ($1::regclass[])",
                           ["{" + tables.joined(separator: ",") + "}"])
    }

    func testWALCapture_theSeedsExample_updateInsertDeleteAndARewardArriveAsInTriggerMode_andNoTriggerOfOursIsOnTheTables() throws {
        try useLogicalServer()
        // rewards: a deleted reward must say which hotspot it belonged to (its replica identity).
        let p = try startPipeline(schemaSQL: hotspotsSQL(keys: 3) + "ALTER TABLE rewards REPLICA IDENTITY FULL;", tables: [walHotspots])
        XCTAssertEqual(try userTriggers(p.database, on: ["hotspots", "rewards"]), 0, "WAL mode puts nothing in the application's write path")
        let slot = TrackingSchema(table: walHotspots).slotName(database: p.database.name)
        XCTAssertTrue(slot.hasPrefix("adp_hotspots_"), slot)
        XCTAssertEqual(try p.database.count("SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1 AND plugin = 'pgoutput'", [slot]), 1)

        try p.database.execute("UPDATE hotspots SET name = 'renamed', updated_at = now() + interval '1 minute' WHERE id = 1")
        try p.database.execute("INSERT INTO hotspots (id, name) VALUES (4, 'hotspot 4')")
        try p.database.execute("DELETE FROM hotspots WHERE id = 2")
        try p.database.execute("INSERT INTO rewards (hotspot_id, amount) VALUES (3, 40)")
        try p.database.execute("UPDATE rewards SET note = 'not a change column' WHERE hotspot_id = 3")
        let requests = try waitForRequests(p.ingestor, count: 4)
        try waitUntilTrackingTableIsEmpty(p.database, walHotspots)
        var byKey: [String: RecordedRequest] = [:]
        for r in requests { byKey[r.body["primary_key"]?.string ?? "?"] = r }
        // Tracking ids follow commit order (requests for different keys may overtake each other).
        let byTrackingId = requests.sorted { trackingId($0) < trackingId($1) }
        XCTAssertEqual(byTrackingId.map { $0.body["primary_key"]?.string ?? "?" }, ["1", "4", "2", "3"], "tracking ids in commit order")
        XCTAssertEqual(byKey["1"]?.body["operation"], "update")
        XCTAssertEqual(byKey["1"]?.body["atomic_data"]?[0]?["name"], "renamed")
        XCTAssertEqual(byKey["1"]?.body["change_column_value"]?.string, try p.database.value("SELECT updated_at::text FROM hotspots WHERE id = 1"),
                       "the change column's text, as the trigger records it")
        XCTAssertEqual(byKey["4"]?.body["operation"], "insert")
        XCTAssertEqual(byKey["4"]?.body["atomic_data"]?[0]?["name"], "hotspot 4")
        XCTAssertEqual(byKey["2"]?.body["operation"], "delete")
        XCTAssertEqual(byKey["2"]?.body["atomic_data"], [])
        XCTAssertEqual(byKey["3"]?.body["operation"], "update")
        XCTAssertEqual(byKey["3"]?.body["cause"], ["table": "rewards", "schema": "public", "operation": "insert"])
        XCTAssertEqual(byKey["3"]?.body["atomic_data"]?[0]?["amounts"], [.number(40)])
        for r in requests { XCTAssertEqual(r.status, 200) }
        XCTAssertEqual(try trackingRowsWritten(p.database), 4, "the note's update changed no listed column: nothing enqueued")
        XCTAssertEqual(try p.ingestor.requests().count, 4)
    }

    /// kill -9 of the supervisor (and its worker: the whole instance, its stream cut mid-batch)
    /// three times during a write stream: the slot is read again from its confirmed position.
    func testWALCapture_killNineOfTheInstanceThreeTimesDuringAStream_everyFinalStateArrives_andNoKeyGoesBackwards() throws {
        let keys = 300, changes = 6_000
        let (database, ingestor, config, configURL) = try walSetup(keys: keys, crashTolerant: true)
        func launch() throws -> SupervisorProcess {
            let s = try SupervisorProcess(configURL: configURL, healthPort: config.service.healthCheckPort, directory: workDirectory,
                                          name: "supervisor-\(supervisors.count + 1)")
            supervisors.append(s)
            try waitUntil("the supervisor's worker runs") { try s.workerPIDs()["items"] != nil }
            return s
        }
        var supervisor = try launch()
        let writer = BackgroundWriter(database: database.config, name: "wal-crash-writer", rounds: changes / 10, perRound: 10, keys: keys, pauseMicroseconds: 10_000)
        var kills = 0
        while kills < 3 {
            XCTAssertFalse(writer.isDone, "each kill comes during the stream")
            let before = try ingestor.requests().count
            try waitUntil("the instance publishes") { try ingestor.requests().count > before + 20 }
            let worker = try supervisor.workerPIDs()["items"]
            supervisor.process.send(SIGKILL)
            if let worker { kill(worker, SIGKILL) }
            _ = supervisor.process.waitForExit(timeout: 5)
            kills += 1
            supervisor = try launch()
        }
        try waitUntil(timeout: 120, "the writer is done") { writer.isDone }
        XCTAssertNil(writer.error)
        try waitUntilEveryFinalStateArrived(database, ingestor, timeout: 120)
        let (payloads, sameState) = try assertNoKeyWentBackwards(ingestor)
        XCTAssertEqual(try databaseValues(database).values.reduce(0, +), changes)
        XCTAssertEqual(try userTriggers(database, on: ["items"]), 0)
        // The slot's figures, in /health, /metrics and Prometheus, once the worker has read them.
        try waitUntil("the slot's retained WAL is reported") { try supervisor.health().body["components"]?["tables"]?["items"]?["wal_retained_bytes"]?.int != nil }
        XCTAssertNotNil(try supervisor.metrics()["tables"]?["items"]?["wal_confirmed_lag_bytes"]?.int)
        let prometheus = String(decoding: try supervisor.get("/metrics/prometheus").body, as: UTF8.self)
        XCTAssertTrue(prometheus.contains("atomic_data_publisher_wal_retained_bytes{table=\"items\"}"), prometheus)
        // The slot's headroom: this server sets no max_slot_wal_keep_size, so no safe bytes.
        let slotFigures = try supervisor.health().body["components"]?["tables"]?["items"]
        XCTAssertEqual(slotFigures?["wal_status"], "reserved")
        XCTAssertEqual(slotFigures?["wal_safe_bytes"], .null)
        XCTAssertTrue(prometheus.contains("atomic_data_publisher_wal_status{table=\"items\",status=\"reserved\"} 1"), prometheus)
        XCTAssertFalse(prometheus.contains("atomic_data_publisher_wal_safe_bytes{"), prometheus)
        print("WAL capture, kill -9 of the instance 3 times: \(changes) changes, \(payloads) payloads, \(sameState) consecutive payloads with an unchanged state")
    }

    /// Two instances: only the leader streams; kill -9 of the leader, and the standby continues
    /// the same slot from its confirmed position.
    func testWALCapture_twoInstances_killNineOfTheLeader_theStandbyContinuesTheSameSlot_andNothingIsLost() throws {
        try useLogicalServer()
        let keys = 300, changes = 6_000
        let database = try makeDatabase()
        try database.executeScript(itemsSQL(keys: keys))
        let ingestor = try startIngestor()
        addDiagnostics { Self.trackingTableSummary(database, self.walItems) }
        var instances: [String: SupervisorProcess] = [:]
        for name in ["host-a", "host-b"] {
            instances[name] = try startInstance(database, ingestor, table: walItems, instance: name)
        }
        var leaderName = ""
        try waitUntil(timeout: 30, "one instance leads") {
            for (name, s) in instances where try s.health().body["components"]?["tables"]?["items"]?["lease"] == "leader" { leaderName = name }
            return !leaderName.isEmpty
        }
        let standbyName = leaderName == "host-a" ? "host-b" : "host-a"
        try waitUntil("the standby stands by") { try instances[standbyName]!.health().body["components"]?["tables"]?["items"]?["lease"] == "standby" }
        let slot = TrackingSchema(table: walItems).slotName(database: database.name)
        let streamers = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender' AND application_name LIKE 'atomic-data-publisher-wal/items@%'"
        try waitUntil("the leader streams the slot") { try database.count("SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1 AND active", [slot]) == 1 }
        XCTAssertEqual(try database.count(streamers), 1, "only the lease holder streams")
        XCTAssertEqual(try database.count("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender' AND application_name = $1",
                                          ["atomic-data-publisher-wal/items@\(leaderName)"]), 1)

        let writer = BackgroundWriter(database: database.config, name: "wal-takeover-writer", rounds: changes / 10, perRound: 10, keys: keys, pauseMicroseconds: 2_000)
        try waitUntil("the leader publishes part of the stream") { try ingestor.requests().count >= 200 }
        let workerPID = try instances[leaderName]!.workerPIDs()["items"]
        instances[leaderName]!.process.send(SIGKILL)
        if let workerPID { kill(workerPID, SIGKILL) }
        try waitUntil(timeout: 30, "the standby streams the same slot") {
            try database.count("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender' AND application_name = $1",
                               ["atomic-data-publisher-wal/items@\(standbyName)"]) == 1
        }
        try waitUntil(timeout: 120, "the writer is done") { writer.isDone }
        XCTAssertNil(writer.error)
        try waitUntilEveryFinalStateArrived(database, ingestor, timeout: 120)
        let (payloads, _) = try assertNoKeyWentBackwards(ingestor)
        var seen: [String: Int] = [:]
        for request in try ingestor.requests() where request.status == 200 { seen[request.body["id"]?.string ?? "", default: 0] += 1 }
        let duplicates = seen.values.reduce(0) { $0 + $1 - 1 }
        XCTAssertEqual(try database.count("SELECT count(*) FROM pg_replication_slots"), 1, "one slot, continued; none made anew")
        print("WAL capture takeover after kill -9 of the leader: \(payloads) payloads, \(duplicates) duplicate ids")
    }

    /// The pain of WAL tools: an idle watched table while the rest of the database writes. The
    /// slot's confirmed position follows the WAL end (keepalives are confirmed at once), and its
    /// restart position (the WAL PostgreSQL keeps for it) follows at each standby snapshot the
    /// stream has logged once it holds more than 64 MB (WalSlotNudge), not only at the background
    /// writer's every 15 s: at 50 MB/s of other writes, that would be 750 MB and more.
    func testWALCapture_anIdleWatchedTable_whileAnotherTableWrites50MBPerSecond_theSlotRetainsUnder256MB_andNextToNothingOnceTheWritesStop() throws {
        try useLogicalServer()
        let p = try startPipeline(schemaSQL: itemsSQL(keys: 10) + "CREATE TABLE noise (id bigserial PRIMARY KEY, payload text NOT NULL);", tables: [walItems])
        let slot = TrackingSchema(table: walItems).slotName(database: p.database.name)
        try waitUntil("the worker streams the slot") { try p.database.count("SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1 AND active", [slot]) == 1 }
        let retained = "SELECT (pg_current_wal_lsn() - restart_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1"
        let unconfirmed = "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1"
        let start = try XCTUnwrap(try p.database.value("SELECT pg_current_wal_lsn()::text"))
        var largest = 0, largestUnconfirmed = 0, written = 0
        let rate = Double(50 << 20), seconds = 20.0
        let began = Date()
        // 2,000 rows of 1 kB per statement (about 2.5 MB of WAL), paced to 50 MB/s for 20 s:
        // more than one of the background writer's 15 s standby snapshot intervals.
        for _ in 0..<2_000 where Date().timeIntervalSince(began) < seconds {
            try p.database.execute("INSERT INTO noise (payload) SELECT repeat(md5(random()::text), 32) FROM generate_series(1, 2000)")
            largest = max(largest, try p.database.count(retained, [slot]))
            largestUnconfirmed = max(largestUnconfirmed, try p.database.count(unconfirmed, [slot]))
            written = try p.database.count("SELECT (pg_current_wal_lsn() - $1::pg_lsn)::bigint", [start])
            let ahead = Double(written) / rate - Date().timeIntervalSince(began)
            if ahead > 0 { Thread.sleep(forTimeInterval: ahead) }
        }
        let elapsed = Date().timeIntervalSince(began)
        var settled = largest
        try waitUntil(timeout: 30, "the slot's retained WAL falls below 16 MB once the writes stop") {
            settled = try p.database.count(retained, [slot])
            return settled < 16 << 20
        }
        let mbps = Double(written >> 20) / elapsed
        print("WAL capture, idle table: \(written >> 20) MB of other WAL in \(String(format: "%.1f", elapsed)) s (\(Int(mbps)) MB/s); the slot retained at most \(largest >> 20) MB during the writes (confirmed position at most \(largestUnconfirmed >> 20) MB behind), \(settled >> 20) MB after")
        XCTAssertGreaterThan(mbps, 40, "the other table wrote at about 50 MB/s (else the bound below proves nothing)")
        XCTAssertLessThan(largestUnconfirmed, 32 << 20, "keepalives are confirmed as they come: the confirmed position follows the WAL end")
        XCTAssertLessThan(largest, 256 << 20, "the slot held back less than 256 MB at 50 MB/s of other writes, not 15 s or more of them")
        XCTAssertEqual(try p.database.rowCount("items_changes"), 0)
        XCTAssertEqual(try p.ingestor.requests().count, 0)
        XCTAssertEqual(try p.database.count("SELECT count(*) FROM pg_replication_slots WHERE slot_name <> $1 AND database = current_database()", [slot]), 0,
                       "the temporary slots the stream made to log standby snapshots are gone")
    }

    /// A running trigger-mode table switched to WAL mode (a reload) while the application writes:
    /// setup creates the slot before it drops the trigger, so every change is recorded by one or
    /// both, and every key's final state arrives.
    func testWALCapture_aTriggerModeTableSwitchedToWALModeDuringAStream_losesNothing() throws {
        let keys = 300, changes = 6_000
        let setup = try walSetup(keys: keys, table: items)
        let (database, ingestor, configURL) = (setup.database, setup.ingestor, setup.configURL)
        var config = setup.config
        let supervisor = try SupervisorProcess(configURL: configURL, healthPort: config.service.healthCheckPort, directory: workDirectory, name: "supervisor-1")
        supervisors.append(supervisor)
        addDiagnostics { supervisor.process.stderrTail() }
        try waitUntil("the worker runs") { try supervisor.workerPIDs()["items"] != nil }
        XCTAssertEqual(try userTriggers(database, on: ["items"]), 2, "trigger mode to begin with: the capture and TRUNCATE triggers")
        let writer = BackgroundWriter(database: database.config, name: "wal-switch-writer", rounds: changes / 10, perRound: 10, keys: keys, pauseMicroseconds: 10_000)
        try waitUntil("the trigger-mode worker publishes part of the stream") { try ingestor.requests().count >= 100 }
        config.service.watchedTables = [walItems]
        try ConfigFile.write(config, to: configURL)
        supervisor.process.send(SIGHUP)
        try waitUntil(timeout: 30, "the trigger is gone and the slot streamed") {
            try self.userTriggers(database, on: ["items"]) == 0
                && database.count("SELECT count(*) FROM pg_replication_slots WHERE active AND slot_name LIKE 'adp_items_%'") == 1
        }
        XCTAssertFalse(writer.isDone, "the switch came during the stream")
        try waitUntil(timeout: 120, "the writer is done") { writer.isDone }
        XCTAssertNil(writer.error, "no application write failed during the switch")
        try waitUntilEveryFinalStateArrived(database, ingestor, timeout: 120)
        let (payloads, _) = try assertNoKeyWentBackwards(ingestor)
        print("WAL capture, trigger mode switched to WAL mode during a stream: \(payloads) payloads")
    }

    /// One statement that updates 300,000 rows arrives as one burst of 300,000 messages: the
    /// stream takes them at the rate they come (it once fell behind for good, reading libpq's
    /// buffer in a way that cost more the more was waiting).
    func testWALCapture_aBurstOf300000RowChanges_isInTheTrackingTableWithinSeconds() throws {
        try useLogicalServer()
        let p = try startPipeline(schemaSQL: itemsSQL(keys: 300_000), tables: [walItems]) { config in
            config.ingestor.baseURL = "http://127.0.0.1:9"  // nothing is published: only capture is measured
        }
        let slot = TrackingSchema(table: walItems).slotName(database: p.database.name)
        try waitUntil("the worker streams the slot") { try p.database.count("SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1 AND active", [slot]) == 1 }
        try p.database.execute("UPDATE items SET v = v + 1")
        let began = Date()
        try waitUntil(timeout: 30, "the 300,000 keys are in items_changes") { try p.database.rowCount("items_changes") >= 300_000 }
        let seconds = Date().timeIntervalSince(began)
        print("WAL capture: 300,000 row changes of one statement in items_changes \(String(format: "%.1f", seconds)) s after its commit")
        XCTAssertLessThan(seconds, 15)
    }

    func testWALCapture_checkConfig_onAServerWithWalLevelReplica_exits78NamingWalLevel() throws {
        useServer(try OwnPostgresServer.shared(walLevel: "replica").config)
        let database = try makeDatabase()
        try database.executeScript(itemsSQL(keys: 1))
        let config = ConfigFile.forTests(database: database.config, ingestorURL: "http://127.0.0.1:9", tables: [walItems])
        let url = try writeConfig(config)
        let (status, output) = try runPublisher(["--config", url.path, "check-config"])
        XCTAssertEqual(status, 78, output)
        XCTAssertTrue(output.contains("wal_level = logical") && output.contains("wal_level = replica") && output.contains("restart"), output)
        XCTAssertEqual(try database.count("SELECT count(*) FROM pg_replication_slots"), 0, "check-config creates nothing")
    }
}
