// WAL capture (`capture = "wal"`, docs/database.md "WAL capture"): instead of triggers, the table's
// lease holder reads a logical replication slot with the built-in pgoutput plugin and writes the
// keys into T_changes itself; everything downstream of T_changes is unchanged.
//
// Invariants:
// - One publication and one slot per watched table, named after it so an operator recognises
//   them (`adp_<table>_<8 hex>`); the slot's hex digits also cover the database, because slot
//   names are unique in the whole cluster. The publication covers the watched table and its
//   dependencies, inserts, updates and deletes only.
// - Setup creates the slot after the publication commits (pgoutput reads the publication as of
//   each change's position, and a logical slot cannot be created in a transaction that wrote),
//   and drops our capture triggers only after the slot exists: a change committed in between is
//   recorded twice, never zero times. A trigger-mode setup never drops a readable slot (its
//   unread changes would be lost): the lease holder reads it to its end first (below), or
//   `teardown` drops it; `setup` drops an invalidated one, saying so (what it held is gone).
// - Setup never creates a slot that is missing once the table ran in WAL mode without saying so:
//   the worker reports a missing or invalidated slot as a failed table (recreate and backfill).
//   Only `setup` and a worker's first setup of the process create it.
// - The WAL carries, for a deleted row or a changed key, only the replica identity columns:
//   the watched key and each dependency's key column must be among them (`verifyWAL`).
// - A key written here is confirmed to the slot only after the INSERT committed (WalStreamer).
// - Back to trigger mode with a slot of ours left (`leftoverSlot`): the lease holder keeps reading
//   it until its confirmed position has passed `triggerCapturePosition`, a WAL position taken
//   after the capture triggers are committed, and only then drops it and the publication
//   (`dropLeftoverSlot`). The position is not stored: any position read after the triggers are
//   visible will do (a later one costs duplicates, never a gap), so a crash, a restart or another
//   instance taking over the lease takes a fresh one.

extension TrackingSchema {
    /// `adp_<table>_<8 hex of schema.table>`: table names are at most 45 bytes, so at most 58.
    public var publicationName: String { "adp_\(table.name.lowercased())_\(Self.hex8(table.qualifiedName))" }

    /// `adp_<table>_<8 hex of database/schema.table>` (lower case, as slot names must be).
    public func slotName(database: String) -> String {
        "adp_\(table.name.lowercased())_\(Self.hex8("\(database)/\(table.qualifiedName)"))"
    }

    /// The tables the publication covers: the watched table, then its dependencies.
    var publishedTables: [String] { [watchedTable] + table.dependencies.map(dependencyTable) }

    public var createPublicationSQL: String {
        "CREATE PUBLICATION \(quoteIdentifier(publicationName)) FOR TABLE \(publishedTables.joined(separator: ", ")) WITH (publish = 'insert, update, delete', publish_via_partition_root = true);"
    }

    /// Creates the slot unless it exists (run outside a transaction). `failover` (PostgreSQL 17
    /// and later): the slot is synchronised to physical standbys, so a promoted standby continues it.
    public func createSlotSQL(database: String, failover: Bool = false) -> String {
        let name = quoteLiteral(slotName(database: database))
        return "SELECT lsn FROM pg_create_logical_replication_slot(\(name), 'pgoutput'\(failover ? ", false, false, true" : "")) WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = \(name));"
    }

    public var dropPublicationSQL: String { "DROP PUBLICATION IF EXISTS \(quoteIdentifier(publicationName));" }

    public func dropSlotSQL(database: String) -> String {
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = \(quoteLiteral(slotName(database: database)));"
    }

    /// The command a walsender session runs to stream the slot from its confirmed position.
    public func startReplicationCommand(database: String) -> String {
        "START_REPLICATION SLOT \(quoteIdentifier(slotName(database: database))) LOGICAL 0/0 (proto_version '1', publication_names \(quoteLiteral(quoteIdentifier(publicationName))))"
    }

    /// Whether a slot named ours exists in this database and can still be read: the backlog's
    /// `capturing` in WAL mode. $2: the slot's name. (`wal_status` through to_jsonb: PostgreSQL
    /// 12 has no such column.)
    static let slotUsableSQL = """
        EXISTS (SELECT 1 FROM pg_replication_slots s WHERE s.slot_name = $2 AND s.database = current_database()
                AND (to_jsonb(s) ->> 'wal_status') IS DISTINCT FROM 'lost')
        """

