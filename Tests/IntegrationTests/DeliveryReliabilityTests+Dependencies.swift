import Foundation
import Shared
import XCTest

/// Dependencies: a document built from several tables is published again when a row of a table
/// its query reads changes (the seed's hotspots and their rewards), without touching the watched
/// row, with the same order and loss guarantees as the watched table's own changes.
extension DeliveryReliabilityTests {
    var hotspots: WatchedTable {
        var table = WatchedTable(
            name: "hotspots", changeColumns: ["updated_at"],
            atomicDataQuery: """
                SELECT h.id, h.name, (SELECT count(*) FROM rewards r WHERE r.hotspot_id = h.id) AS n,
                       coalesce((SELECT json_agg(r.amount ORDER BY r.id) FROM rewards r WHERE r.hotspot_id = h.id), '[]') AS amounts
                FROM hotspots h WHERE h.id = $PRIMARY_KEY
                """,
            publishEndpoint: "/api/v1/hotspots/atomic-data")
        table.dependencies = [Dependency(table: "rewards", keyColumns: ["hotspot_id"], changeColumns: ["hotspot_id", "amount"])]
        return table
    }

    /// `hotspots` 1...`keys` and no rewards; `rewards.hotspot_id` may be NULL and has no foreign key
    /// (a reward may name a hotspot that does not exist).
    func hotspotsSQL(keys: Int) -> String {
        """
        CREATE TABLE hotspots (id bigint PRIMARY KEY, name text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now());
        CREATE TABLE rewards (id bigserial PRIMARY KEY, hotspot_id bigint, amount integer NOT NULL, note text);
        INSERT INTO hotspots (id, name) SELECT g, 'hotspot ' || g FROM generate_series(1, \(keys)) g;
        """
    }

    /// Tracking rows written to `hotspots_changes` so far (its sequence).
    func trackingRowsWritten(_ database: TestDatabase) throws -> Int {
        Int(try database.value("SELECT coalesce(pg_sequence_last_value('public.hotspots_changes_id_seq'), 0)::text") ?? "0") ?? 0
    }

    /// Per hotspot, the reward count `n` of every acknowledged payload in arrival order.
    func rewardCounts(_ ingestor: Ingestor) throws -> [String: [Int]] {
        var result: [String: [Int]] = [:]
        for request in try ingestor.requests() where request.status == 200 {
            guard let key = request.body["primary_key"]?.string, let n = request.body["atomic_data"]?[0]?["n"]?.int else { continue }
            result[key, default: []].append(n)
        }
        return result
    }

    func databaseRewardCounts(_ database: TestDatabase) throws -> [String: Int] {
        Dictionary(uniqueKeysWithValues: try database.execute(
            "SELECT h.id::text, (SELECT count(*) FROM rewards r WHERE r.hotspot_id = h.id)::text FROM hotspots h").rows.map { ($0[0]!, Int($0[1]!)!) })
    }

    func waitUntilEveryHotspotIsCurrent(_ database: TestDatabase, _ ingestor: Ingestor, timeout: TimeInterval = 60) throws {
        let expected = try databaseRewardCounts(database).filter { $0.value > 0 }
        try waitUntil(timeout: timeout, "the ingestor's last document of each of \(expected.count) hotspots has all its rewards") {
            let got = try self.rewardCounts(ingestor)
            return expected.allSatisfy { got[$0.key]?.last == $0.value }
        }
    }

    @discardableResult
    func assertNoRewardCountWentBackwards(_ ingestor: Ingestor, file: StaticString = #filePath, line: UInt = #line) throws -> Int {
        var payloads = 0
        for (key, counts) in try rewardCounts(ingestor) {
            payloads += counts.count
            for (later, earlier) in zip(counts.dropFirst(), counts) {
                XCTAssertGreaterThanOrEqual(later, earlier, "hotspot \(key) went backwards: \(counts)", file: file, line: line)
            }
        }
        return payloads
    }

