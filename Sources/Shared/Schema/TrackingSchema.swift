// The SQL objects of DESIGN.md section 4 for one watched table, as text (for `print-sql`) and as
// idempotent operations (for start-up and `setup`).
//
// Invariants:
// - Every identifier is quoted; names come from validated configuration but are quoted anyway.
// - Setup runs in one transaction under an advisory lock, so two workers (or a worker and a DBA
//   running `setup`) never interleave.
// - An existing trigger whose definition is already right is never dropped. When it must change,
//   DROP and CREATE happen in the same transaction: DROP TRIGGER takes a lock that makes writers
//   of the watched table wait until commit, so there is no window in which a change is missed.
// - The trigger stays lean: one INSERT into the tracking table per changed row, and a notification
//   only while the table's worker sleeps (pg_notify takes a global lock at every commit; see
//   DESIGN.md section 4 and TrackingSchema+Wake.swift).

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

public struct TrackingSchema: Sendable {
    public let table: WatchedTable
    /// The share of the table this schema's queue statements read: the whole table, or
    /// one partition. Setup and DDL are the same for every partition.
    public let partition: TablePartition

    public init(table: WatchedTable, partition: TablePartition = .whole) {
        self.table = table
        self.partition = partition
    }

    public var schemaIdent: String { quoteIdentifier(table.schema) }
    public var watchedTable: String { "\(schemaIdent).\(quoteIdentifier(table.name))" }
    public var changesTableName: String { "\(table.name)_changes" }
    public var failedTableName: String { "\(table.name)_changes_failed" }
    public var changesTable: String { "\(schemaIdent).\(quoteIdentifier(changesTableName))" }
    public var failedTable: String { "\(schemaIdent).\(quoteIdentifier(failedTableName))" }
    public var functionName: String { "\(table.name)_changes_capture" }
    public var function: String { "\(schemaIdent).\(quoteIdentifier(functionName))" }
    public static let triggerName = "atomic_data_publisher_capture"
    /// `BEFORE TRUNCATE`, statement-level, the same function: a TRUNCATE removes rows without a
    /// row trigger, so the function records a delete of every key while the rows are still there.
    public static let truncateTriggerName = "atomic_data_publisher_truncate"
    public var retryIndexName: String { "\(table.name)_changes_retry_idx" }
    public var keyIndexName: String { "\(table.name)_changes_key_idx" }
    /// The longest suffix added to a table's name (`retryIndexName`): validation keeps the result
    /// within PostgreSQL's 63 bytes, so no two objects collide after truncation.
    public static let longestSuffix = TrackingObjectNames.longestSuffix

    /// Key for pg_advisory_xact_lock: stable for a table, distinct across tables (mostly).
    public var advisoryLockKey: Int64 {
        Int64(bitPattern: Self.fnv1a("atomic-data-publisher:\(table.qualifiedName)"))
    }

    /// The tracking table's columns. `T_changes` has no CHECK on `operation`: it is written only by
    /// the capture function (constants), `backfill` ('B') and `replay` (rows from `T_changes_failed`,
    /// which keeps the CHECK), and a CHECK there cost the application's writers 29-35k
    /// instructions per captured row (PostgreSQL parses and plans it again for every INSERT the
    /// trigger runs: about a quarter of what the trigger adds to a single-row UPDATE;
    /// docs/performance.md, "What the capture trigger costs").
    private func columnsDDL(checked: Bool) -> String {
        """
            primary_key text NOT NULL,
            operation "char" NOT NULL\(checked ? " CHECK (operation IN \(Self.operationCodes))" : ""),
            change_column_value text,
            changed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            attempts integer NOT NULL DEFAULT 0,
            permanent_failures integer NOT NULL DEFAULT 0,
            last_error text,
            next_attempt_at timestamptz,
            cause text
        """
    }

