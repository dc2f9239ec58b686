import Foundation
import Shared

/// A database of its own for one test, `adp_it_<runner pid>_<random>` on the test server, dropped
/// (WITH FORCE, so a leftover session cannot keep it alive) at the end. Its sessions use TimeZone UTC, so
/// timestamps render the same for the test, the trigger and the worker.
final class TestDatabase {
    let name: String
    /// Connection settings for this database (the same server as `server`).
    let config: DatabaseConfig
    /// The test's own session, for writing to the watched tables and reading the tracking tables.
    private(set) var connection: PostgresConnection
    private let server: DatabaseConfig
    private(set) var isDropped = false

    private init(name: String, server: DatabaseConfig, config: DatabaseConfig, connection: PostgresConnection) {
        self.name = name
        self.server = server
        self.config = config
        self.connection = connection
    }

    static func create(on server: DatabaseConfig) throws -> TestDatabase {
        let name = StaleResources.databasePrefix + UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: "").prefix(12)
        let admin = try PostgresConnection.connect(ConnectionParameters(server, applicationName: "adp-integration-tests"))
        defer { admin.close() }
        try admin.execute("CREATE DATABASE \(quoteIdentifier(name))")
        try admin.execute("ALTER DATABASE \(quoteIdentifier(name)) SET timezone TO 'UTC'")
        var config = server
        config.databaseName = name
        let connection = try PostgresConnection.connect(ConnectionParameters(config, applicationName: "adp-integration-tests"))
        return TestDatabase(name: name, server: server, config: config, connection: connection)
    }

    /// One statement, parameters bound.
    @discardableResult
    func execute(_ sql: String, _ params: [String?] = []) throws -> QueryResult {
        try connection.execute(sql, params)
    }

    /// Several statements in one implicit transaction (DDL, fixtures).
    func executeScript(_ sql: String) throws {
        try connection.executeScript(sql)
    }

    /// The first column of the first row (nil for SQL NULL or no row).
    func value(_ sql: String, _ params: [String?] = []) throws -> String? {
        let result = try execute(sql, params)
        return result.rows.first?.first ?? nil
    }

    func count(_ sql: String, _ params: [String?] = []) throws -> Int {
        guard let text = try value(sql, params), let n = Int(text) else {
            throw UnexpectedResult(description: "expected a count from: \(sql)")
        }
        return n
    }

    /// Rows in `schema.table` (quoted).
    func rowCount(_ table: String, schema: String = "public") throws -> Int {
        try count("SELECT count(*) FROM \(quoteIdentifier(schema)).\(quoteIdentifier(table))")
    }

    func tableExists(_ table: String, schema: String = "public") throws -> Bool {
        try value("SELECT to_regclass($1) IS NOT NULL", ["\(quoteIdentifier(schema)).\(quoteIdentifier(table))"]) == "t"
    }

    /// The database server's clock, in the payload's format (UTC, microseconds), as a `Timestamp`
    /// for comparing with `changed_at`.
    func now() throws -> PayloadTimestamp {
        let text = try value(#"SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"#) ?? ""
        guard let timestamp = PayloadTimestamp(text) else {
            throw UnexpectedResult(description: "unparsable server time '\(text)'")
        }
        return timestamp
    }

    /// A new session, after the server restarted under the old one.
    func reconnect() throws {
        connection.close()
        connection = try PostgresConnection.connect(ConnectionParameters(config, applicationName: "adp-integration-tests"))
    }

    /// Close the session and drop the database; idempotent.
    func drop() throws {
        if isDropped { return }
        connection.close()
        let admin = try PostgresConnection.connect(ConnectionParameters(server, applicationName: "adp-integration-tests"))
        defer { admin.close() }
        // A logical replication slot (WAL capture) keeps a database from being dropped: end its
        // stream, then drop it (its walsender lets it go a moment after being ended).
        let deadline = Date().addingTimeInterval(10)
        while try admin.execute("SELECT count(*) FROM pg_replication_slots WHERE database = $1", [name])[0, 0] != "0" {
            try admin.execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE database = $1 AND active_pid IS NOT NULL", [name])
            try admin.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1 AND NOT active", [name])
            if Date() > deadline { throw UnexpectedResult(description: "the replication slots of \(name) are still in use after 10 s") }
            Thread.sleep(forTimeInterval: 0.05)
        }
        try admin.execute("DROP DATABASE IF EXISTS \(quoteIdentifier(name)) WITH (FORCE)")
        isDropped = true
    }
}

struct UnexpectedResult: Error, CustomStringConvertible {
    let description: String
}

/// An RFC 3339 UTC timestamp (`2026-11-28T10:00:00.123456Z`, any number of fraction digits) as
/// microseconds since the epoch, so timestamps of different precision compare exactly.
struct PayloadTimestamp: Comparable, CustomStringConvertible {
    let microseconds: Int64
    let text: String

    init?(_ text: String) {
        self.text = text
        let pattern = #"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?Z$"#
        guard let regex = try? NSRegularExpression(pattern: pattern),
              let match = regex.firstMatch(in: text, range: NSRange(text.startIndex..., in: text)) else { return nil }
        func group(_ i: Int) -> String? {
            guard let range = Range(match.range(at: i), in: text) else { return nil }
            return String(text[range])
        }
        var parts = tm()
        parts.tm_year = Int32(group(1)!)! - 1900
        parts.tm_mon = Int32(group(2)!)! - 1
        parts.tm_mday = Int32(group(3)!)!
        parts.tm_hour = Int32(group(4)!)!
        parts.tm_min = Int32(group(5)!)!
        parts.tm_sec = Int32(group(6)!)!
        let seconds = Int64(timegm(&parts))
        var fraction = group(7) ?? ""
        fraction = String((fraction + "000000").prefix(6))
        microseconds = seconds * 1_000_000 + Int64(fraction)!
    }

    static func < (a: PayloadTimestamp, b: PayloadTimestamp) -> Bool { a.microseconds < b.microseconds }
    static func == (a: PayloadTimestamp, b: PayloadTimestamp) -> Bool { a.microseconds == b.microseconds }
    var description: String { text }
}