    // MARK: - capture

    func testDependency_aRewardInsertedForHotspot2_publishesHotspot2WithTheReward_andNothingElse() throws {
        let p = try startPipeline(schemaSQL: hotspotsSQL(keys: 3), tables: [hotspots])
        let row = "SELECT xmin::text || ' ' || updated_at::text FROM hotspots WHERE id = 2"
        let hotspotBefore = try p.database.value(row)
        try p.database.execute("INSERT INTO rewards (hotspot_id, amount) VALUES (2, 40)")
        let requests = try waitForRequests(p.ingestor, count: 1)
        try waitUntilTrackingTableIsEmpty(p.database, hotspots)
        let payload = try XCTUnwrap(requests.first)
        XCTAssertEqual(payload.status, 200)
        XCTAssertEqual(payload.body["primary_key"], "2")
        XCTAssertEqual(payload.body["atomic_data"], [["id": .number(2), "name": "hotspot 2", "n": .number(1), "amounts": [.number(40)]]], "\(payload)")
        XCTAssertEqual(payload.body["operation"], "update", "a dependency's change publishes the watched row as an update")
        XCTAssertEqual(payload.body["cause"], ["table": "rewards", "schema": "public", "operation": "insert"], "\(payload)")
        XCTAssertEqual(payload.body["change_column_value"], .null)
        XCTAssertEqual(try p.database.value(row), hotspotBefore, "the hotspot row is untouched")
        XCTAssertEqual(try p.ingestor.requests().count, 1, "no other hotspot is published")
        XCTAssertEqual(try trackingRowsWritten(p.database), 1)
    }

    func testDependency_aRewardMovedThenDeleted_publishesBothHotspotsWithTheRightRewards_andIgnoresUncountedColumns() throws {
        let p = try startPipeline(schemaSQL: hotspotsSQL(keys: 3), tables: [hotspots])
        let reward = try XCTUnwrap(try p.database.value("INSERT INTO rewards (hotspot_id, amount) VALUES (2, 5) RETURNING id::text"))
        try waitForRequests(p.ingestor, count: 1)

        try p.database.execute("UPDATE rewards SET hotspot_id = 3 WHERE id = $1", [reward])
        var last: [String: RecordedRequest] = [:]
        try waitUntil("hotspot 2 without the reward and hotspot 3 with it") {
            for r in try p.ingestor.requests() { if let key = r.body["primary_key"]?.string { last[key] = r } }
            return last["2"]?.body["atomic_data"]?[0]?["n"] == .number(0) && last["3"]?.body["atomic_data"]?[0]?["amounts"] == [.number(5)]
        }
        XCTAssertEqual(last["3"]?.body["cause"], ["table": "rewards", "schema": "public", "operation": "update"])
        XCTAssertEqual(last["2"]?.body["cause"], ["table": "rewards", "schema": "public", "operation": "update"])
        XCTAssertEqual(try trackingRowsWritten(p.database), 3, "the move enqueued the old and the new hotspot")

        // `note` is not among change_columns: nothing is enqueued. An UPDATE that rewrites the same
        // amount changes nothing either.
        try p.database.execute("UPDATE rewards SET note = 'checked' WHERE id = $1", [reward])
        try p.database.execute("UPDATE rewards SET amount = amount WHERE id = $1", [reward])
        XCTAssertEqual(try trackingRowsWritten(p.database), 3)

        try p.database.execute("DELETE FROM rewards WHERE id = $1", [reward])
        try waitUntil("hotspot 3 without the deleted reward") {
            try p.ingestor.requests().last { $0.body["primary_key"] == "3" }?.body["atomic_data"]?[0]?["n"] == .number(0)
        }
        try waitUntilTrackingTableIsEmpty(p.database, hotspots)
        let keys = try p.ingestor.requests().compactMap { $0.body["primary_key"]?.string }
        XCTAssertEqual(keys.filter { $0 == "2" }.count, 2, "insert, move: \(keys)")
        XCTAssertEqual(keys.filter { $0 == "3" }.count, 2, "move, delete: \(keys)")
        XCTAssertFalse(keys.contains("1"))
        XCTAssertEqual(try p.ingestor.requests().last?.body["cause"], ["table": "rewards", "schema": "public", "operation": "delete"])
    }

