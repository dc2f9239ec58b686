import Foundation
import Shared
import XCTest

/// Base class of the integration tests: each test gets its own work directory, database, ingestor
/// and worker processes, made through the helpers below and all torn down in `tearDown`, whether
/// the test passed, failed or threw (workers first, then the ingestor, then the database).
/// TearDown also checks that every worker stopped with status 0, logged no unexpected error and
/// wrote nothing but worker messages on stdout.
class IntegrationTestCase: XCTestCase {
    private(set) var workDirectory: URL!
    private(set) var server: DatabaseConfig!
    private var databases: [TestDatabase] = []
    private var ingestors: [Ingestor] = []
    private var workers: [WorkerProcess] = []
    /// Extra context for failure messages, e.g. the tracking table's rows.
    private var diagnosticSources: [() -> String] = []

    override func setUpWithError() throws {
        try super.setUpWithError()
        server = try TestEnvironment.postgresServer()
        StaleResources.sweepOnce(server: server)
        workDirectory = FileManager.default.temporaryDirectory
            .appendingPathComponent(StaleResources.directoryPrefix + UUID().uuidString.prefix(8), isDirectory: true)
        try FileManager.default.createDirectory(at: workDirectory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        for worker in workers.reversed() where worker.process.isRunning {
            worker.stopAndAssertCleanExit()
        }
        for worker in workers {
            let unexpected = worker.unexpectedLogLines()
            XCTAssertTrue(unexpected.isEmpty, "\(worker.process.name) logged unexpected errors:\n\(unexpected.prefix(20).joined(separator: "\n"))")
            let violations = worker.protocolViolations()
            XCTAssertTrue(violations.isEmpty, "\(worker.process.name) wrote stdout lines that are not worker messages:\n\(violations.prefix(5).joined(separator: "\n"))")
        }
        workers.removeAll()
        for ingestor in ingestors { ingestor.stop() }
        ingestors.removeAll()
        var errors: [String] = []
        for database in databases {
            do { try database.drop() } catch { errors.append("cannot drop test database \(database.name): \(error)") }
        }
        databases.removeAll()
        diagnosticSources.removeAll()
        if let workDirectory { try? FileManager.default.removeItem(at: workDirectory) }
        try super.tearDownWithError()
        if !errors.isEmpty { XCTFail(errors.joined(separator: "\n")) }
    }

    // MARK: - resources

    /// Create this test's databases on another server from here on (`OwnPostgresServer`: a
    /// setting the shared server may not have, such as wal_level = logical).
    func useServer(_ config: DatabaseConfig) {
        server = config
    }

    func makeDatabase() throws -> TestDatabase {
        let database = try TestDatabase.create(on: server)
        databases.append(database)
        return database
    }

    /// `tls`: serve HTTPS (see `Ingestor.TLS`); `webhookSecrets`: verify Standard Webhooks signatures.
    func startIngestor(tls: Ingestor.TLS? = nil, webhookSecrets: [String] = [], host: String = "127.0.0.1") throws -> Ingestor {
        let ingestor = try Ingestor.start(directory: workDirectory, name: "ingestor\(ingestors.isEmpty ? "" : "-\(ingestors.count + 1)")",
                                          tls: tls, webhookSecrets: webhookSecrets, host: host)
        ingestors.append(ingestor)
        return ingestor
    }

    /// Write `config` as TOML into the work directory; returns its path.
    /// Roles live in the server, not in the test's database: drop them (and what they own in the
    /// test's database) when the test ends, whatever happened.
    func dropRolesAtTeardown(_ roles: String...) {
        addTeardownBlock { [server] in
            guard let server else { return }
            let admin = try? PostgresConnection.connect(ConnectionParameters(server, applicationName: "adp-it-cleanup"))
            for role in roles {
                _ = try? admin?.execute("DROP OWNED BY \(role)")
                _ = try? admin?.execute("DROP ROLE IF EXISTS \(role)")
            }
        }
    }

    func writeConfig(_ config: PublisherConfig, name: String = "config.toml") throws -> URL {
        let url = workDirectory.appendingPathComponent(name)
        try ConfigFile.write(config, to: url)
        return url
    }

    /// Start `atomic-data-table-worker --table NAME --config PATH` and wait for its ready line.
    @discardableResult
    func startWorker(table: String, config: URL, file: StaticString = #filePath, line: UInt = #line) throws -> WorkerProcess {
        let worker = try startWorkerWithoutWaiting(table: table, config: config)
        guard worker.waitUntilReady(file: file, line: line) else {
            throw TestStopped(reason: "the worker for '\(table)' did not become ready")
        }
        return worker
    }

    func startWorkerWithoutWaiting(table: String, config: URL) throws -> WorkerProcess {
        let worker = try WorkerProcess(table: table, configURL: config, directory: workDirectory,
                                       name: "worker-\(table)-\(workers.count + 1)")
        workers.append(worker)
        return worker
    }

    /// The common setup: a database with `schemaSQL` applied, an ingestor, a config watching
    /// `tables`, and a ready worker for the first table.
    func startPipeline(schemaSQL: String, tables: [WatchedTable], ingestorTLS: Ingestor.TLS? = nil, webhookSecrets: [String] = [],
                       adjust: (inout PublisherConfig) -> Void = { _ in },
                       file: StaticString = #filePath, line: UInt = #line) throws -> Pipeline {
        let database = try makeDatabase()
        try database.executeScript(schemaSQL)
        let ingestor = try startIngestor(tls: ingestorTLS, webhookSecrets: webhookSecrets)
        var config = ConfigFile.forTests(database: database.config, ingestorURL: ingestor.baseURL, tables: tables)
        adjust(&config)
        let configURL = try writeConfig(config)
        for table in tables {
            addDiagnostics { Self.trackingTableSummary(database, table) }
        }
        let worker = try startWorker(table: tables[0].name, config: configURL, file: file, line: line)
        return Pipeline(database: database, ingestor: ingestor, worker: worker, config: config, configURL: configURL)
    }

    struct Pipeline {
        let database: TestDatabase
        let ingestor: Ingestor
        let worker: WorkerProcess
        let config: PublisherConfig
        let configURL: URL
    }

    // MARK: - waiting and diagnostics

    func addDiagnostics(_ source: @escaping () -> String) {
        diagnosticSources.append(source)
    }

    /// What the ingestor received, the registered extras (tracking tables) and each worker's stderr tail.
    func diagnostics() -> String {
        var parts = ingestors.map { $0.summary() }
        parts += diagnosticSources.map { $0() }
        parts += workers.map { $0.diagnostics() }
        return parts.joined(separator: "\n")
    }

    /// `Wait.until`, reporting `diagnostics()` on timeout, then ending the test (`TestStopped`):
    /// what follows a wait depends on it.
    func waitUntil(timeout: TimeInterval = Wait.defaultTimeout, _ what: String, file: StaticString = #filePath, line: UInt = #line,
                   _ condition: () throws -> Bool) throws {
        guard Wait.until(timeout: timeout, what, lastSeen: { self.diagnostics() }, file: file, line: line, condition) else {
            throw TestStopped(reason: "timed out waiting until \(what)")
        }
    }

    /// Wait until the ingestor has received at least `count` requests; returns all of them.
    @discardableResult
    func waitForRequests(_ ingestor: Ingestor, count: Int, timeout: TimeInterval = Wait.defaultTimeout,
                         file: StaticString = #filePath, line: UInt = #line) throws -> [RecordedRequest] {
        var received: [RecordedRequest] = []
        try waitUntil(timeout: timeout, "the ingestor has received \(count) request(s)", file: file, line: line) {
            received = try ingestor.requests()
            return received.count >= count
        }
        return received
    }

    /// Wait until the tracking table `<table>_changes` is empty (every change acknowledged).
    func waitUntilTrackingTableIsEmpty(_ database: TestDatabase, _ table: WatchedTable, timeout: TimeInterval = Wait.defaultTimeout,
                                       file: StaticString = #filePath, line: UInt = #line) throws {
        try waitUntil(timeout: timeout, "\(table.schema).\(table.name)_changes is empty", file: file, line: line) {
            try database.rowCount("\(table.name)_changes", schema: table.schema) == 0
        }
    }

    /// The tracking table's size and first rows, for failure messages.
    static func trackingTableSummary(_ database: TestDatabase, _ table: WatchedTable) -> String {
        let name = "\(quoteIdentifier(table.schema)).\(quoteIdentifier(table.name + "_changes"))"
        guard !database.isDropped,
              let result = try? database.execute("""
                  SELECT id, primary_key, operation::text, change_column_value, attempts, last_error, next_attempt_at::text
                  FROM \(name) ORDER BY id LIMIT 10
                  """),
              let total = try? database.count("SELECT count(*) FROM \(name)") else {
            return "--- \(table.name)_changes: unreadable ---"
        }
        let rows = result.rows.map { "  " + $0.map { $0 ?? "NULL" }.joined(separator: " | ") }.joined(separator: "\n")
        return "--- \(table.name)_changes: \(total) row(s) (id | primary_key | op | change_column_value | attempts | last_error | next_attempt_at) ---\n\(rows)"
    }

    // MARK: - payload assertions

    /// What a payload must be (DESIGN.md section 5). `trackingID`: the highest tracking id the
    /// payload covers, which makes its `id`; `changedBetween`: the server clock before and after
    /// the write that made the change.
    struct ExpectedPayload {
        var table: WatchedTable
        var primaryKey: String
        var operation: String
        var changeColumnValue: JSON
        var atomicData: JSON
        var trackingID: Int? = nil
        var changedBetween: ClosedRange<PayloadTimestamp>? = nil
        var retryCount: Int = 0
        /// The payload's `cause` (a dependency's change covered); nil: the payload has no `cause`.
        var cause: JSON? = nil
    }

    static let payloadKeys: Set<String> = ["id", "table_name", "schema", "primary_key", "operation", "change_column_value",
                                           "changed_at", "atomic_data", "metadata"]
    static let metadataKeys: Set<String> = ["service_name", "version", "timestamp", "retry_count", "publisher_epoch"]

    /// `Idempotency-Key: <id>.<16 hex digits of the body's digest>` (docs/delivery.md, "Payload"): one key
    /// always means one body.
    func assertIdempotencyKey(_ request: RecordedRequest, file: StaticString = #filePath, line: UInt = #line) {
        let key = request.header("Idempotency-Key") ?? ""
        let id = request.body["id"]?.string ?? "?"
        let digest = key.hasPrefix(id + ".") ? String(key.dropFirst(id.count + 1)) : ""
        XCTAssertTrue(digest.count == 16 && digest.allSatisfy(\.isHexDigit),
                      "Idempotency-Key must be the body's id, a dot and 16 hex digits, found '\(key)' in \(request)", file: file, line: line)
    }

    /// A key's payloads arrive in commit order: the counter `n` of its atomic data and its tracking
    /// id never go back, and no tracking id is published twice (nothing failed in between).
    func assertEachKeysPayloadsInCommitOrder(_ requests: [RecordedRequest], file: StaticString = #filePath, line: UInt = #line) {
        let byKey = Dictionary(grouping: requests) { $0.body["primary_key"]?.string ?? "" }
        for (key, payloads) in byKey {
            let counts = payloads.compactMap { $0.body["atomic_data"]?[0]?["n"]?.int }
            XCTAssertEqual(counts, counts.sorted(), "payloads of \(key) out of commit order", file: file, line: line)
            let trackingIDs = payloads.compactMap { $0.body["id"]?.string?.split(separator: ":").last.flatMap { Int($0) } }
            XCTAssertEqual(trackingIDs.count, payloads.count, "unparsable ids for \(key)", file: file, line: line)
            XCTAssertEqual(trackingIDs, trackingIDs.sorted(), "payload ids of \(key) out of order", file: file, line: line)
            XCTAssertEqual(Set(trackingIDs).count, trackingIDs.count, "\(key) published the same changes twice without a failure", file: file, line: line)
        }
    }

    /// Assert every field of the request and its payload: path, headers, body, metadata.
    func assertPayload(_ request: RecordedRequest, _ expected: ExpectedPayload, file: StaticString = #filePath, line: UInt = #line) {
        let body = request.body
        let context = "in \(request)"
        let table = expected.table
        XCTAssertEqual(request.path, table.publishEndpoint, "path \(context)", file: file, line: line)
        XCTAssertEqual(request.header("Content-Type"), "application/json", "Content-Type \(context)", file: file, line: line)
        XCTAssertEqual(request.header("User-Agent"), "atomic-data-publisher/\(PublisherVersion.current)", "User-Agent \(context)", file: file, line: line)
        XCTAssertNotNil(body["id"]?.string, "id must be a string \(context)", file: file, line: line)
        assertIdempotencyKey(request, file: file, line: line)
        XCTAssertEqual(body.keys, Self.payloadKeys.union(expected.cause == nil ? [] : ["cause"]), "the payload's keys \(context)", file: file, line: line)
        XCTAssertEqual(body["cause"], expected.cause, "cause \(context)", file: file, line: line)

        // <schema>.<table>:<epoch: the tracking table's OID>:<highest tracking id covered>
        let id = body["id"]?.string ?? ""
        let parts = id.split(separator: ":", omittingEmptySubsequences: false)
        XCTAssertTrue(parts.count == 3 && parts[0] == "\(table.schema).\(table.name)" && Int(parts[1]) != nil && Int(parts[2]) != nil,
                      "id must be '\(table.schema).\(table.name):<epoch>:<tracking id>' \(context)", file: file, line: line)
        if let trackingID = expected.trackingID, parts.count == 3 {
            XCTAssertEqual(Int(parts[2]), trackingID, "id's tracking id \(context)", file: file, line: line)
        }
        XCTAssertEqual(body["table_name"], .string(table.name), "table_name \(context)", file: file, line: line)
        XCTAssertEqual(body["schema"], .string(table.schema), "schema \(context)", file: file, line: line)
        XCTAssertEqual(body["primary_key"], .string(expected.primaryKey), "primary_key \(context)", file: file, line: line)
        XCTAssertEqual(body["operation"], .string(expected.operation), "operation \(context)", file: file, line: line)
        XCTAssertEqual(body["change_column_value"], expected.changeColumnValue, "change_column_value \(context)", file: file, line: line)
        XCTAssertEqual(body["atomic_data"], expected.atomicData, "atomic_data \(context)", file: file, line: line)

        let changedAt = body["changed_at"]?.string.flatMap(PayloadTimestamp.init)
        XCTAssertNotNil(changedAt, "changed_at must be an RFC 3339 UTC timestamp \(context)", file: file, line: line)
        if let changedAt, let window = expected.changedBetween {
            XCTAssertTrue(window.contains(changedAt), "changed_at \(changedAt) must lie between \(window.lowerBound) and \(window.upperBound), when the change was committed \(context)",
                          file: file, line: line)
        }

        let metadata = body["metadata"] ?? .null
        XCTAssertEqual(metadata.keys, Self.metadataKeys, "metadata keys \(context)", file: file, line: line)
        XCTAssertEqual(metadata["service_name"], "atomic-data-publisher", "metadata.service_name \(context)", file: file, line: line)
        XCTAssertEqual(metadata["version"], .string(PublisherVersion.current), "metadata.version \(context)", file: file, line: line)
        XCTAssertEqual(metadata["retry_count"], .number(Double(expected.retryCount)), "metadata.retry_count \(context)", file: file, line: line)
        // The lease grant's epoch, the same in the header an ingestor fences on.
        XCTAssertGreaterThan(metadata["publisher_epoch"]?.int ?? 0, 0, "metadata.publisher_epoch \(context)", file: file, line: line)
        let timestamp = metadata["timestamp"]?.string.flatMap(PayloadTimestamp.init)
        XCTAssertNotNil(timestamp, "metadata.timestamp must be an RFC 3339 UTC timestamp \(context)", file: file, line: line)
        if let timestamp, let changedAt {
            // The payload is built after the change: allow for changed_at's finer precision.
            XCTAssertGreaterThanOrEqual(timestamp.microseconds + 1_000, changedAt.microseconds,
                                        "metadata.timestamp must not precede changed_at \(context)", file: file, line: line)
        }
    }
}

/// Ends a test after a failure has been recorded with the details (a wait timed out): the rest
/// of the test depends on what did not happen.
struct TestStopped: Error, CustomStringConvertible {
    let reason: String
    var description: String { "test stopped: \(reason) (details in the failure above)" }
}
