import Foundation
import Shared
import XCTest

/// `atomic-data-publisher backfill` against a real database, a real worker and a real
/// ingestor: existing rows are enqueued as 'B' tracking rows in short chunks, exactly once even
/// across interruptions, while the service publishes and the application writes.
final class BackfillTests: IntegrationTestCase {
    private let items = WatchedTable(
        name: "items", changeColumns: ["version"],
        atomicDataQuery: "SELECT id, version FROM items WHERE id = $PRIMARY_KEY",
        publishEndpoint: "/api/v1/items/atomic-data")

    /// `items` with `rows` rows (ids 1...rows, version 0), made before the trigger exists.
    private func itemsSQL(rows: Int) -> String {
        """
        CREATE TABLE items (id bigint PRIMARY KEY, version integer NOT NULL DEFAULT 0);
        INSERT INTO items (id) SELECT g FROM generate_series(1, \(rows)) g;
        """
    }

    private struct Outcome {
        var status: Int32
        var stdout: [String]
        var stderr: String
        var all: String { stdout.joined(separator: "\n") + "\n" + stderr }
    }

    private func startBackfill(config: URL, _ arguments: [String]) throws -> ManagedProcess {
        try ManagedProcess(name: "backfill-\(UUID().uuidString.prefix(6))", executable: try TestEnvironment.binary(named: "atomic-data-publisher"),
                           arguments: ["--config", config.path, "backfill"] + arguments, workingDirectory: workDirectory, logDirectory: workDirectory)
    }

    private func finish(_ process: ManagedProcess, timeout: TimeInterval = 120) throws -> Outcome {
        guard let ended = process.waitForExit(timeout: timeout) else {
            process.stop()
            throw UnexpectedResult(description: "backfill did not finish in \(timeout) s: \(process.stderrTail())")
        }
        let status: Int32
        switch ended {
        case .exited(let code): status = code
        case .signaled(let signal): status = 128 + signal
        }
        return Outcome(status: status, stdout: process.stdoutLines(), stderr: process.stderrText())
    }

    private func backfill(config: URL, _ arguments: [String], timeout: TimeInterval = 120) throws -> Outcome {
        try finish(try startBackfill(config: config, arguments), timeout: timeout)
    }

    /// Rows done as the progress table says (0 before the first chunk commits).
    private func rowsDone(_ database: TestDatabase) throws -> Int {
        guard try database.tableExists("items_backfill") else { return 0 }
        return Int(try database.value("SELECT coalesce(max(rows_done), 0) FROM items_backfill") ?? "0") ?? 0
    }

    // MARK: - the issue's scenario