    func testDependency_2000RewardsOver20HotspotsInOneStatement_writeOneTrackingRowPerHotspot_andEveryDocumentEndsComplete() throws {
        let p = try startPipeline(schemaSQL: hotspotsSQL(keys: 20), tables: [hotspots])
        let started = Date()
        let inserted = try p.database.execute("INSERT INTO rewards (hotspot_id, amount) SELECT 1 + g % 20, g FROM generate_series(1, 2000) g")
        XCTAssertEqual(inserted.affectedRows, 2_000)
        XCTAssertEqual(try trackingRowsWritten(p.database), 20, "one tracking row per distinct hotspot of the statement")
        // More bulk statements while the worker publishes: documents grow, never shrink.
        for round in 1...10 {
            try p.database.execute("INSERT INTO rewards (hotspot_id, amount) SELECT 1 + g % 20, \(round) FROM generate_series(1, 100) g")
        }
        let rows = 3_000
        try waitUntilEveryHotspotIsCurrent(p.database, p.ingestor)
        try waitUntilTrackingTableIsEmpty(p.database, hotspots)
        let written = try trackingRowsWritten(p.database)
        XCTAssertEqual(written, 20 * 11)
        let payloads = try assertNoRewardCountWentBackwards(p.ingestor)
        let requests = try p.ingestor.requests()
        XCTAssertEqual(Set(requests.compactMap { $0.body["primary_key"]?.string }).count, 20)
        XCTAssertEqual(requests.last { $0.body["primary_key"] == "1" }?.body["atomic_data"]?[0]?["n"], .number(150))
        XCTAssertLessThanOrEqual(requests.count, written)
        print(String(format: "dependency bulk: %d reward rows in 11 statements over 20 hotspots -> %d tracking rows written, %d requests (%d payloads acknowledged), every document complete %.2f s after the first statement",
                     rows, written, requests.count, payloads, Date().timeIntervalSince(started)))
    }

    func testDependency_aNullReferenceEnqueuesNothing_andAMissingParentIsPublishedAsAnEmptyDocument() throws {
        let p = try startPipeline(schemaSQL: hotspotsSQL(keys: 3), tables: [hotspots])
        try p.database.execute("INSERT INTO rewards (hotspot_id, amount) VALUES (NULL, 1)")
        try p.database.execute("UPDATE rewards SET amount = 2 WHERE hotspot_id IS NULL")
        try p.database.execute("DELETE FROM rewards WHERE hotspot_id IS NULL")
        XCTAssertEqual(try trackingRowsWritten(p.database), 0, "the application's writes succeeded and nothing was enqueued")
        try p.database.execute("INSERT INTO rewards (hotspot_id, amount) VALUES (999, 7)")
        let requests = try waitForRequests(p.ingestor, count: 1)
        XCTAssertEqual(requests.first?.body["primary_key"], "999")
        XCTAssertEqual(requests.first?.body["atomic_data"], [], "the query finds no hotspot 999")
        XCTAssertEqual(requests.first?.body["operation"], "update")
        try waitUntilTrackingTableIsEmpty(p.database, hotspots)
        XCTAssertEqual(try p.ingestor.requests().count, 1)
    }