    public var createTablesSQL: String {
        """
        CREATE TABLE IF NOT EXISTS \(changesTable) (
            id bigserial PRIMARY KEY,
        \(columnsDDL(checked: false))
        );
        CREATE INDEX IF NOT EXISTS \(quoteIdentifier(retryIndexName)) ON \(changesTable) (primary_key) WHERE next_attempt_at IS NOT NULL;
        CREATE INDEX IF NOT EXISTS \(quoteIdentifier(keyIndexName)) ON \(changesTable) (primary_key, id);
        CREATE TABLE IF NOT EXISTS \(failedTable) (
            id bigint PRIMARY KEY,
        \(columnsDDL(checked: true)),
            failed_at timestamptz NOT NULL DEFAULT clock_timestamp()
        );
        \(createBackfillTableSQL)
        \(createLeaseTableSQL)
        \(upgradeTablesSQL)
        \(sequenceAboveDeadLettersSQL)
        """
    }

    /// A tracking table made again (dropped by hand, or torn down) starts its ids at 1, while the
    /// dead letters keep theirs: dead-lettering and `replay` move rows between the two tables by
    /// id, so an id must never repeat. Start the sequence above every dead-lettered id.
    public var sequenceAboveDeadLettersSQL: String {
        """
        SELECT setval(q.s, greatest(f.m, pg_sequence_last_value(q.s)))
        FROM (SELECT pg_get_serial_sequence(\(quoteLiteral(changesTable)), 'id')::regclass AS s) q,
             (SELECT max(id) AS m FROM \(failedTable)) f
        WHERE f.m IS NOT NULL;
        """
    }

    /// Columns added after the first release, for tracking tables made by an older version
    /// (a constant default: no table rewrite on PostgreSQL 11 and later).
    public var upgradeTablesSQL: String {
        """
        ALTER TABLE \(changesTable) ADD COLUMN IF NOT EXISTS permanent_failures integer NOT NULL DEFAULT 0;
        ALTER TABLE \(failedTable) ADD COLUMN IF NOT EXISTS permanent_failures integer NOT NULL DEFAULT 0;
        ALTER TABLE \(changesTable) ADD COLUMN IF NOT EXISTS cause text;
        ALTER TABLE \(failedTable) ADD COLUMN IF NOT EXISTS cause text;
        \(upgradeOperationCheckSQL)
        """
    }

    /// Every code the `operation` column accepts: the trigger's I, U, D and the backfill's B.
    public static let operationCodes = "(" + ChangeOperation.allCases.map { "'\($0.code)'" }.joined(separator: ", ") + ")"

    /// A tracking table made before `backfill` existed checks `operation IN ('I','U','D')`.
    /// Replace every CHECK on `operation` of `T_changes_failed` that does not accept every code. The
    /// new check is looser than the old one, so the rows already there satisfy it: it is added NOT
    /// VALID (no scan of the table under ACCESS EXCLUSIVE). `T_changes` has no CHECK on
    /// `operation` any more (it cost the writers; see `columnsDDL`): drop the ones an older version made. A no-op when
    /// the constraints are already right.
    public var upgradeOperationCheckSQL: String {
        """
        DO $adp_upgrade$
        DECLARE c record;
        BEGIN
            FOR c IN \(operationChecksToChangeSQL) LOOP
                EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', c.rel, c.conname);
                IF c.readd THEN
                    EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I CHECK (operation IN \(Self.operationCodes.replacingAll("'", with: "''"))) NOT VALID', c.rel, c.conname);
                END IF;
            END LOOP;
        END
        $adp_upgrade$;
        """
    }

    /// The CHECK constraints on `operation` the upgrade drops: on `T_changes` those that refuse a
    /// code, and the others too when this role owns the table (a role that does not own it, path B,
    /// leaves a correct old CHECK alone: it only costs the writers time); on `T_changes_failed`
    /// those that refuse one of `operationCodes` (re-added accepting them all).
    private var operationChecksToChangeSQL: String {
        let changes = quoteLiteral(changesTable), failed = quoteLiteral(failedTable)
        return """
            SELECT conrelid::regclass::text AS rel, conname, conrelid = to_regclass(\(failed)) AS readd FROM pg_constraint
                     WHERE contype = 'c' AND pg_get_constraintdef(oid) LIKE '%operation%'
                       AND ((conrelid = to_regclass(\(changes)) AND (\(refusesACodeSQL) OR pg_has_role((SELECT relowner FROM pg_class WHERE oid = conrelid), 'USAGE')))
                            OR (conrelid = to_regclass(\(failed)) AND (\(refusesACodeSQL))))
            """
    }

