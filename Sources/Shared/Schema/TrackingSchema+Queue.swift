// The tracking table as a queue (DESIGN.md section 5): every statement the worker and the
// commands run against `T_changes` and `T_changes_failed` lives here, next to the DDL.
//
// Invariants:
// - Rows are read oldest first (by tracking id) and only when due (`next_attempt_at` unset or
//   past). A key with an earlier row still backing off is skipped entirely, so a retry can never
//   be overtaken by a newer change to the same key.
// - Rows are deleted only by tracking id, only after the ingestor acknowledged the payload that
//   covered them. A change committed after the batch was read has a larger id and stays.
// - Dead-lettering and replay are one statement each. Dead-lettering moves a row with its id,
//   key, operation, value and time; replay moves it back under a new id from the queue's sequence
//   (in the dead letters' order), so a replayed key's payload never carries a version (the highest
//   tracking id covered) lower than one its key already delivered: an ingestor may keep the
//   highest version per key and drop anything lower.
// - Each operation is one round trip, whatever the batch size; the backlog gauge is bounded (it
//   never scans a large backlog).

extension TrackingSchema {
    private static let rowColumns = """
        c.id, c.primary_key, c.operation::text, c.change_column_value,
        to_char(c.changed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), c.attempts, c.permanent_failures, c.cause
        """

    public var fetchDueSQL: String { fetchDueSQL(excludingKeys: false) }

    /// `excludingKeys`: also skip the keys of `$2` (text[]): the keys of a batch still being sent
    /// when the next one is read ahead (BatchPrefetcher). `<> ALL` of a bound array is hashed by
    /// PostgreSQL 15 and later.
    public func fetchDueSQL(excludingKeys: Bool) -> String {
        """
        SELECT \(Self.rowColumns)
        FROM \(changesTable) c
        WHERE \(dueRowCondition)\(excludingKeys ? "\n  AND c.primary_key <> ALL($2::text[])" : "")
        ORDER BY c.id
        LIMIT $1
        """
    }

    /// The one rule of which rows are due, used by the batch read and by the idle check alike
    /// (when they disagreed, a key backing off with a newer change made the idle check say "due"
    /// while the read found nothing, and the worker polled 100 times a second for the whole
    /// backoff): the row's own retry time has come, and no earlier row of its key still backs off.
    var dueRowCondition: String {
        """
        (c.next_attempt_at IS NULL OR c.next_attempt_at <= clock_timestamp())\(partitionFilter("c."))
          AND NOT EXISTS (SELECT 1 FROM \(changesTable) b
                          WHERE b.primary_key = c.primary_key AND b.next_attempt_at > clock_timestamp() AND b.id < c.id)
        """
    }

    /// Whether any row is due now, by the batch read's own rule (`dueRowCondition`).
    public var anyDueSQL: String {
        "SELECT EXISTS (SELECT 1 FROM \(changesTable) c WHERE \(dueRowCondition))"
    }

    /// Reads of this many rows or more are streamed (libpq's single-row mode): at batch 5,000 the
    /// covered-rows read's `PGresult` alone was 3.4 MiB of the worker's peak. Smaller
    /// reads take the whole result at once: a result per row costs more CPU than it saves there.
    static let streamedReadRows = 1000

    /// Up to `limit` due rows, oldest first.
    public func fetchDue(_ db: PostgresConnection, limit: Int) throws(PostgresError) -> [ChangeRow] {
        var rows: [ChangeRow] = []
        try fetchDue(db, limit: limit) { rows.append($0) }
        return rows
    }

    /// The same, each row handed to `row` as it is read (nothing else holds the rows), without
    /// the rows of `excludingKeys`.
    public func fetchDue(_ db: PostgresConnection, limit: Int, excludingKeys: [String] = [], _ row: (ChangeRow) -> Void) throws(PostgresError) {
        if excludingKeys.isEmpty {
            try Self.rows(db, fetchDueSQL, [String(limit)], limit: limit, row)
        } else {
            try Self.rows(db, fetchDueSQL(excludingKeys: true), [String(limit), Self.textArray(excludingKeys)], limit: limit, row)
        }
    }

    /// The other rows of these keys visible now (beyond the batch's LIMIT): read in the batch's
    /// snapshot, their changes are in the state read for the key, so one publish covers them too.
    ///
    /// One index probe per key (`T_changes_key_idx`, each key's oldest rows first), whatever the
    /// statistics say. The plain `primary_key = ANY(...) ORDER BY id LIMIT n` lets the planner walk
    /// the primary key in id order and filter, which reads the whole backlog whenever the keys have
    /// no further rows (the common case) and the statistics are missing or stale (a freshly created
    /// or freshly filled tracking table): measured 5.5 ms per batch of 100 over a 50,000-row
    /// backlog, half of PostgreSQL's time in the drain, against 0.8 ms this way.
    public func fetchCovered(_ db: PostgresConnection, keys: [String], excluding ids: [Int64], limit: Int,
                             _ row: (ChangeRow) -> Void) throws(PostgresError) {
        if keys.isEmpty { return }
        try Self.rows(db, """
            SELECT \(Self.rowColumns)
            FROM unnest($1::text[]) k(primary_key)
            CROSS JOIN LATERAL (SELECT * FROM \(changesTable) t
                                WHERE t.primary_key = k.primary_key AND NOT t.id = ANY($2::bigint[])
                                ORDER BY t.id
                                LIMIT $3) c
            ORDER BY c.id
            LIMIT $3
            """, [Self.textArray(keys), Self.array(ids), String(limit)], limit: limit, row)
    }