    func testDependency_aWatchedRowDeletedThenReferenced_staysADelete_andOwnChangesListTheirCauseToo() throws {
        let p = try startPipeline(schemaSQL: hotspotsSQL(keys: 3), tables: [hotspots])
        p.worker.stopAndAssertCleanExit()
        // Queued together, so one payload covers them: the hotspot's own delete, then a reward that
        // names it.
        try p.database.execute("DELETE FROM hotspots WHERE id = 1")
        try p.database.execute("INSERT INTO rewards (hotspot_id, amount) VALUES (1, 3)")
        // And an own update coalesced with a reward.
        try p.database.execute("UPDATE hotspots SET updated_at = updated_at + interval '1 second' WHERE id = 2")
        try p.database.execute("INSERT INTO rewards (hotspot_id, amount) VALUES (2, 4)")
        _ = try startWorker(table: "hotspots", config: p.configURL)
        try waitUntilTrackingTableIsEmpty(p.database, hotspots)
        let byKey = Dictionary(grouping: try p.ingestor.requests()) { $0.body["primary_key"]?.string ?? "" }
        XCTAssertEqual(byKey["1"]?.count, 1)
        XCTAssertEqual(byKey["1"]?.first?.body["operation"], "delete", "\(byKey)")
        XCTAssertEqual(byKey["1"]?.first?.body["atomic_data"], [])
        XCTAssertEqual(byKey["2"]?.count, 1)
        XCTAssertEqual(byKey["2"]?.first?.body["operation"], "update")
        XCTAssertNotEqual(byKey["2"]?.first?.body["change_column_value"], .null, "the watched row's own value")
        XCTAssertEqual(byKey["2"]?.first?.body["cause"], [["table": "hotspots", "schema": "public", "operation": "update"],
                                                           ["table": "rewards", "schema": "public", "operation": "insert"]])
        XCTAssertEqual(byKey["2"]?.first?.body["atomic_data"]?[0]?["n"], .number(1))
    }

    // MARK: - configuration

    /// A partitioned dependency: a statement trigger on the parent would see neither a statement
    /// addressed to a partition nor a partition created after setup. Rows moved across partitions
    /// by an UPDATE of the parent arrive as a delete from one and an insert into the other.
    func testDependency_aPartitionedRewardsTable_writesThroughTheParent_toAPartition_andToAPartitionCreatedAfterSetup_allPublish() throws {
        let schema = """
            CREATE TABLE hotspots (id bigint PRIMARY KEY, name text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now());
            CREATE TABLE rewards (id bigserial, hotspot_id bigint, amount integer NOT NULL, note text) PARTITION BY RANGE (hotspot_id);
            CREATE TABLE rewards_low PARTITION OF rewards FOR VALUES FROM (1) TO (11);
            INSERT INTO hotspots (id, name) SELECT g, 'hotspot ' || g FROM generate_series(1, 20) g;
            """
        let p = try startPipeline(schemaSQL: schema, tables: [hotspots])
        try p.database.execute("INSERT INTO rewards (hotspot_id, amount) VALUES (1, 10), (2, 20)")
        try p.database.execute("INSERT INTO rewards_low (hotspot_id, amount) VALUES (3, 30), (5, 50)")
        try p.database.execute("CREATE TABLE rewards_high PARTITION OF rewards FOR VALUES FROM (11) TO (21)")
        try p.database.execute("INSERT INTO rewards_high (hotspot_id, amount) VALUES (12, 5), (12, 6)")
        try p.database.execute("UPDATE rewards_low SET amount = amount + 1 WHERE hotspot_id = 1")
        try p.database.execute("UPDATE rewards_low SET note = 'not counted' WHERE hotspot_id = 5")
        try p.database.execute("UPDATE rewards SET hotspot_id = 4 WHERE hotspot_id = 2")
        try p.database.execute("UPDATE rewards SET hotspot_id = 15 WHERE hotspot_id = 3")
        try p.database.execute("DELETE FROM rewards_high WHERE amount = 5")

        let expected: [String: [Int]] = ["1": [11], "2": [], "3": [], "4": [20], "5": [50], "12": [6], "15": [30]]
        var last: [String: JSON] = [:]
        try waitUntil(timeout: 30, "every touched hotspot's last document has its rewards") {
            last = [:]
            for r in try p.ingestor.requests() where r.status == 200 { if let k = r.body["primary_key"]?.string { last[k] = r.body } }
            return expected.allSatisfy { key, amounts in last[key]?["atomic_data"]?[0]?["amounts"]?.array?.compactMap(\.int) == amounts }
        }
        try waitUntilTrackingTableIsEmpty(p.database, hotspots)
        XCTAssertEqual(Set(last.keys), Set(expected.keys), "no other hotspot is published")
        XCTAssertEqual(last["15"]?["cause"], ["table": "rewards", "schema": "public", "operation": "insert"],
                       "a row moved into another partition arrives as an insert there")
        XCTAssertEqual(try p.database.value("SELECT count(*)::text FROM pg_trigger WHERE tgrelid = 'rewards_high'::regclass AND tgparentid <> 0"), "3",
                       "the partition created after setup has the parent's triggers")
        let uncounted = try p.ingestor.requests().filter { $0.body["primary_key"]?.string == "5" }.count
        XCTAssertEqual(uncounted, 1, "an update of a column that does not count publishes nothing")
    }