    private var refusesACodeSQL: String {
        ChangeOperation.allCases.map { "pg_get_constraintdef(oid) NOT LIKE '%''\($0.code)''%'" }.joined(separator: " OR ")
    }

    /// The CHECK constraints on `operation` (of the two tracking tables, given as SQL text
    /// expressions) that refuse one of `operationCodes`: setup must replace them (backfill and
    /// dead-lettering would fail).
    func staleOperationChecksSQL(changes: String, failed: String, select: String) -> String {
        """
            SELECT \(select) FROM pg_constraint
                     WHERE conrelid IN (to_regclass(\(changes)), to_regclass(\(failed))) AND contype = 'c'
                       AND pg_get_constraintdef(oid) LIKE '%operation%' AND (\(refusesACodeSQL))
            """
    }

    /// Whether `T_changes` (given as an SQL text expression) still has the CHECK on `operation`
    /// an older version made, and this role may drop it (it owns the table). Without ownership
    /// (least privilege, path B) the old CHECK is left: it is correct, only slower for the writers.
    func droppableOperationCheckSQL(changes: String) -> String {
        """
            EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass(\(changes)) AND contype = 'c'
                    AND pg_get_constraintdef(oid) LIKE '%operation%')
               AND pg_has_role((SELECT relowner FROM pg_class WHERE oid = to_regclass(\(changes))), 'USAGE')
            """
    }

    /// The text recorded as `change_column_value`: the column's text for one column, a JSON
    /// object of the columns for several.
    func changeValueExpression(_ record: String) -> String {
        if table.changeColumns.count == 1 {
            return "\(record).\(quoteIdentifier(table.changeColumns[0]))::text"
        }
        let pairs = table.changeColumns.map { "\(quoteLiteral($0)), \(record).\(quoteIdentifier($0))" }.joined(separator: ", ")
        return "jsonb_build_object(\(pairs))::text"
    }

    private func watchedChanged() -> String {
        let columns = table.changeColumns.map { "NEW.\(quoteIdentifier($0)) IS DISTINCT FROM OLD.\(quoteIdentifier($0))" }
        return columns.joined(separator: " OR ")
    }

    public var createFunctionSQL: String {
        let pk = quoteIdentifier(table.primaryKey)
        let insert = "INSERT INTO \(changesTable) (primary_key, operation, change_column_value) VALUES"
        let ops = Set(table.operations)
        // UPDATE first: the writers' common case takes one TG_OP test. One INSERT per
        // event: each INSERT the function runs starts an executor on the tracking table.
        // Wake-up (TrackingSchema+Wake.swift): after each recorded change, notify only while the
        // worker of the key's partition sleeps.
        func record(_ indent: String, _ rows: [(key: String, values: String)]) -> String {
            "\(indent)\(insert) \(rows.map(\.values).joined(separator: ", "));\n\(indent)\(wakeTriggerSQL(keys: rows.map(\.key)))\n"
        }
        let newKey = "NEW.\(pk)::text", oldKey = "OLD.\(pk)::text"
        var body = ""
        body += "    IF TG_OP = 'UPDATE' THEN\n"
        if ops.contains(.update) {
            // A changed primary key is the old key going away and the new one changing: one
            // statement, whose rows take their ids in this order.
            body += "        IF NEW.\(pk) IS DISTINCT FROM OLD.\(pk) THEN\n"
            body += record("            ", [(oldKey, "(\(oldKey), 'D', \(changeValueExpression("OLD")))"), (newKey, "(\(newKey), 'U', \(changeValueExpression("NEW")))")])
            body += "        ELSIF \(watchedChanged()) THEN\n"
            body += record("            ", [(newKey, "(\(newKey), 'U', \(changeValueExpression("NEW")))")])
            body += "        END IF;\n"
        } else {
            body += "        NULL;\n"
        }
        body += "    ELSIF TG_OP = 'INSERT' THEN\n"
        body += ops.contains(.insert) ? record("        ", [(newKey, "(\(newKey), 'I', \(changeValueExpression("NEW")))")]) : "        NULL;\n"
        body += "    ELSIF TG_OP = 'DELETE' THEN\n"
        body += ops.contains(.delete) ? record("        ", [(oldKey, "(\(oldKey), 'D', \(changeValueExpression("OLD")))")]) : "        NULL;\n"
        if ops.contains(.delete) {
            // As many tracking rows as the table has rows: a TRUNCATE costs what a DELETE of every
            // row costs the capture. The alias `o` is one the rename event trigger rewrites.
            body += "    ELSIF TG_OP = 'TRUNCATE' THEN\n"
            body += "        \(insert.dropLast(" VALUES".count)) SELECT o.\(pk)::text, 'D', \(changeValueExpression("o")) FROM \(watchedTable) o;\n"
            body += "        \(wakeTriggerSQL(anyPartition: true))\n"
        }
        body += "    END IF;\n"
        return """
        CREATE OR REPLACE FUNCTION \(function)() RETURNS trigger LANGUAGE plpgsql
        SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $adp$
        BEGIN
        \(body)    RETURN NULL;
        END
        $adp$;
        """
    }