    func testTwoHundredThousandRows_backfilledWhileWritersUpdate_everyKeysFinalStateArrivesInOrder() throws {
        // The issue's figure; ADP_BACKFILL_TEST_ROWS scales it down for a quick local run.
        let rows = ProcessInfo.processInfo.environment["ADP_BACKFILL_TEST_ROWS"].flatMap { Int($0) } ?? 200_000
        let setUpStarted = Date()
        let p = try startPipeline(schemaSQL: itemsSQL(rows: rows), tables: [items]) { config in
            config.service.batchSize = 1000
            config.service.maxConcurrentPublishes = 16
            config.logging.level = "info"   // 200,000 debug lines would only slow the worker down
        }
        // Only what the checks need: 200,000 full requests with headers would take the ingestor
        // hundreds of MB.
        try p.ingestor.setControl(["keep": ["primary_key", "operation", "atomic_data"]])
        let started = Date()
        let process = try startBackfill(config: p.configURL, ["--table", "items", "--batch", "5000"])

        // The application writes while the backfill runs: a few hot keys every round and random
        // keys ahead of and behind the backfill's position.
        let writer = try PostgresConnection.connect(ConnectionParameters(p.database.config, applicationName: "adp-it-writer"))
        var generator = SystemRandomNumberGenerator()
        var writes = 0, rounds = 0
        while process.isRunning || rounds < 20 {
            var keys = Array(1...5)
            keys += (0..<50).map { _ in Int.random(in: 1...rows, using: &generator) }
            let updated = try writer.execute("UPDATE items SET version = version + 1 WHERE id = ANY($1::bigint[])",
                                             ["{" + keys.map(String.init).joined(separator: ",") + "}"])
            writes += updated.affectedRows
            rounds += 1
            if !process.isRunning { Thread.sleep(forTimeInterval: 0.01) }
        }
        let outcome = try finish(process)
        XCTAssertEqual(outcome.status, 0, outcome.all)
        let enqueued = Date()
        XCTAssertEqual(try p.database.count("SELECT rows_done FROM items_backfill WHERE where_clause = ''"), rows, "every row enqueued once")
        XCTAssertTrue(outcome.stdout.last?.contains("done, \(rows) rows enqueued") ?? false, outcome.all)

        // Not waitUntilTrackingTableIsEmpty: its count(*) every 50 ms over 200,000 live and dead
        // rows would keep a core of PostgreSQL busy and slow the drain it waits for.
        var lastLook = Date.distantPast
        try waitUntil(timeout: 400, "items_changes is empty") {
            guard Date().timeIntervalSince(lastLook) >= 1 else { return false }
            lastLook = Date()
            return try p.database.value("SELECT NOT EXISTS (SELECT 1 FROM items_changes)") == "t"
        }
        let drained = Date()

        // Final state per key, from the database and from the ingestor.
        var expected: [String: Int] = [:]
        for row in try p.database.execute("SELECT id::text, version FROM items").rows {
            expected[row[0]!] = Int(row[1]!)!
        }
        // Read with JSONSerialization directly: `requests()` builds a `JSON` tree per request,
        // which for 200,000 of them takes about a minute in a debug build.
        let raw = try JSONSerialization.jsonObject(with: Data(try p.ingestor.rawRequestsBody()))
        let requests = try XCTUnwrap(raw as? [[String: Any]], "GET /_requests must answer an array of objects")
        let fetched = Date()
        var versions: [String: [Int]] = [:]
        var lastOperation: [String: String] = [:]
        var failedRequests = 0
        for request in requests {
            if (request["status"] as? Int) != 200 { failedRequests += 1 }
            let body = request["body"] as? [String: Any] ?? [:]
            guard let key = body["primary_key"] as? String, let data = body["atomic_data"] as? [[String: Any]],
                  let version = data.first?["version"] as? Int else {
                XCTFail("unexpected payload \(request)")
                continue
            }
            versions[key, default: []].append(version)
            lastOperation[key] = body["operation"] as? String
        }
        XCTAssertEqual(failedRequests, 0, "the ingestor answered 200 to every publish")
        XCTAssertEqual(versions.count, rows, "a payload for every key")
        var wrongFinal = 0, backwards = 0, notBackfill = 0
        for (key, version) in expected {
            let seen = versions[key] ?? []
            if seen.last != version { wrongFinal += 1; if wrongFinal <= 5 { XCTFail("key \(key): final version \(version), last payload \(seen)") } }
            if seen != seen.sorted() { backwards += 1; if backwards <= 5 { XCTFail("key \(key): versions went back: \(seen)") } }
            // A key the writer never touched was last published for its backfill row.
            if version == 0 && lastOperation[key] != "backfill" { notBackfill += 1 }
        }
        XCTAssertEqual(wrongFinal, 0, "keys whose final state did not arrive last")
        XCTAssertEqual(backwards, 0, "keys whose payloads went backwards")
        XCTAssertEqual(notBackfill, 0, "untouched keys must be published with \"operation\": \"backfill\"")
        XCTAssertGreaterThan(writes, 100, "the writer ran during the backfill")

        print(String(format: "BackfillTests: %d rows enqueued in %.1f s while %d updates were written; all %d keys delivered (%d requests) %.1f s later; requests read back in %.1f s, checked in %.1f s (set-up %.1f s)",
                     rows, enqueued.timeIntervalSince(started), writes, rows, requests.count, drained.timeIntervalSince(enqueued),
                     fetched.timeIntervalSince(drained), Date().timeIntervalSince(fetched), started.timeIntervalSince(setUpStarted)))
    }