    /// The backlog's extra columns in WAL mode ($2: the slot's name): the slot's retained WAL and
    /// confirmed lag in bytes, its headroom before max_slot_wal_keep_size invalidates it
    /// (`safe_wal_size`: NULL without a cap) and its `wal_status` (both through to_jsonb: PostgreSQL
    /// 12 has neither column).
    static let slotFiguresSQL = """
        (SELECT (pg_current_wal_lsn() - restart_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $2),
                   (SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $2),
                   (SELECT (to_jsonb(s) ->> 'safe_wal_size')::bigint FROM pg_replication_slots s WHERE s.slot_name = $2),
                   (SELECT to_jsonb(s) ->> 'wal_status' FROM pg_replication_slots s WHERE s.slot_name = $2)
        """

    /// The sentence for a missing or invalidated slot: capture has stopped, with a gap.
    public func slotLostSentence(database: String) -> String {
        "the replication slot \(slotName(database: database)) of \(table.qualifiedName) is missing or invalidated (dropped by hand, lost in a primary failover, or past max_slot_wal_keep_size): changes since are not captured; run `atomic-data-publisher setup` to recreate it, then `atomic-data-publisher backfill --table \(table.name)` to publish what was missed"
    }

    // MARK: checks

    /// WAL mode's needs, before anything is created: wal_level, the REPLICATION attribute, room
    /// for the slot, and replica identities that carry every key the triggers would record.
    public func verifyWAL(on db: PostgresConnection) throws {
        let settings = try db.execute("""
            SELECT current_setting('wal_level'),
                   (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user),
                   EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1),
                   (SELECT count(*) FROM pg_replication_slots) >= current_setting('max_replication_slots')::int,
                   (SELECT database FROM pg_replication_slots WHERE slot_name = $1)
            """, [slotName(database: db.parameters.database)])
        let level = settings[0, 0] ?? "?"
        if level != "logical" {
            throw SchemaProblem("capture = \"wal\" for \(table.qualifiedName) needs wal_level = logical, and the server has wal_level = \(level): set it (ALTER SYSTEM SET wal_level = logical) and restart PostgreSQL, a reload is not enough")
        }
        if settings[0, 1] != "t" {
            throw SchemaProblem("capture = \"wal\" for \(table.qualifiedName) reads a replication slot, which needs the REPLICATION attribute: ALTER ROLE \(quoteIdentifier(db.parameters.username)) REPLICATION")
        }
        if let other = settings[0, 4], other != db.parameters.database {
            throw SchemaProblem("the replication slot \(slotName(database: db.parameters.database)) belongs to database \(other), not \(db.parameters.database): drop it (SELECT pg_drop_replication_slot('\(slotName(database: db.parameters.database))') there)")
        }
        if settings[0, 2] != "t" && settings[0, 3] == "t" {
            throw SchemaProblem("capture = \"wal\" for \(table.qualifiedName) needs a replication slot, and all max_replication_slots are in use: raise max_replication_slots (restart needed) or drop a slot no one reads")
        }
        var identities: [(relation: String, column: String, role: String)] = [(watchedTable, table.primaryKey, "primary_key of watched table '\(table.name)'")]
        for dependency in table.dependencies {
            identities.append((dependencyTable(dependency), dependency.keyColumns[0], "key_column of its dependency \(dependency.qualifiedName)"))
        }
        for (relation, column, role) in identities {
            let covered = try db.execute("""
                SELECT CASE c.relreplident
                         WHEN 'f' THEN true
                         WHEN 'd' THEN EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary AND a.attnum = ANY (i.indkey::int2[]))
                         WHEN 'i' THEN EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident AND a.attnum = ANY (i.indkey::int2[]))
                         ELSE false END
                FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = $2 AND NOT a.attisdropped
                WHERE c.oid = to_regclass($1)
                """, [relation, column])
            if covered.rows.first?[0] != "t" {
                throw SchemaProblem("the replica identity of \(relation) does not include \(quoteIdentifier(column)) (\(role)), so with capture = \"wal\" a deleted or re-keyed row's WAL record would not say which key to publish: give it a primary key on that column, or run ALTER TABLE \(relation) REPLICA IDENTITY FULL")
            }
        }
    }