    /// The events, in the order PostgreSQL prints them in pg_get_triggerdef.
    private var triggerEvents: String {
        var events: [String] = []
        let ops = Set(table.operations)
        if ops.contains(.insert) { events.append("INSERT") }
        if ops.contains(.delete) { events.append("DELETE") }
        if ops.contains(.update) {
            var columns = table.changeColumns
            if !columns.contains(table.primaryKey) { columns.append(table.primaryKey) }
            events.append("UPDATE OF " + columns.map(quoteIdentifier).joined(separator: ", "))
        }
        return events.joined(separator: " OR ")
    }

    public var createTriggerSQL: String {
        "CREATE TRIGGER \(quoteIdentifier(Self.triggerName)) AFTER \(triggerEvents) ON \(watchedTable) FOR EACH ROW EXECUTE FUNCTION \(function)();"
    }

    /// Only when deletes are captured.
    public var createTruncateTriggerSQL: String? {
        guard table.operations.contains(.delete) else { return nil }
        return "CREATE TRIGGER \(quoteIdentifier(Self.truncateTriggerName)) BEFORE TRUNCATE ON \(watchedTable) FOR EACH STATEMENT EXECUTE FUNCTION \(function)();"
    }

    var dropTruncateTriggerSQL: String { "DROP TRIGGER IF EXISTS \(quoteIdentifier(Self.truncateTriggerName)) ON \(watchedTable);" }

    /// Everything `setup` does, as a script a DBA can read and apply by hand.
    public var printableSQL: String {
        """
        -- atomic-data-publisher: objects for \(table.qualifiedName)
        \(leaseCommentSQL)
        \(wakeCommentSQL)
        BEGIN;
        SELECT pg_advisory_xact_lock(\(advisoryLockKey));
        \(createTablesSQL)\(createPartitionIndexSQL.isEmpty ? "" : "\n" + createPartitionIndexSQL)
        \(createFunctionSQL)
        DROP TRIGGER IF EXISTS \(quoteIdentifier(Self.triggerName)) ON \(watchedTable);
        \(createTriggerSQL)
        \(dropTruncateTriggerSQL)\(createTruncateTriggerSQL.map { "\n" + $0 } ?? "")
        \(printableDependenciesSQL)\(printableFollowRenamesSQL)COMMIT;

        """
    }

    public var teardownSQL: String {
        """
        \(captureTriggersTeardownSQL)
        DROP TABLE IF EXISTS \(changesTable);
        DROP TABLE IF EXISTS \(failedTable);
        DROP TABLE IF EXISTS \(backfillTable);
        DROP TABLE IF EXISTS \(leaseTable);
        \(dropPublicationSQL)
        """
    }

    /// What `print-sql` shows: the trigger mode's script, or the WAL mode's.
    public func printableSQL(database: String) -> String {
        table.capture == .wal ? printableWALSQL(database: database) : printableSQL + leftoverSlotComment(database: database)
    }
}

/// What is wrong with a watched table before anything is created: a config or permission error.
public struct SchemaProblem: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