    func testAnInterruptedBackfill_resumesWithoutRedoingFinishedChunks() throws {
        // No worker: every 'B' row stays in the tracking table, so it can be counted.
        let rows = 20_000
        let database = try makeDatabase()
        try database.executeScript(itemsSQL(rows: rows))
        let config = try writeConfig(ConfigFile.forTests(database: database.config, ingestorURL: "http://127.0.0.1:9", tables: [items]))
        addDiagnostics { Self.trackingTableSummary(database, self.items) }
        let backfillRows = "SELECT count(*) FROM items_changes WHERE operation = 'B'"

        // 1. Ctrl-C: stops after the chunk in flight, says how to resume.
        let first = try startBackfill(config: config, ["--table", "items", "--batch", "500", "--rate", "4000/s"])
        try waitUntil("the first backfill has done 2,000 rows") { try rowsDone(database) >= 2_000 }
        first.send(SIGINT)
        let interrupted = try finish(first)
        XCTAssertEqual(interrupted.status, 130, interrupted.all)
        XCTAssertTrue(interrupted.stderr.contains("rerun the same command to resume"), interrupted.all)
        let afterInterrupt = try rowsDone(database)
        XCTAssertLessThan(afterInterrupt, rows)
        XCTAssertEqual(try database.count(backfillRows), afterInterrupt, "the progress row counts exactly the committed chunks")

        // 2. kill -9 mid-way through the resumed run.
        let second = try startBackfill(config: config, ["--table", "items", "--batch", "500", "--rate", "4000/s"])
        try waitUntil("the resumed backfill has moved on by 2,000 rows") { try rowsDone(database) >= afterInterrupt + 2_000 }
        second.send(SIGKILL)
        let killed = try finish(second)
        XCTAssertEqual(killed.status, 128 + SIGKILL)
        XCTAssertTrue(killed.stdout.first?.contains("resuming after key") ?? false, killed.all)
        let afterKill = try rowsDone(database)
        XCTAssertLessThan(afterKill, rows)
        XCTAssertEqual(try database.count(backfillRows), afterKill, "a killed chunk left nothing behind, a committed one its progress")

        // 3. Rerun: finishes the rest only.
        let rest = try backfill(config: config, ["--table", "items", "--batch", "500"])
        XCTAssertEqual(rest.status, 0, rest.all)
        XCTAssertTrue(rest.all.contains("\(afterKill) rows done earlier, \(rows - afterKill) to go"), rest.all)
        XCTAssertEqual(try database.count(backfillRows), rows, "one 'B' row per row overall")
        XCTAssertEqual(try database.count("SELECT count(DISTINCT primary_key) FROM items_changes WHERE operation = 'B'"), rows, "every key once")
        XCTAssertEqual(try database.count("SELECT count(*) FROM items_changes WHERE operation = 'B' AND primary_key::bigint NOT BETWEEN 1 AND \(rows)"), 0)

        // 4. Once finished, the same command starts a new backfill; --where narrows it.
        let again = try backfill(config: config, ["--table", "items", "--where", "id <= 100 -- a trailing comment"])
        XCTAssertEqual(again.status, 0, again.all)
        XCTAssertEqual(try database.count(backfillRows), rows + 100)
    }