    /// TRUNCATE fires no row trigger and has no transition table: before it runs, the capture
    /// records a delete of every watched key, and a dependency's trigger the keys its rows name.
    func testTruncate_ofADependency_republishesTheHotspotsItsRowsNamed_andOfTheWatchedTable_publishesADeleteOfEveryKey() throws {
        let p = try startPipeline(schemaSQL: hotspotsSQL(keys: 4), tables: [hotspots])
        try p.database.execute("INSERT INTO rewards (hotspot_id, amount) VALUES (1, 10), (1, 11), (2, 20), (NULL, 5)")
        try waitUntilEveryHotspotIsCurrent(p.database, p.ingestor)
        let before = try p.ingestor.requests().count
        try p.database.execute("TRUNCATE rewards")
        try waitUntil(timeout: 30, "hotspots 1 and 2 are published again without rewards") {
            let counts = try self.rewardCounts(p.ingestor)
            return counts["1"]?.last == 0 && counts["2"]?.last == 0
        }
        try waitUntilTrackingTableIsEmpty(p.database, hotspots)
        let afterRewards = try p.ingestor.requests().dropFirst(before)
        XCTAssertEqual(Set(afterRewards.compactMap { $0.body["primary_key"]?.string }), ["1", "2"], "only the hotspots the rewards named")
        XCTAssertEqual(afterRewards.first?.body["cause"], ["table": "rewards", "schema": "public", "operation": "truncate"])

        let beforeHotspots = try p.ingestor.requests().count
        try p.database.execute("TRUNCATE hotspots")
        try waitUntil(timeout: 30, "a delete of each of the 4 hotspots arrives") {
            Set(try p.ingestor.requests().dropFirst(beforeHotspots).filter { $0.body["operation"] == "delete" }.compactMap { $0.body["primary_key"]?.string })
                == ["1", "2", "3", "4"]
        }
        for request in try p.ingestor.requests().dropFirst(beforeHotspots) {
            XCTAssertEqual(request.body["atomic_data"], [], "\(request.body)")
            XCTAssertEqual(request.status, 200)
        }
        try waitUntilTrackingTableIsEmpty(p.database, hotspots)
    }