extension TrackingSchema {
    /// Check that the watched table and its columns exist and are readable. Touches nothing.
    public func verify(on db: PostgresConnection) throws -> Void {
        let regclass = try db.execute("SELECT to_regclass($1)::oid", [watchedTable])
        guard let oid = regclass[0, 0] else {
            throw SchemaProblem("watched table \(table.qualifiedName) does not exist (service.watched_tables name = \"\(table.name)\", schema = \"\(table.schema)\")")
        }
        let columns = try db.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = $1::oid AND attnum > 0 AND NOT attisdropped", [oid])
        let existing = Set(columns.rows.compactMap { $0[0] })
        if !existing.contains(table.primaryKey) {
            throw SchemaProblem("column \"\(table.primaryKey)\" does not exist in table \(table.qualifiedName) (check primary_key of watched table \"\(table.name)\")")
        }
        for column in table.changeColumns where !existing.contains(column) {
            let key = table.changeColumns.count == 1 ? "change_column" : "change_columns"
            throw SchemaProblem("column \"\(column)\" does not exist in table \(table.qualifiedName) (check \(key) of watched table \"\(table.name)\")")
        }
        // The trigger records the key as NOT NULL text: a NULL key would make the application's own
        // INSERT fail in our trigger, and a key that is not unique would merge different rows.
        let key = try db.execute("""
            SELECT a.attnotnull,
                   EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = a.attrelid AND i.indisunique AND i.indpred IS NULL
                           AND i.indnatts = 1 AND i.indkey[0] = a.attnum)
            FROM pg_attribute a WHERE a.attrelid = $1::oid AND a.attname = $2 AND NOT a.attisdropped
            """, [oid, table.primaryKey])
        if key.rows.first?[0] != "t" || key.rows.first?[1] != "t" {
            throw SchemaProblem("primary_key \"\(table.primaryKey)\" of \(table.qualifiedName) must be declared NOT NULL and unique (a PRIMARY KEY, or NOT NULL with a unique index on that column alone): otherwise a row with a NULL key would make the application's own write fail in the capture trigger (table \"\(table.name)\", service.watched_tables primary_key)")
        }
        let privilege = try db.execute("SELECT has_table_privilege($1::oid, 'SELECT')", [oid])
        if privilege[0, 0] != "t" {
            throw SchemaProblem("the database user has no SELECT privilege on \(table.qualifiedName): grant it (see docs/database.md, least privilege)")
        }
        if table.capture == .wal { try verifyWAL(on: db) }
    }

    /// Create or update the objects, idempotently, in one transaction under an advisory lock.
    /// Returns true when the trigger was created or replaced. `warn` hears what works but leaves a
    /// risk (the event trigger that follows column renames could not be created).
    @discardableResult
    public func install(on db: PostgresConnection, warn: (String) -> Void = { _ in }) throws -> Bool {
        try verify(on: db)
        try verifyDependencies(on: db)
        if table.capture == .wal { return try installWAL(on: db) }
        try db.execute("BEGIN")
        do {
            // IF NOT EXISTS on an object that exists is a NOTICE ("already exists, skipping"), which
            // the worker would log at every start: the expected case is not news.
            try db.execute("SET LOCAL client_min_messages = warning")
            try db.execute("SELECT pg_advisory_xact_lock($1)", [String(advisoryLockKey)])
            try installTrackingTables(on: db)
            try installPartitionIndex(on: db)
            // The trigger function runs as its owner (SECURITY DEFINER), so the application's
            // own roles need no grants on the tracking table.
            let functionNow = try db.execute(
                "SELECT p.prosrc, p.prosecdef FROM pg_proc p WHERE p.oid = to_regprocedure($1)", [function + "()"])
            if functionNow.rows.first?[0] != Self.functionBody(createFunctionSQL) || functionNow.rows.first?[1] != "t" {
                try db.executeScript(createFunctionSQL)
            }
            let changed = try Self.ensureTrigger(on: db, table: watchedTable, name: Self.triggerName, wanted: createTriggerSQL)
            try Self.ensureTrigger(on: db, table: watchedTable, name: Self.truncateTriggerName, wanted: createTruncateTriggerSQL)
            try installDependencies(on: db)
            if try !installFollowRenames(on: db) {
                warn(followRenamesMissingWarning)
            }
            try db.execute("COMMIT")
            return changed
        } catch {
            _ = try? db.execute("ROLLBACK")
            throw error
        }
    }