    /// Acknowledge: delete exactly these tracking rows.
    public func acknowledge(_ db: PostgresConnection, ids: [Int64]) throws(PostgresError) {
        if ids.isEmpty { return }
        try db.execute("DELETE FROM \(changesTable) WHERE id = ANY($1::bigint[])", [Self.array(ids)])
    }

    /// Record failed attempts and when to try again. `permanentFailures` is 1 when the failure
    /// counts towards the dead-letter rule (a 4xx, a query error for this key), else 0.
    public func reschedule(_ db: PostgresConnection, ids: [Int64], error: String, afterSeconds: Double,
                           attemptsMade: Int, permanentFailures: Int) throws(PostgresError) {
        if ids.isEmpty { return }
        try db.execute("""
            UPDATE \(changesTable)
            SET attempts = attempts + $4::int, permanent_failures = permanent_failures + $5::int, last_error = $2,
                next_attempt_at = clock_timestamp() + make_interval(secs => $3::double precision)
            WHERE id = ANY($1::bigint[])
            """, [Self.array(ids), String(error.prefix(2000)), String(afterSeconds), String(attemptsMade), String(permanentFailures)])
    }

    /// Move rows to the dead-letter table, with their last error, in one statement.
    public func deadLetter(_ db: PostgresConnection, ids: [Int64], error: String, attemptsMade: Int) throws(PostgresError) {
        if ids.isEmpty { return }
        try db.execute(moveSQL(from: changesTable, to: failedTable, filter: "id = ANY($1::bigint[])", attempts: "attempts + $3::int",
                               permanentFailures: "permanent_failures + 1", lastError: "$2"),
                       [Self.array(ids), String(error.prefix(2000)), String(attemptsMade)])
    }

    /// Move dead letters back to the queue (all, or one tracking id), counters reset, each under a
    /// new id (see the header). Returns how many moved.
    public func replay(_ db: PostgresConnection, id: Int64?) throws(PostgresError) -> Int {
        let result = try db.execute("""
            WITH moved AS (DELETE FROM \(failedTable) WHERE \(id == nil ? "TRUE" : "id = $1::bigint") RETURNING *)
            INSERT INTO \(changesTable) (primary_key, operation, change_column_value, changed_at, attempts, permanent_failures, last_error, next_attempt_at, cause)
            SELECT primary_key, operation, change_column_value, changed_at, 0, 0, last_error, NULL, cause FROM moved ORDER BY id
            """, id.map { [String($0)] } ?? [])
        // The trigger does not see these rows: wake a sleeping worker (TrackingSchema+Wake.swift).
        if result.affectedRows > 0 { try db.execute("SELECT pg_notify($1, '')", [wakeChannel]) }
        return result.affectedRows
    }

    private func moveSQL(from source: String, to target: String, filter: String, attempts: String, permanentFailures: String,
                         lastError: String) -> String {
        """
        WITH moved AS (DELETE FROM \(source) WHERE \(filter) RETURNING *)
        INSERT INTO \(target) (id, primary_key, operation, change_column_value, changed_at, attempts, permanent_failures, last_error, next_attempt_at, cause)
        SELECT id, primary_key, operation, change_column_value, changed_at, \(attempts), \(permanentFailures), \(lastError), NULL, cause FROM moved
        ON CONFLICT (id) DO NOTHING
        """
    }

    /// Up to this many rows are counted exactly; above it the backlog is PostgreSQL's estimate.
    public static let exactBacklogLimit = 10_000

    /// The backlog gauge, bounded whatever the backlog: counts stop at `exactBacklogLimit` (then
    /// the planner's estimate from pg_class is reported), and the oldest change is the first row
    /// by id (the primary key index), not a scan for min(changed_at). A partition's worker counts
    /// its own partition (its index), and its share of the estimate.
    public var backlogSQL: String {
        let limit = Self.exactBacklogLimit
        let filter = partitionFilter("", first: true)
        func count(_ table: String) -> String {
            """
            (SELECT CASE WHEN n <= \(limit) THEN n
                         ELSE greatest(n, (SELECT reltuples::bigint / \(partition.count) FROM pg_class WHERE oid = to_regclass(\(quoteLiteral(table))))) END
             FROM (SELECT count(*) AS n FROM (SELECT 1 FROM \(table)\(filter) LIMIT \(limit + 1)) s) c)
            """
        }
        return """
            SELECT \(count(changesTable)),
                   coalesce((SELECT extract(epoch FROM clock_timestamp() - changed_at) FROM \(changesTable)\(filter) ORDER BY id LIMIT 1), 0)::float8,
                   \(count(failedTable)),
                   coalesce((SELECT extract(epoch FROM clock_timestamp() - failed_at) FROM \(failedTable)\(filter) ORDER BY id LIMIT 1), 0)::float8,
                   \(table.capture == .wal ? "to_regclass($1) IS NOT NULL AND " + Self.slotUsableSQL : "EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass($1) AND tgname = $2)"),
                   (\(missingColumnsSQL.replacingAll("$1", with: "$3").replacingAll("$2", with: "$4")))\(table.capture == .wal ? ",\n" + Self.slotFiguresSQL : "")
            """
    }