    func testDependency_aKeyColumnThatDoesNotExist_orOfAnotherType_isRefusedByCheckConfigWithExit78() throws {
        let database = try makeDatabase()
        try database.executeScript(hotspotsSQL(keys: 1) + "ALTER TABLE rewards ADD COLUMN hotspot_name text;")
        for (column, expected) in [("hotspot", "column \"hotspot\" does not exist in dependency table public.rewards"),
                                   ("hotspot_name", "column \"hotspot_name\" of public.rewards is text, but primary_key \"id\" of public.hotspots is bigint")] {
            var table = hotspots
            table.dependencies[0].keyColumns = [column]
            table.dependencies[0].changeColumns = []
            var config = ConfigFile.forTests(database: database.config, ingestorURL: "http://127.0.0.1:9", tables: [table])
            config.service.healthCheckAddress = "127.0.0.1"
            let url = try writeConfig(config, name: "dependency-\(column).toml")
            let check = try runPublisher(["--config", url.path, "check-config"])
            XCTAssertEqual(check.status, 78, check.output)
            XCTAssertTrue(check.output.contains(expected), check.output)
            XCTAssertTrue(check.output.contains("key_column"), check.output)
            let setup = try runPublisher(["--config", url.path, "setup"])
            XCTAssertEqual(setup.status, 78, setup.output)
        }
        XCTAssertEqual(try database.value("SELECT count(*)::text FROM pg_trigger WHERE tgrelid = 'rewards'::regclass"), "0", "nothing was created")
    }

    func testDependency_setupIsIdempotent_dropsTheTriggersOfARemovedDependency_andTeardownRemovesThemAll() throws {
        let database = try makeDatabase()
        try database.executeScript(hotspotsSQL(keys: 1))
        var config = ConfigFile.forTests(database: database.config, ingestorURL: "http://127.0.0.1:9", tables: [hotspots])
        config.service.healthCheckAddress = "127.0.0.1"
        let url = try writeConfig(config, name: "with.toml")
        let triggers = "SELECT count(*)::text FROM pg_trigger WHERE tgrelid = 'rewards'::regclass"
        XCTAssertEqual(try runPublisher(["--config", url.path, "setup"]).status, 0)
        XCTAssertEqual(try database.value(triggers), "4")
        let again = try runPublisher(["--config", url.path, "setup"])
        XCTAssertTrue(again.output.contains("already up to date"), again.output)
        XCTAssertEqual(try database.value(triggers), "4")

        var without = config
        without.service.watchedTables[0].dependencies = []
        XCTAssertEqual(try runPublisher(["--config", try writeConfig(without, name: "without.toml").path, "setup"]).status, 0)
        XCTAssertEqual(try database.value(triggers), "0", "the removed dependency's triggers are gone")
        try database.execute("INSERT INTO rewards (hotspot_id, amount) VALUES (1, 1)")
        XCTAssertEqual(try database.rowCount("hotspots_changes"), 0)

        XCTAssertEqual(try runPublisher(["--config", url.path, "setup"]).status, 0)
        XCTAssertEqual(try runPublisher(["--config", url.path, "teardown"]).status, 0)
        XCTAssertEqual(try database.value(triggers), "0")
        XCTAssertEqual(try database.value("SELECT count(*)::text FROM pg_proc WHERE proname LIKE 'hotspots\\_dep\\_%'"), "0")
    }