    /// For check-config: a sentence when no walsender is free for this table's stream (it is
    /// not streamed by another instance right now), else nil.
    public func walSenderRoom(on db: PostgresConnection) throws -> String? {
        let r = try db.execute("""
            SELECT (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender') >= current_setting('max_wal_senders')::int
                   AND NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND active)
            """, [slotName(database: db.parameters.database)])
        guard r[0, 0] == "t" else { return nil }
        return "every max_wal_senders session is in use, so the stream of \(table.qualifiedName) (capture = \"wal\") cannot start: raise max_wal_senders (restart needed)"
    }

    // MARK: setup

    /// Inside setup's transaction: the publication, covering exactly our tables.
    func installPublication(on db: PostgresConnection) throws {
        let state = try db.execute("""
            SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1),
                   coalesce((SELECT array_agg(r.prrelid ORDER BY r.prrelid) FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid
                             WHERE p.pubname = $1) = (SELECT array_agg(o ORDER BY o) FROM unnest($2::regclass[]::oid[]) o), false),
                   EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1 AND pubviaroot)
            """, [publicationName, Self.textArray(publishedTables)])
        if state[0, 0] != "t" {
            try db.execute(createPublicationSQL)
            return
        }
        if state[0, 1] != "t" {
            try db.execute("ALTER PUBLICATION \(quoteIdentifier(publicationName)) SET TABLE \(publishedTables.joined(separator: ", "))")
        }
        if state[0, 2] != "t" {
            // An earlier release's publication named a partition's changes by the partition,
            // which no watched table or dependency is configured as.
            try db.execute("ALTER PUBLICATION \(quoteIdentifier(publicationName)) SET (publish_via_partition_root = true)")
        }
    }

    /// The trigger-mode objects on the watched table and its dependencies: dropped once the slot
    /// exists (when switching from trigger mode), and by `teardown` (`teardownSQL`); nothing when
    /// there are none.
    var captureTriggersTeardownSQL: String {
        """
        \(followRenamesTeardownSQL)\(dependenciesTeardownSQL)DROP TRIGGER IF EXISTS \(quoteIdentifier(Self.triggerName)) ON \(watchedTable);
        \(dropTruncateTriggerSQL)
        DROP FUNCTION IF EXISTS \(function)();
        """
    }

    /// Setup in WAL mode: tracking tables and the publication in one transaction, then the slot,
    /// then (switching from trigger mode) the triggers. Returns true when the slot was created
    /// or a trigger dropped.
    func installWAL(on db: PostgresConnection) throws -> Bool {
        try db.execute("BEGIN")
        do {
            try db.execute("SET LOCAL client_min_messages = warning")
            try db.execute("SELECT pg_advisory_xact_lock($1)", [String(advisoryLockKey)])
            try installTrackingTables(on: db)
            try installPartitionIndex(on: db)
            try installPublication(on: db)
            try db.execute("COMMIT")
        } catch {
            _ = try? db.execute("ROLLBACK")
            throw error
        }
        var changed = try createSlot(on: db)
        let triggers = try db.execute("""
            SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass($1) AND tgname = $2)
                OR to_regprocedure($3) IS NOT NULL OR EXISTS (\(allDependencyFunctionsSQL))
            """, [watchedTable, Self.triggerName, function + "()"])
        if triggers[0, 0] == "t" {
            try db.execute("BEGIN")
            do {
                try db.execute("SELECT pg_advisory_xact_lock($1)", [String(advisoryLockKey)])
                try db.executeScript(captureTriggersTeardownSQL + allDependencyFunctionsTeardownSQL(on: db))
                try db.execute("COMMIT")
            } catch {
                _ = try? db.execute("ROLLBACK")
                throw error
            }
            changed = true
        }
        return changed
    }

    /// Creates the slot unless it exists; true when it was created here.
    private func createSlot(on db: PostgresConnection) throws(PostgresError) -> Bool {
        do {
            let version = Int(try db.execute("SELECT current_setting('server_version_num')")[0, 0] ?? "0") ?? 0
            return try db.execute(createSlotSQL(database: db.parameters.database, failover: version >= 170000)).rows.count == 1
        } catch {
            // Another worker or instance created it at the same moment.
            if error.sqlState == "42710" { return false }
            throw error
        }
    }

