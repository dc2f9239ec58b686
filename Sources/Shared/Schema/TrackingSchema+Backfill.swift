// Backfill (publishing rows that existed before the trigger): enqueue the keys of rows that already exist, as tracking rows with
// operation 'B', so the worker publishes their current state like any other change.
//
// Invariants:
// - One statement per chunk: read the next `limit` keys after the last one (keyset pagination
//   on the watched table's primary key, in the key column's own type and order), insert their
//   'B' rows, and advance the progress row of `T_backfill`, all in one implicit transaction. A
//   chunk is therefore recorded exactly once: an interruption (Ctrl-C, kill -9, a lost
//   connection) either committed the chunk and its progress, or neither.
// - The application's table is only read: each chunk holds ACCESS SHARE on it for one short
//   statement (an index range scan of `limit` keys), which never blocks the application's
//   writes and takes no row locks.
// - Safe while the service runs and the application writes: a 'B' row is just another "this key
//   changed" marker; the worker reads the key's current state when it publishes, and a write
//   after the chunk's snapshot is captured by the trigger as usual. Ordering per key is the
//   worker's (tracking ids), unchanged.
// - `--where` is operator SQL, like atomic_data_query: spliced as one parenthesised condition
//   (on its own lines, so a trailing `--` comment cannot swallow the closing parenthesis) into a
//   single statement (libpq's extended protocol refuses a second statement).

extension TrackingSchema {
    public var backfillTableName: String { "\(table.name)_backfill" }
    public var backfillTable: String { "\(schemaIdent).\(quoteIdentifier(backfillTableName))" }

    /// One progress row per `--where` text ('' for none): rerunning the same command resumes.
    /// `last_key` is the key column's text, cast back to `key_type` to compare (never text order).
    public var createBackfillTableSQL: String {
        """
        CREATE TABLE IF NOT EXISTS \(backfillTable) (
            where_clause text PRIMARY KEY,
            key_type text NOT NULL,
            last_key text,
            rows_done bigint NOT NULL DEFAULT 0,
            started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            finished_at timestamptz
        );
        """
    }

    /// Session-level advisory lock key: one backfill per table at a time.
    public var backfillLockKey: Int64 {
        Int64(bitPattern: Self.fnv1a("atomic-data-publisher:backfill:\(table.qualifiedName)"))
    }

    public struct BackfillState: Equatable, Sendable {
        public var whereClause: String
        public var keyType: String
        /// nil before the first chunk.
        public var lastKey: String?
        public var rowsDone: Int
        public var finished: Bool
    }

    public struct BackfillChunk: Equatable, Sendable {
        /// Rows this chunk enqueued.
        public var inserted: Int
        public var state: BackfillState
    }

