// The tracking table as a queue (DESIGN.md section 5).
//
// Invariants:
// - Rows are read oldest first (by tracking id) and only when due (`next_attempt_at` unset or
//   past). A key with an earlier row still backing off is skipped entirely, so a retry can never
//   be overtaken by a newer change to the same key.
// - Rows are deleted only by tracking id, only after the ingestor acknowledged the payload that
//   covered them. A change committed after the batch was read has a larger id and stays.
// - Each operation is one round trip, whatever the batch size.

import Foundation
import Shared

struct ChangeRow: Equatable {
    var id: Int64
    var primaryKey: String
    var operation: ChangeOperation
    var changeColumnValue: String?
    var changedAt: String
    var attempts: Int
}

/// Every tracking row of one key in a batch: one publish covers them all.
struct KeyChanges: Equatable {
    var primaryKey: String
    var rows: [ChangeRow]

    var ids: [Int64] { rows.map(\.id) }
    var latest: ChangeRow { rows.max { $0.id < $1.id }! }
    var attempts: Int { rows.map(\.attempts).max() ?? 0 }

    /// Group rows by key, keeping the order in which keys first appear (oldest first).
    static func coalesce(_ rows: [ChangeRow]) -> [KeyChanges] {
        var order: [String] = []
        var groups: [String: [ChangeRow]] = [:]
        for row in rows {
            if groups[row.primaryKey] == nil { order.append(row.primaryKey) }
            groups[row.primaryKey, default: []].append(row)
        }
        return order.map { KeyChanges(primaryKey: $0, rows: groups[$0]!) }
    }
}

struct ChangeFeed {
    let schema: TrackingSchema

    init(table: WatchedTable) {
        schema = TrackingSchema(table: table)
    }

    func fetchDue(_ db: PostgresConnection, limit: Int) throws(PostgresError) -> [ChangeRow] {
        let t = schema.changesTable
        let result = try db.execute("""
            SELECT c.id, c.primary_key, c.operation::text, c.change_column_value,
                   to_char(c.changed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), c.attempts
            FROM \(t) c
            WHERE (c.next_attempt_at IS NULL OR c.next_attempt_at <= clock_timestamp())
              AND NOT EXISTS (SELECT 1 FROM \(t) b
                              WHERE b.primary_key = c.primary_key AND b.next_attempt_at > clock_timestamp() AND b.id < c.id)
            ORDER BY c.id
            LIMIT $1
            """, [String(limit)])
        return Self.rows(result)
    }

    private static func rows(_ result: QueryResult) -> [ChangeRow] {
        result.rows.compactMap { r in
            guard let id = r[0].flatMap({ Int64($0) }), let key = r[1], let op = r[2].flatMap(ChangeOperation.init(code:)) else { return nil }
            return ChangeRow(id: id, primaryKey: key, operation: op, changeColumnValue: r[3], changedAt: r[4] ?? "", attempts: Int(r[5] ?? "0") ?? 0)
        }
    }

    /// The other rows of these keys visible now (beyond the batch's LIMIT): read in the batch's
    /// snapshot, their changes are in the state read for the key, so one publish covers them too.
    func fetchCovered(_ db: PostgresConnection, keys: [String], excluding ids: [Int64], limit: Int) throws(PostgresError) -> [ChangeRow] {
        if keys.isEmpty { return [] }
        let result = try db.execute("""
            SELECT c.id, c.primary_key, c.operation::text, c.change_column_value,
                   to_char(c.changed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), c.attempts
            FROM \(schema.changesTable) c
            WHERE c.primary_key = ANY($1::text[]) AND NOT c.id = ANY($2::bigint[])
            ORDER BY c.id
            LIMIT $3
            """, [Self.textArray(keys), Self.array(ids), String(limit)])
        return Self.rows(result)
    }

    /// Acknowledge: delete exactly these tracking rows.
    func delete(_ db: PostgresConnection, ids: [Int64]) throws(PostgresError) {
        if ids.isEmpty { return }
        try db.execute("DELETE FROM \(schema.changesTable) WHERE id = ANY($1::bigint[])", [Self.array(ids)])
    }

    /// Record a failed attempt and when to try again.
    func reschedule(_ db: PostgresConnection, ids: [Int64], error: String, afterSeconds: Double, attemptsMade: Int = 1) throws(PostgresError) {
        if ids.isEmpty { return }
        try db.execute("""
            UPDATE \(schema.changesTable)
            SET attempts = attempts + $4::int, last_error = $2,
                next_attempt_at = clock_timestamp() + make_interval(secs => $3::double precision)
            WHERE id = ANY($1::bigint[])
            """, [Self.array(ids), String(error.prefix(2000)), String(afterSeconds), String(attemptsMade)])
    }

    /// Move rows to the dead-letter table, with their last error, in one statement.
    func deadLetter(_ db: PostgresConnection, ids: [Int64], error: String, attemptsMade: Int = 1) throws(PostgresError) {
        if ids.isEmpty { return }
        try db.execute("""
            WITH moved AS (DELETE FROM \(schema.changesTable) WHERE id = ANY($1::bigint[]) RETURNING *)
            INSERT INTO \(schema.failedTable)
                (id, primary_key, operation, change_column_value, changed_at, attempts, last_error, next_attempt_at)
            SELECT id, primary_key, operation, change_column_value, changed_at, attempts + $3::int, $2, NULL FROM moved
            ON CONFLICT (id) DO NOTHING
            """, [Self.array(ids), String(error.prefix(2000)), String(attemptsMade)])
    }

    struct Backlog {
        var count = 0
        var oldestAgeSeconds = 0.0
        var deadLetters = 0
        var oldestDeadLetterAgeSeconds = 0.0
        /// False once the watched table, or our trigger on it, has been dropped under us.
        var capturing = true
    }

    /// Backlog and dead letters with the age of the oldest of each, in one round trip.
    func backlog(_ db: PostgresConnection) throws(PostgresError) -> Backlog {
        let r = try db.execute("""
            SELECT (SELECT count(*) FROM \(schema.changesTable)),
                   coalesce((SELECT extract(epoch FROM clock_timestamp() - min(changed_at)) FROM \(schema.changesTable)), 0)::float8,
                   (SELECT count(*) FROM \(schema.failedTable)),
                   coalesce((SELECT extract(epoch FROM clock_timestamp() - min(failed_at)) FROM \(schema.failedTable)), 0)::float8,
                   EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass($1) AND tgname = $2)
            """, [schema.watchedTable, TrackingSchema.triggerName])
        return Backlog(count: Int(r[0, 0] ?? "0") ?? 0, oldestAgeSeconds: Double(r[0, 1] ?? "0") ?? 0,
                       deadLetters: Int(r[0, 2] ?? "0") ?? 0, oldestDeadLetterAgeSeconds: Double(r[0, 3] ?? "0") ?? 0,
                       capturing: r[0, 4] == "t")
    }

    static func array(_ ids: [Int64]) -> String {
        "{" + ids.map(String.init).joined(separator: ",") + "}"
    }

    /// A text[] literal: every element double-quoted with \\ and \" escaped, so any key is just data.
    static func textArray(_ values: [String]) -> String {
        "{" + values.map { "\"" + $0.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\"" }.joined(separator: ",") + "}"
    }
}