    /// Every dependency function of this watched table, configured or not (their triggers go
    /// with them).
    private func allDependencyFunctionsTeardownSQL(on db: PostgresConnection) throws -> String {
        try db.execute(allDependencyFunctionsSQL).rows.compactMap { $0[0] }.map { "DROP FUNCTION IF EXISTS \($0) CASCADE;\n" }.joined()
    }

    /// This watched table's dependency functions, configured or not.
    private var allDependencyFunctionsSQL: String {
        var bare = table
        bare.dependencies = []
        return TrackingSchema(table: bare, partition: partition).staleDependencyFunctionsSQL
    }

    /// What `print-sql` shows for a WAL-mode table.
    func printableWALSQL(database: String) -> String {
        """
        -- atomic-data-publisher: objects for \(table.qualifiedName) (capture = "wal": no trigger on it)
        \(leaseCommentSQL)
        \(wakeCommentSQL)
        -- Changes are read from the replication slot \(slotName(database: database)) through the publication \(publicationName);
        -- the role that streams it needs the REPLICATION attribute, and wal_level must be logical.
        BEGIN;
        SELECT pg_advisory_xact_lock(\(advisoryLockKey));
        \(createTablesSQL)\(createPartitionIndexSQL.isEmpty ? "" : "\n" + createPartitionIndexSQL)
        \(dropPublicationSQL)
        \(createPublicationSQL)
        COMMIT;
        -- The slot, outside any transaction (on PostgreSQL 17 and later, add the arguments false, false, true
        -- after 'pgoutput': failover, so physical standbys keep a copy); then trigger mode's capture triggers, if any, go.
        \(createSlotSQL(database: database))
        BEGIN;
        SELECT pg_advisory_xact_lock(\(advisoryLockKey));
        \(captureTriggersTeardownSQL)
        COMMIT;

        """
    }

    // MARK: back to trigger mode

    /// A slot of ours in this database, seen by a trigger-mode worker: left by `capture = "wal"`.
    public enum LeftoverSlot: Sendable, Equatable {
        case none
        /// It can be read: what it holds from before the triggers existed is read into T_changes.
        case readable
        /// Invalidated (past max_slot_wal_keep_size, or lost in a failover): what it held is gone.
        case lost
    }

    public func leftoverSlot(on db: PostgresConnection) throws(PostgresError) -> LeftoverSlot {
        let r = try db.execute("""
            SELECT (to_jsonb(s) ->> 'wal_status') IS DISTINCT FROM 'lost' FROM pg_replication_slots s
            WHERE s.slot_name = $1 AND s.database = current_database()
            """, [slotName(database: db.parameters.database)])
        guard let row = r.rows.first else { return .none }
        return row[0] == "t" ? .readable : .lost
    }

    /// A WAL position (bytes since 0/0) after which every change to the watched table and its
    /// dependencies is recorded by the capture triggers; nil when the trigger is not there.
    /// Writing to a table waits for CREATE TRIGGER's lock, so every change made without the
    /// trigger committed before the trigger did; the trigger being visible here means its commit
    /// record was written before this statement's. This statement commits a transaction id of
    /// its own with synchronous_commit on (set_config is read at commit, and reset after it), so
    /// the WAL is flushed past that record before the position is read.
    public func triggerCapturePosition(on db: PostgresConnection) throws(PostgresError) -> UInt64? {
        let visible = try db.execute("""
            SELECT set_config('synchronous_commit', 'on', true), txid_current(),
                   EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass($1) AND tgname = $2)
            """, [watchedTable, Self.triggerName])
        guard visible[0, 2] == "t" else { return nil }
        return try db.execute("SELECT (pg_current_wal_lsn() - '0/0')::text")[0, 0].flatMap { UInt64($0) }
    }

    /// Drop the slot by name, as `teardown` does (then drop the publication, `dropPublicationSQL`).
    /// False when the slot is streamed right now (a former lease holder that has not let it go):
    /// try again later.
    public func dropLeftoverSlot(on db: PostgresConnection) throws(PostgresError) -> Bool {
        do {
            try db.execute(dropSlotSQL(database: db.parameters.database))
        } catch {
            if error.sqlState == "55006" { return false }
            throw error
        }
        return true
    }