    func testDependency_oneTableTwoWatchedTables_setUpAtOnce_oneSetOfTriggersEach_andBothPublished() throws {
        let database = try makeDatabase()
        try database.executeScript(hotspotsSQL(keys: 2) + "CREATE TABLE totals (id bigint PRIMARY KEY, label text); INSERT INTO totals VALUES (1, 'one'), (2, 'two');")
        let ingestor = try startIngestor()
        var totals = WatchedTable(
            name: "totals", changeColumns: ["label"],
            atomicDataQuery: "SELECT t.id, (SELECT coalesce(sum(r.amount), 0) FROM rewards r WHERE r.hotspot_id = t.id) AS total FROM totals t WHERE t.id = $PRIMARY_KEY",
            publishEndpoint: "/api/v1/totals")
        totals.dependencies = [Dependency(table: "rewards", keyColumns: ["hotspot_id"])]
        var config = ConfigFile.forTests(database: database.config, ingestorURL: ingestor.baseURL, tables: [hotspots, totals])
        config.service.healthCheckAddress = "127.0.0.1"
        config.service.healthCheckPort = try SupervisorProcess.freePort()
        // One supervisor starts both workers at once: their setups run concurrently, each under
        // its own table's lock, both creating triggers on rewards.
        let supervisor = try SupervisorProcess(configURL: try writeConfig(config), healthPort: config.service.healthCheckPort,
                                               directory: workDirectory, name: "two-watched")
        supervisors.append(supervisor)
        try waitUntil("both workers run") {
            let tables = try supervisor.health().body["components"]?["tables"]
            return tables?["hotspots"]?["state"] == "running" && tables?["totals"]?["state"] == "running"
        }
        XCTAssertEqual(try database.value("SELECT count(*)::text FROM pg_trigger WHERE tgrelid = 'rewards'::regclass"), "8", "four per watched table")
        try database.execute("INSERT INTO rewards (hotspot_id, amount) VALUES (1, 11), (1, 4)")
        try waitUntil("hotspot 1 and total 1 are both published") {
            let requests = try ingestor.requests()
            return requests.contains { $0.path == "/api/v1/hotspots/atomic-data" && $0.body["atomic_data"]?[0]?["n"] == .number(2) }
                && requests.contains { $0.path == "/api/v1/totals" && $0.body["atomic_data"]?[0]?["total"] == .number(15) }
        }
        XCTAssertEqual(try ingestor.requests().count, 2)
        XCTAssertEqual(supervisor.unexpectedLogLines(), [])
    }

    func testDependency_onAPartitionedTable_eachKeyIsPublishedByItsPartition_andSleepingWorkersAreWoken() throws {
        let database = try makeDatabase()
        try database.executeScript(hotspotsSQL(keys: 20))
        let ingestor = try startIngestor()
        var table = hotspots
        table.partitions = 3
        // Polling alone would take a minute: only a wake-up delivers within the wait below.
        let instance = try startInstance(database, ingestor, table: table, instance: "host-a") { $0.service.pollingIntervalSeconds = 60 }
        try waitUntil("the three partitions' workers run") {
            let tables = try instance.health().body["components"]?["tables"]
            return (0..<3).allSatisfy { tables?["hotspots#\($0)"]?["state"] == "running" }
        }
        // Idle long enough to be asleep (a worker sleeps after 10 ms without changes): the
        // dependency's statement trigger must wake whichever partition's worker owns a key.
        let flag = String(UInt32(bitPattern: TrackingSchema(table: table).partitionWakeKey))
        // Four rounds, each delivered within 2.5 s: a sleeping worker that is not woken still reads
        // its backlog every 5 s, so without the wake-up each round would pass only half the time.
        for round in 1...4 {
            try waitUntil("every worker sleeps again before round \(round)") {
                try database.count("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND mode = 'ExclusiveLock' AND objsubid = 2 AND classid = $1::bigint::oid",
                                   [flag]) == 3
            }
            try database.execute("INSERT INTO rewards (hotspot_id, amount) SELECT 1 + g % 20, g FROM generate_series(1, 50) g")
            try waitUntilEveryHotspotIsCurrent(database, ingestor, timeout: 2.5)
        }
        let byPartition = Dictionary(grouping: try ingestor.requests()) { $0.header("X-Publisher-Lease") ?? "" }
        XCTAssertEqual(byPartition.count, 3, "every partition published its share: \(byPartition.keys.sorted())")
    }

    // MARK: - under failure