    public struct Backlog: Equatable, Sendable {
        public var count = 0
        public var oldestAgeSeconds = 0.0
        public var deadLetters = 0
        public var oldestDeadLetterAgeSeconds = 0.0
        /// False once the watched table, or our trigger on it (WAL mode: the slot), has been dropped
        /// under us (or the slot invalidated).
        public var capturing = true
        /// The configured columns that no longer exist (`"v" of "public"."t"`), if any.
        public var missingColumns: String?
        /// WAL mode: the bytes the slot holds back, and how far its confirmed position lags.
        public var walRetainedBytes: Int?
        public var walConfirmedLagBytes: Int?
        /// WAL mode: the slot's headroom before `max_slot_wal_keep_size` invalidates it (nil
        /// without a cap), and its `wal_status` (reserved, extended, unreserved, lost).
        public var walSafeBytes: Int?
        public var walStatus: String?
        public init() {}
    }

    /// Backlog and dead letters with the age of the oldest of each, in one bounded round trip.
    public func backlog(_ db: PostgresConnection) throws(PostgresError) -> Backlog {
        let capture = table.capture == .wal ? slotName(database: db.parameters.database) : Self.triggerName
        let r = try db.execute(backlogSQL, [watchedTable, capture] + missingColumnsParameters)
        var b = Backlog()
        b.count = Int(r[0, 0] ?? "0") ?? 0
        b.oldestAgeSeconds = Double(r[0, 1] ?? "0") ?? 0
        b.deadLetters = Int(r[0, 2] ?? "0") ?? 0
        b.oldestDeadLetterAgeSeconds = Double(r[0, 3] ?? "0") ?? 0
        b.capturing = r[0, 4] == "t"
        b.missingColumns = r[0, 5].flatMap { $0.isEmpty ? nil : $0 }
        if table.capture == .wal {
            b.walRetainedBytes = r[0, 6].flatMap { Int($0) }
            b.walConfirmedLagBytes = r[0, 7].flatMap { Int($0) }
            b.walSafeBytes = r[0, 8].flatMap { Int($0) }
            b.walStatus = r[0, 9]
        }
        return b
    }

    /// The tracking rows a statement reads (columns `rowColumns`), each made straight from libpq's
    /// result and handed to `body`; streamed row by row for reads of `streamedReadRows` or more.
    private static func rows(_ db: PostgresConnection, _ sql: String, _ params: [String?], limit: Int,
                             _ body: (ChangeRow) -> Void) throws(PostgresError) {
        try db.forEachRow(sql, params, singleRow: limit >= streamedReadRows) { r in
            guard let id = r.int64(0), let key = r.string(1) else { return }
            // T_changes has no CHECK on operation (it cost every captured row a parse and
            // plan): a code none of ours wrote (a row inserted by hand) publishes the key's current
            // state as an update, rather than staying in the queue forever.
            let op = r.string(2).flatMap(ChangeOperation.init(code:)) ?? .update
            body(ChangeRow(id: id, primaryKey: key, operation: op, changeColumnValue: r.string(3), changedAt: r.string(4) ?? "",
                           attempts: Int(r.int64(5) ?? 0), permanentFailures: Int(r.int64(6) ?? 0), cause: r.string(7)))
        }
    }

    static func array(_ ids: [Int64]) -> String {
        "{" + ids.map(String.init).joined(separator: ",") + "}"
    }

    /// A text[] literal: every element double-quoted with \\ and \" escaped, so any key is just data.
    /// Written as UTF-8 bytes into one buffer (per-scalar String appends cost 10k
    /// instructions per key of a batch).
    public static func textArray(_ values: [String]) -> String {
        var size = 2
        for v in values { size += v.utf8.count + 3 }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(size + size / 8)
        bytes.append(0x7B)  // {
        for (i, v) in values.enumerated() {
            if i > 0 { bytes.append(0x2C) }  // ,
            bytes.append(0x22)  // "
            for byte in v.utf8 {
                if byte == 0x5C || byte == 0x22 { bytes.append(0x5C) }  // \ before \ and "
                bytes.append(byte)
            }
            bytes.append(0x22)
        }
        bytes.append(0x7D)  // }
        return String(decoding: bytes, as: UTF8.self)
    }
}