    /// What `print-sql` adds in trigger mode: no statement (the worker reads and drops the slot).
    func leftoverSlotComment(database: String) -> String {
        """
        -- If capture = "wal" ran before: the replication slot \(slotName(database: database)) holds the changes committed before
        -- these triggers; the lease holder's worker reads it up to where they took over, then drops it and the publication \(publicationName).

        """
    }

    /// For `setup`, before the install: an invalidated slot of ours can never be read again, and
    /// the worker reports it (a failed table, `slotLostSentence`) until it is gone. Drops it (in
    /// trigger mode with the publication; in WAL mode the install then creates a new slot, which
    /// captures from now on), and returns the sentence to show; nil when there is none.
    public func dropLostSlot(on db: PostgresConnection) throws(PostgresError) -> String? {
        guard try leftoverSlot(on: db) == .lost, try dropLeftoverSlot(on: db) else { return nil }
        let slot = slotName(database: db.parameters.database)
        if table.capture == .wal {
            return "dropped the invalidated replication slot \(slot) and created it anew: changes committed while it was invalid were not captured; run `atomic-data-publisher backfill --table \(table.name)` to publish them"
        }
        try db.execute(dropPublicationSQL)
        return "dropped the invalidated replication slot \(slot) left by capture = \"wal\", and the publication \(publicationName): what it held from before the capture triggers existed is lost; run `atomic-data-publisher backfill --table \(table.name)` to publish it"
    }

    // MARK: the streamer's write

    /// The streamer's INSERT of a batch of keys, in the order they were read, and the wake-up of a
    /// sleeping worker in the same transaction (TrackingSchema+Wake.swift). $1 keys, $2 operation
    /// codes, $3 change column values (several columns: a JSON object of their texts, made into
    /// the trigger's jsonb of the typed values here), $4 causes, $5 commit times (microseconds
    /// since 2000-01-01). Returns one row: the number of rows written.
    public var walInsertSQL: String {
        let value: String
        if table.changeColumns.count == 1 {
            value = "u.v"
        } else {
            let pairs = table.changeColumns.map { "\(quoteLiteral($0)), r.\(quoteIdentifier($0))" }.joined(separator: ", ")
            value = "CASE WHEN u.v IS NOT NULL THEN (SELECT jsonb_build_object(\(pairs))::text FROM jsonb_populate_record(NULL::\(watchedTable), u.v::jsonb) r) END"
        }
        let tries: String
        if table.partitions > 1 {
            tries = (0..<table.partitions).map { "pg_try_advisory_xact_lock_shared(\(partitionWakeKey), \($0))" }.joined(separator: " AND ")
        } else {
            tries = "pg_try_advisory_xact_lock_shared(\(quoteLiteral(String(wakeKey())))::bigint)"
        }
        return """
            WITH ins AS (
                INSERT INTO \(changesTable) (primary_key, operation, change_column_value, cause, changed_at)
                SELECT u.k, u.o, \(value), u.c, timestamptz '2000-01-01 00:00:00+00' + u.t * interval '1 microsecond'
                FROM unnest($1::text[], $2::"char"[], $3::text[], $4::text[], $5::bigint[]) WITH ORDINALITY AS u(k, o, v, c, t, n)
                ORDER BY u.n
                RETURNING 1)
            SELECT c.n FROM (SELECT count(*) AS n FROM ins) c
            LEFT JOIN LATERAL (SELECT pg_notify(\(quoteLiteral(wakeChannel)), '') WHERE c.n > 0 AND NOT (\(tries))
                               AND current_setting('max_prepared_transactions') = '0') w ON true
            """
    }

    /// A text[] literal whose nil elements are NULL.
    public static func nullableTextArray(_ values: [String?]) -> String {
        var parts: [String] = []
        parts.reserveCapacity(values.count)
        for value in values {
            if let value { parts.append(String(textArray([value]).dropFirst().dropLast())) } else { parts.append("NULL") }
        }
        return "{" + parts.joined(separator: ",") + "}"
    }
}