    func testProgress_onAPipe_isPlainLinesNamingDoneTotalRateAndETA() throws {
        let database = try makeDatabase()
        try database.executeScript(itemsSQL(rows: 5_000))
        let config = try writeConfig(ConfigFile.forTests(database: database.config, ingestorURL: "http://127.0.0.1:9", tables: [items]))
        let outcome = try backfill(config: config, ["--table", "items", "--batch", "250", "--rate", "5000/s", "--progress-interval", "0.2"])
        XCTAssertEqual(outcome.status, 0, outcome.all)
        XCTAssertEqual(outcome.stdout.first, "backfill public.items: 5000 rows to enqueue, 250 per chunk, at most 5000 rows/s", outcome.all)
        let progress = try NSRegularExpression(pattern: #"^backfill public\.items: (\d+)/5000 rows \(\d+\.\d%\), (\d+) rows/s, ETA (\d+ s|unknown)$"#)
        let lines = outcome.stdout.filter { progress.firstMatch(in: $0, range: NSRange($0.startIndex..., in: $0)) != nil }
        XCTAssertGreaterThanOrEqual(lines.count, 2, "progress lines every 0.2 s over about a second: \(outcome.all)")
        XCTAssertFalse(outcome.all.contains("\u{1B}["), "no terminal escapes on a pipe")
        XCTAssertTrue(outcome.stdout.last?.hasPrefix("backfill public.items: done, 5000 rows enqueued") ?? false, outcome.all)
        print("BackfillTests progress sample:\n" + outcome.stdout.joined(separator: "\n"))
    }

    // MARK: - the payload and the worker

    func testABackfillPayload_saysBackfill_andALaterUpdateWins() throws {
        let p = try startPipeline(schemaSQL: itemsSQL(rows: 3), tables: [items])
        let before = try p.database.now()
        let outcome = try backfill(config: p.configURL, ["--table", "items"])
        XCTAssertEqual(outcome.status, 0, outcome.all)
        let after = try p.database.now()
        let requests = try waitForRequests(p.ingestor, count: 3)
        XCTAssertEqual(requests.count, 3)
        for request in requests {
            let key = request.body["primary_key"]?.string ?? "?"
            assertPayload(request, ExpectedPayload(table: items, primaryKey: key, operation: "backfill", changeColumnValue: "0",
                                                   atomicData: [["id": .number(Double(Int(key) ?? 0)), "version": 0]],
                                                   changedBetween: before...after))
        }
        try waitUntilTrackingTableIsEmpty(p.database, items)
        try p.ingestor.clearRequests()
        try p.database.execute("UPDATE items SET version = 1 WHERE id = 2")
        let update = try waitForRequests(p.ingestor, count: 1)[0]
        XCTAssertEqual(update.body["operation"], "update", "\(update)")
        XCTAssertEqual(update.body["atomic_data"], [["id": 2, "version": 1]], "\(update)")
    }

    // MARK: - errors and upgrades

    func testBadArguments_exitWithOneClearSentence_andEnqueueNothing() throws {
        let database = try makeDatabase()
        try database.executeScript(itemsSQL(rows: 10))
        let config = try writeConfig(ConfigFile.forTests(database: database.config, ingestorURL: "http://127.0.0.1:9", tables: [items]))
        let cases: [(arguments: [String], status: Int32, expect: String)] = [
            (["--table", "gadgets"], 78, "table 'gadgets' is not in service.watched_tables"),
            (["--table", ""], 64, "--table must name a watched table"),
            (["--table", "items", "--where", "  "], 64, "--where is empty"),
            (["--table", "items", "--where", "colour = 'red'"], 78, "--where does not work as a condition on public.items: column \"colour\" does not exist"),
            (["--table", "items", "--where", "id > 1; DROP TABLE items"], 78, "--where does not work"),
            (["--table", "items", "--batch", "0"], 64, "--batch must be between 1 and 1000000"),
            (["--table", "items", "--rate", "fast"], 64, "--rate must be a positive number of rows per second"),
        ]
        for c in cases {
            let outcome = try backfill(config: config, c.arguments)
            XCTAssertEqual(outcome.status, c.status, "\(c.arguments): \(outcome.all)")
            XCTAssertTrue(outcome.all.contains(c.expect), "\(c.arguments): the message must say '\(c.expect)': \(outcome.all)")
            XCTAssertFalse(outcome.all.contains("Fatal error"), outcome.all)
        }
        XCTAssertTrue(try database.tableExists("items"))
        if try database.tableExists("items_changes") {
            XCTAssertEqual(try database.rowCount("items_changes"), 0, "nothing enqueued")
        }

        // `operations` lists trigger events only: backfill is the command's, not the trigger's.
        var toml = ConfigFile.render(ConfigFile.forTests(database: database.config, ingestorURL: "http://127.0.0.1:9", tables: [items]))
        toml = toml.replacingOccurrences(of: "operations = [\"insert\", \"update\", \"delete\"]", with: "operations = [\"update\", \"backfill\"]")
        XCTAssertTrue(toml.contains("\"backfill\""), "the test's TOML writer changed: \(toml)")
        let bad = workDirectory.appendingPathComponent("bad.toml")
        try toml.write(to: bad, atomically: true, encoding: .utf8)
        let refused = try backfill(config: bad, ["--table", "items"])
        XCTAssertEqual(refused.status, 78, refused.all)
        XCTAssertTrue(refused.all.contains("operations[1]") && refused.all.contains("'backfill'"), refused.all)
    }

    func testSetup_upgradesATrackingTableMadeBeforeBackfill() throws {
        let database = try makeDatabase()
        try database.executeScript(itemsSQL(rows: 10))
        let config = try writeConfig(ConfigFile.forTests(database: database.config, ingestorURL: "http://127.0.0.1:9", tables: [items]))
        let schema = TrackingSchema(table: items)
        try schema.install(on: database.connection)
        // What an older version made: operation IN ('I', 'U', 'D'), no progress table.
        for table in ["items_changes", "items_changes_failed"] {
            try database.executeScript("""
                ALTER TABLE \(table) DROP CONSTRAINT IF EXISTS \(table)_operation_check;
                ALTER TABLE \(table) ADD CONSTRAINT \(table)_operation_check CHECK (operation IN ('I', 'U', 'D'));
                """)
        }
        try database.execute("DROP TABLE items_backfill")
        XCTAssertThrowsError(try database.execute("INSERT INTO items_changes (primary_key, operation) VALUES ('1', 'B')"))

        XCTAssertFalse(try schema.install(on: database.connection), "the trigger is already right: left alone")
        try database.execute("INSERT INTO items_changes (primary_key, operation) VALUES ('1', 'B')")
        try database.execute("INSERT INTO items_changes_failed (id, primary_key, operation) VALUES (1, '1', 'B')")
        XCTAssertTrue(try database.tableExists("items_backfill"))
        XCTAssertEqual(try database.count("SELECT count(*) FROM pg_constraint WHERE conrelid = 'items_changes_failed'::regclass AND contype = 'c'"), 1,
                       "one CHECK on operation, replaced rather than added")
        XCTAssertEqual(try database.count("SELECT count(*) FROM pg_constraint WHERE conrelid = 'items_changes'::regclass AND contype = 'c'"), 0,
                       "the queue has no CHECK on operation, which cost the writers (the owner drops the old one)")
        try database.execute("DELETE FROM items_changes")
        try database.execute("DELETE FROM items_changes_failed")

        // The backfill command upgrades too (it runs setup's idempotent install first).
        try database.executeScript("""
            ALTER TABLE items_changes ADD CONSTRAINT items_changes_operation_check CHECK (operation IN ('I', 'U', 'D'));
            """)
        let outcome = try backfill(config: config, ["--table", "items"])
        XCTAssertEqual(outcome.status, 0, outcome.all)
        XCTAssertEqual(try database.count("SELECT count(*) FROM items_changes WHERE operation = 'B'"), 10)
    }
}