    func testDependency_killNineWorkersAndTheSupervisorDuringARewardStream_losesNothingAndNeverGoesBackwards() throws {
        let keys = 100, rewards = 4_000
        let database = try makeDatabase()
        try database.executeScript(hotspotsSQL(keys: keys))
        let ingestor = try startIngestor()
        var config = ConfigFile.forTests(database: database.config, ingestorURL: ingestor.baseURL, tables: [hotspots])
        config.service.healthCheckAddress = "127.0.0.1"
        config.service.healthCheckPort = try SupervisorProcess.freePort()
        config.service.restartDelaySeconds = 0.1
        config.service.maxRestartDelaySeconds = 0.5
        let configURL = try writeConfig(config)
        addDiagnostics { Self.trackingTableSummary(database, self.hotspots) }
        // The application inserts rewards, 10 per transaction, for random hotspots.
        let (supervisor, writer) = try killStorm(configURL: configURL, healthPort: config.service.healthCheckPort, worker: "hotspots", workerKills: 6) {
            BackgroundWriter(database: database.config, name: "dependency-crash-writer", rounds: rewards / 10, perRound: 10, keys: keys,
                             pauseMicroseconds: 1_000, statement: "INSERT INTO rewards (hotspot_id, amount) VALUES ($1, 1)")
        }
        XCTAssertNil(writer.error, "the writer failed")
        XCTAssertEqual(try databaseRewardCounts(database).values.reduce(0, +), rewards)
        try waitUntilEveryHotspotIsCurrent(database, ingestor, timeout: 120)
        let payloads = try assertNoRewardCountWentBackwards(ingestor)
        print("dependency crash test: \(rewards) rewards inserted, 6 worker kills + 1 supervisor kill: \(payloads) payloads acknowledged, \(try trackingRowsWritten(database)) tracking rows written")
        XCTAssertEqual(supervisor.process.stop(), .exited(0))
    }

    func testDependency_killNineOfTheLeadingInstanceDuringARewardStream_theStandbyTakesOver_andNoHotspotGoesBackwards() throws {
        let keys = 100, rewards = 3_000
        let database = try makeDatabase()
        try database.executeScript(hotspotsSQL(keys: keys))
        let ingestor = try startIngestor()
        addDiagnostics { Self.trackingTableSummary(database, self.hotspots) }
        var instances: [String: SupervisorProcess] = [:]
        for name in ["host-a", "host-b"] { instances[name] = try startInstance(database, ingestor, table: hotspots, instance: name) }
        var leaderName = ""
        try waitUntil(timeout: 30, "one instance leads") {
            for (name, s) in instances where try s.health().body["components"]?["tables"]?["hotspots"]?["lease"] == "leader" { leaderName = name }
            return !leaderName.isEmpty
        }
        let standbyName = leaderName == "host-a" ? "host-b" : "host-a"
        try waitUntil("the standby stands by") { try instances[standbyName]!.health().body["components"]?["tables"]?["hotspots"]?["lease"] == "standby" }
        let writer = BackgroundWriter(database: database.config, name: "dependency-lease-writer", rounds: rewards / 10, perRound: 10, keys: keys,
                                      pauseMicroseconds: 2_000, statement: "INSERT INTO rewards (hotspot_id, amount) VALUES ($1, 1)")
        try waitUntil("the leader publishes part of the stream") { try ingestor.requests().count >= 100 }
        let leader = instances[leaderName]!
        let workerPID = try leader.workerPIDs()["hotspots"]
        leader.process.send(SIGKILL)
        if let workerPID { kill(workerPID, SIGKILL) }
        let killedAt = Date()
        try waitUntil(timeout: 30, "the standby publishes") {
            try ingestor.requests().contains { $0.header("X-Publisher-Instance") == standbyName }
        }
        let failover = Date().timeIntervalSince(killedAt)
        try waitUntil(timeout: 120, "the writer finishes") { writer.isDone }
        XCTAssertNil(writer.error)
        try waitUntilEveryHotspotIsCurrent(database, ingestor, timeout: 120)
        let payloads = try assertNoRewardCountWentBackwards(ingestor)
        print("dependency lease takeover after kill -9 of the leader: the standby published \(String(format: "%.2f", failover)) s later; \(payloads) payloads")
    }
}