    /// Inside setup's transaction: trigger `name` on `table` becomes `wanted` (its CREATE TRIGGER;
    /// nil: no such trigger). One already as wanted is left alone (replacing it would take the
    /// table's lock for nothing); true when anything was dropped or created.
    @discardableResult
    static func ensureTrigger(on db: PostgresConnection, table: String, name: String, wanted: String?) throws -> Bool {
        let current = try db.execute("SELECT pg_get_triggerdef(t.oid) FROM pg_trigger t WHERE t.tgrelid = to_regclass($1) AND t.tgname = $2",
                                     [table, name]).rows.first?[0]
        if let current, let wanted, normalizeTriggerDef(current) == normalizeTriggerDef(wanted.replacingAll(";", with: "")) { return false }
        if current == nil && wanted == nil { return false }
        if current != nil { try db.execute("DROP TRIGGER \(quoteIdentifier(name)) ON \(table)") }
        if let wanted { try db.execute(wanted) }
        return true
    }

    /// Inside setup's transaction: the tracking tables, brought up to date.
    func installTrackingTables(on db: PostgresConnection) throws {
        // CREATE ... IF NOT EXISTS still checks CREATE on the schema: skip it when everything
        // exists, so a least-privilege role can run against objects a DBA created.
        // Also the backfill progress table, and an `operation` CHECK that accepts 'B' (backfill's
        // code); and no CHECK on `T_changes.operation` (dropped when this role owns the table).
        let existing = try db.execute("""
            SELECT to_regclass($1) IS NOT NULL AND to_regclass($2) IS NOT NULL AND to_regclass($3) IS NOT NULL AND to_regclass($4) IS NOT NULL
               AND to_regclass($5) IS NOT NULL AND to_regclass($6) IS NOT NULL
               AND (SELECT count(*) FROM pg_attribute WHERE attrelid IN (to_regclass($1), to_regclass($2))
                    AND attname IN ('permanent_failures', 'cause') AND NOT attisdropped) = 4
               AND NOT EXISTS (\(staleOperationChecksSQL(changes: "$1", failed: "$2", select: "1")))
               AND NOT (\(droppableOperationCheckSQL(changes: "$1")))
            """, [changesTable, failedTable, "\(schemaIdent).\(quoteIdentifier(retryIndexName))", "\(schemaIdent).\(quoteIdentifier(keyIndexName))",
                  backfillTable, leaseTable])
        if existing[0, 0] != "t" {
            try db.executeScript(createTablesSQL)
        }
    }

    public func uninstall(on db: PostgresConnection) throws {
        try db.execute("BEGIN")
        do {
            try db.execute("SELECT pg_advisory_xact_lock($1)", [String(advisoryLockKey)])
            try db.executeScript(teardownSQL)
            try db.execute("COMMIT")
        } catch {
            _ = try? db.execute("ROLLBACK")
            throw error
        }
        // Outside the transaction, whatever the capture mode: a slot left by an earlier
        // `capture = "wal"` would hold WAL back for ever.
        try db.execute(dropSlotSQL(database: db.parameters.database))
    }

    /// The body of a `CREATE FUNCTION ... $adp$ ... $adp$` as PostgreSQL stores it in pg_proc.prosrc.
    static func functionBody(_ sql: String) -> String {
        guard let start = sql.rangeOfScalars("$adp$"), let end = sql[start.upperBound...].rangeOfScalars("$adp$") else { return sql }
        return String(sql[start.upperBound..<end.lowerBound])
    }

    /// pg_get_triggerdef prints identifiers unquoted when they need no quotes, and "EXECUTE
    /// FUNCTION" or "EXECUTE PROCEDURE" depending on version: compare without those differences.
    static func normalizeTriggerDef(_ def: String) -> String {
        def.replacingAll("\"", with: "")
            .replacingAll("EXECUTE PROCEDURE", with: "EXECUTE FUNCTION")
            .replacingAll("public.", with: "")
            .split(whereSeparator: \.isWhitespace).joined(separator: " ")
    }
}