    /// The key column's type as SQL (`format_type`), e.g. `bigint`, `text`, `uuid`.
    public func keyType(_ db: PostgresConnection) throws(PostgresError) -> String {
        let r = try db.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = to_regclass($1) AND attname = $2 AND NOT attisdropped",
                               [watchedTable, table.primaryKey])
        return r.rows.first?[0] ?? "text"
    }

    /// The progress row for this `where`, made (or reset, when the last run finished or
    /// `restart`) if needed. An unfinished row is returned as is: the caller resumes after it.
    public func beginBackfill(_ db: PostgresConnection, where whereClause: String, keyType: String, restart: Bool) throws(PostgresError) -> BackfillState {
        try db.execute("""
            INSERT INTO \(backfillTable) AS b (where_clause, key_type) VALUES ($1, $2)
            ON CONFLICT (where_clause) DO UPDATE
               SET key_type = EXCLUDED.key_type, last_key = NULL, rows_done = 0,
                   started_at = clock_timestamp(), updated_at = clock_timestamp(), finished_at = NULL
             WHERE b.finished_at IS NOT NULL OR $3::bool
            """, [whereClause, keyType, restart ? "true" : "false"])
        let r = try db.execute("SELECT where_clause, key_type, last_key, rows_done, finished_at IS NOT NULL FROM \(backfillTable) WHERE where_clause = $1",
                               [whereClause])
        return Self.state(r.rows[0])
    }

    /// The rows after the key in parameter `afterParam` (when given) that match `where`, in key
    /// order, the first `limitParam` of them (when given).
    private func pageSQL(where whereClause: String, keyType: String, afterParam: String?, limitParam: String?, select: String) -> String {
        let pk = "\(watchedTable).\(quoteIdentifier(table.primaryKey))"
        var conditions: [String] = []
        if let afterParam { conditions.append("\(pk) > \(afterParam)::\(keyType)") }
        if !whereClause.isEmpty { conditions.append("(\n\(whereClause)\n)") }
        var sql = "SELECT \(select)\nFROM \(watchedTable)\n"
        if !conditions.isEmpty { sql += "WHERE " + conditions.joined(separator: " AND ") + "\n" }
        if let limitParam { sql += "ORDER BY \(pk)\nLIMIT \(limitParam)::int" }
        return sql
    }

    /// One chunk, as one statement (see the invariants above). `p.k` is qualified on purpose: a
    /// bare `ORDER BY k` would sort by the output column `k::text` (text order: '999' > '3000'). Parameters: $1 limit, $2 the where
    /// text (the progress row's key), $3 the last key (only when `after`: an unused untyped
    /// parameter is an error).
    public func backfillChunkSQL(where whereClause: String, keyType: String, after: Bool) -> String {
        let pk = "\(watchedTable).\(quoteIdentifier(table.primaryKey))"
        let page = pageSQL(where: whereClause, keyType: keyType, afterParam: after ? "$3" : nil, limitParam: "$1",
                           select: "\(pk) AS k, \(pk)::text AS key, \(changeValueExpression(watchedTable)) AS value")
        return """
            WITH page AS MATERIALIZED (
            \(page)
            ),
            queued AS (
                INSERT INTO \(changesTable) (primary_key, operation, change_column_value)
                SELECT key, '\(ChangeOperation.backfill.code)', value FROM page ORDER BY k
                RETURNING 1
            )
            UPDATE \(backfillTable) AS b
               SET last_key = coalesce((SELECT p.k::text FROM page p ORDER BY p.k DESC LIMIT 1), b.last_key),
                   rows_done = b.rows_done + (SELECT count(*) FROM queued),
                   updated_at = clock_timestamp(),
                   finished_at = CASE WHEN (SELECT count(*) FROM page) < $1::int THEN clock_timestamp() END
             WHERE b.where_clause = $2
            RETURNING b.where_clause, b.key_type, b.last_key, b.rows_done, b.finished_at IS NOT NULL, (SELECT count(*) FROM queued)
            """
    }

    /// Enqueue the next chunk of up to `limit` keys after `state.lastKey`.
    public func backfillChunk(_ db: PostgresConnection, state: BackfillState, limit: Int) throws(PostgresError) -> BackfillChunk {
        let after = state.lastKey != nil
        let sql = backfillChunkSQL(where: state.whereClause, keyType: state.keyType, after: after)
        let r = try db.execute(sql, after ? [String(limit), state.whereClause, state.lastKey] : [String(limit), state.whereClause])
        guard let row = r.rows.first else {
            throw PostgresError(kind: .query, sqlState: nil, message: "the backfill progress row of \(table.qualifiedName) disappeared (was \(backfillTableName) truncated or dropped?)")
        }
        let chunk = BackfillChunk(inserted: Int(row[5] ?? "0") ?? 0, state: Self.state(row))
        // The trigger does not see these rows: wake a sleeping worker (TrackingSchema+Wake.swift).
        if chunk.inserted > 0 { try db.execute("SELECT pg_notify($1, '')", [wakeChannel]) }
        return chunk
    }

    /// Check the page query (and so `--where`) without running it: a syntax error or an unknown
    /// column comes back as the server's error.
    public func checkBackfillQuery(_ db: PostgresConnection, state: BackfillState) throws(PostgresError) {
        let sql = pageSQL(where: state.whereClause, keyType: state.keyType, afterParam: "$2", limitParam: "$1", select: "1")
        try db.execute("EXPLAIN " + sql, ["1", state.lastKey])
    }

    /// Rows still to do after `lastKey`: exact when the planner expects at most `exactLimit`,
    /// else the planner's estimate (a count of a huge table would be a long scan).
    public func backfillRemaining(_ db: PostgresConnection, state: BackfillState, exactLimit: Int = 2_000_000) throws(PostgresError) -> (rows: Int, estimated: Bool) {
        let after = state.lastKey != nil
        let sql = pageSQL(where: state.whereClause, keyType: state.keyType, afterParam: after ? "$1" : nil, limitParam: nil, select: "1")
        let params: [String?] = after ? [state.lastKey] : []
        let plan = try db.execute("EXPLAIN " + sql, params)
        let estimate = Self.planRows(plan.rows.first?[0] ?? "")
        if estimate > exactLimit { return (estimate, true) }
        let count = try db.execute("SELECT count(*) FROM (\(sql)) s", params)
        return (Int(count[0, 0] ?? "0") ?? 0, false)
    }

    /// Rows of the top plan node in `EXPLAIN` text: "... (cost=0.00..35.50 rows=2550 width=4)".
    static func planRows(_ line: String) -> Int {
        guard let range = line.rangeOfScalars(" rows=") else { return 0 }
        return Int(line[range.upperBound...].prefix { $0.isNumber }) ?? 0
    }

    private static func state(_ row: [String?]) -> BackfillState {
        BackfillState(whereClause: row[0] ?? "", keyType: row[1] ?? "text", lastKey: row[2],
                      rowsDone: Int(row[3] ?? "0") ?? 0, finished: row[4] == "t")
    }
}
