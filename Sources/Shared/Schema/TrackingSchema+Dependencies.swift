// Dependency capture (docs/database.md, "When a document is published again"): a change to a row of a table
// the atomic data query reads enqueues the key of the watched row it references, in the watched
// table's own tracking table, in the writer's transaction. Everything downstream (queue,
// coalescing, per-key order, retries, dead letters, leases, partitions) is the watched table's.
//
// Invariants:
// - One function per (watched table, dependency), in the watched table's schema, SECURITY
//   DEFINER with a fixed search_path like the capture function; three statement-level triggers on
//   the dependency table (INSERT, UPDATE, DELETE) call it with their transition tables, and a
//   BEFORE TRUNCATE one reads the keys of the rows about to go. A statement
//   enqueues each distinct referenced key once, whatever the number of rows it touched: a bulk
//   insert of 2,000 rewards for 20 hotspots writes 20 tracking rows, not 2,000.
// - A NULL reference enqueues nothing; nothing the function does can fail on the application's
//   data (the key is cast to text only, and the key's type is checked against the watched key's by
//   `verifyDependencies`, so the text is the same text the capture trigger records).
// - An UPDATE counts when the key or one of `change_columns` changed (all columns when none are
//   listed): the rows' (key, columns) as text, old EXCEPT ALL new and new EXCEPT ALL old, so a row
//   moved from one parent to another enqueues both, and an UPDATE that rewrote the same values
//   enqueues nothing. (Transition tables pair no old row with its new row, and a trigger with a
//   transition table cannot name columns, so the comparison is by multiset.)
// - Each row records `cause` = "<schema>.<table> <insert|update|delete>", the watched-row
//   operation 'U' and no change column value: the payload says `operation: "update"` with a
//   `cause` (Payload.swift).
// - Objects of a dependency no longer configured are dropped by setup (`staleDependencyObjectsSQL`).
// - A partitioned dependency gets row-level triggers instead: a statement trigger on the parent
//   does not fire for a statement addressed to a partition, while a row trigger on the parent is
//   cloned by PostgreSQL to every partition, those attached later included. The same function
//   serves both levels (TG_LEVEL), with the same rules per row: an insert or delete records its
//   key, an update the old and the new key when the key or a change column changed. It costs a
//   tracking row per row changed instead of per key and statement.

extension TrackingSchema {
    /// The function a dependency's triggers call: `<table>_dep_<8 hex digits of the dependency's
    /// qualified name>` (at most 45 + 13 bytes, see TrackingObjectNames).
    public func dependencyFunctionName(_ dependency: Dependency) -> String {
        "\(table.name)_dep_\(Self.hex8(dependency.qualifiedName))"
    }

    public func dependencyFunction(_ dependency: Dependency) -> String {
        "\(schemaIdent).\(quoteIdentifier(dependencyFunctionName(dependency)))"
    }

    /// The prefix of this watched table's trigger names on its dependencies: `adp_<table>_<8 hex
    /// digits of the watched table's qualified name>_`, so two watched tables of the same name in
    /// two schemas never share a trigger.
    public var dependencyTriggerPrefix: String { "adp_\(table.name)_\(Self.hex8(table.qualifiedName))_" }

    /// TRUNCATE: `BEFORE TRUNCATE`, statement-level, reading the referenced keys from the rows
    /// about to go (a TRUNCATE has no transition table and fires no row trigger).
    public static let dependencyEvents = ["INSERT", "UPDATE", "DELETE", "TRUNCATE"]

    public func dependencyTriggerName(_ event: String) -> String {
        dependencyTriggerPrefix + String(event.lowercased().prefix(3))
    }

    func dependencyTable(_ dependency: Dependency) -> String {
        "\(quoteIdentifier(dependency.schema)).\(quoteIdentifier(dependency.table))"
    }

    /// The text recorded in `cause`.
    static func causeText(_ dependency: Dependency, _ event: String) -> String {
        "\(dependency.qualifiedName) \(event.lowercased())"
    }

    /// The (key, compared columns) text tuple of a transition table's rows.
    private func comparedColumns(_ dependency: Dependency, _ alias: String) -> String {
        let key = dependency.keyColumns.map { "\(alias).\(quoteIdentifier($0))::text" }
        let others = dependency.changeColumns.filter { !dependency.keyColumns.contains($0) }.map { "\(alias).\(quoteIdentifier($0))::text" }
        return (key + others).joined(separator: ", ")
    }

    public func createDependencyFunctionSQL(_ dependency: Dependency) -> String {
        let key = quoteIdentifier(dependency.keyColumns[0])
        func insert(_ event: String, _ select: String) -> String {
            """
            INSERT INTO \(changesTable) (primary_key, operation, cause)
                    SELECT DISTINCT d.k, 'U', \(quoteLiteral(Self.causeText(dependency, event))) FROM (\(select)) d WHERE d.k IS NOT NULL;
            """
        }
        let updated: String
        if dependency.changeColumns.isEmpty {
            updated = "SELECT o.\(key)::text AS k FROM adp_old o UNION SELECT n.\(key)::text FROM adp_new n"
        } else {
            let old = comparedColumns(dependency, "o"), new = comparedColumns(dependency, "n")
            updated = """
                SELECT c.k FROM ((SELECT \(old) FROM adp_old o EXCEPT ALL SELECT \(new) FROM adp_new n)
                                 UNION ALL (SELECT \(new) FROM adp_new n EXCEPT ALL SELECT \(old) FROM adp_old o)) c(k)
                """
        }
        func insertRow(_ event: String, _ keys: [String]) -> String {
            let values = keys.map { "(\($0).\(key)::text)" }.joined(separator: ", ")
            return """
            INSERT INTO \(changesTable) (primary_key, operation, cause)
                        SELECT DISTINCT v.k, 'U', \(quoteLiteral(Self.causeText(dependency, event))) FROM (VALUES \(values)) v(k) WHERE v.k IS NOT NULL;
            """
        }
        let rowChanged: String
        if dependency.changeColumns.isEmpty {
            rowChanged = "true"
        } else {
            let compared = dependency.keyColumns + dependency.changeColumns.filter { !dependency.keyColumns.contains($0) }
            rowChanged = "ROW(\(compared.map { "OLD.\(quoteIdentifier($0))::text" }.joined(separator: ", "))) IS DISTINCT FROM ROW(\(compared.map { "NEW.\(quoteIdentifier($0))::text" }.joined(separator: ", ")))"
        }
        return """
        CREATE OR REPLACE FUNCTION \(dependencyFunction(dependency))() RETURNS trigger LANGUAGE plpgsql
        SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $adp$
        BEGIN
            IF TG_LEVEL = 'ROW' THEN
                IF TG_OP = 'INSERT' THEN
                    \(insertRow("INSERT", ["NEW"]))
                ELSIF TG_OP = 'DELETE' THEN
                    \(insertRow("DELETE", ["OLD"]))
                ELSIF \(rowChanged) THEN
                    \(insertRow("UPDATE", ["OLD", "NEW"]))
                END IF;
            ELSIF TG_OP = 'INSERT' THEN
                \(insert("INSERT", "SELECT n.\(key)::text AS k FROM adp_new n"))
            ELSIF TG_OP = 'UPDATE' THEN
                \(insert("UPDATE", updated))
            ELSIF TG_OP = 'DELETE' THEN
                \(insert("DELETE", "SELECT o.\(key)::text AS k FROM adp_old o"))
            ELSE
                \(insert("TRUNCATE", "SELECT o.\(key)::text AS k FROM \(dependencyTable(dependency)) o"))
            END IF;
            IF FOUND THEN
                \(wakeTriggerSQL(anyPartition: true))
            END IF;
            RETURN NULL;
        END
        $adp$;
        """
    }

    /// `rowLevel` for a partitioned dependency table (see the invariants above).
    public func createDependencyTriggerSQL(_ dependency: Dependency, _ event: String, rowLevel: Bool = false) -> String {
        if event == "TRUNCATE" {
            return "CREATE TRIGGER \(quoteIdentifier(dependencyTriggerName(event))) BEFORE TRUNCATE ON \(dependencyTable(dependency)) FOR EACH STATEMENT EXECUTE FUNCTION \(dependencyFunction(dependency))();"
        }
        if rowLevel {
            return "CREATE TRIGGER \(quoteIdentifier(dependencyTriggerName(event))) AFTER \(event) ON \(dependencyTable(dependency)) FOR EACH ROW EXECUTE FUNCTION \(dependencyFunction(dependency))();"
        }
        let transition = switch event {
        case "INSERT": "NEW TABLE AS adp_new"
        case "UPDATE": "OLD TABLE AS adp_old NEW TABLE AS adp_new"
        default: "OLD TABLE AS adp_old"
        }
        return "CREATE TRIGGER \(quoteIdentifier(dependencyTriggerName(event))) AFTER \(event) ON \(dependencyTable(dependency)) REFERENCING \(transition) FOR EACH STATEMENT EXECUTE FUNCTION \(dependencyFunction(dependency))();"
    }

    /// For `print-sql`: every dependency's function and triggers (inside setup's transaction).
    public var printableDependenciesSQL: String {
        var sql = ""
        for dependency in table.dependencies {
            sql += "-- \(dependency.qualifiedName): a change to its rows publishes the \(table.name) row its \(dependency.keyColumns.joined(separator: ", ")) references\n"
            sql += createDependencyFunctionSQL(dependency) + "\n"
            for event in Self.dependencyEvents {
                sql += "DROP TRIGGER IF EXISTS \(quoteIdentifier(dependencyTriggerName(event))) ON \(dependencyTable(dependency));\n"
                if event == "TRUNCATE" {
                    sql += createDependencyTriggerSQL(dependency, event) + "\n"
                    continue
                }
                // Row-level on a partitioned table, statement-level otherwise: decided where it is applied.
                sql += """
                    DO $adp_dep$ BEGIN IF (SELECT c.relkind FROM pg_class c WHERE c.oid = \(quoteLiteral(dependencyTable(dependency)))::regclass) = 'p'
                        THEN EXECUTE \(quoteLiteral(createDependencyTriggerSQL(dependency, event, rowLevel: true)));
                        ELSE EXECUTE \(quoteLiteral(createDependencyTriggerSQL(dependency, event))); END IF; END $adp_dep$;

                    """
            }
        }
        return sql
    }

    /// Dropping a dependency's function drops its triggers with it.
    public var dependenciesTeardownSQL: String {
        table.dependencies.map { "DROP FUNCTION IF EXISTS \(dependencyFunction($0))() CASCADE;\n" }.joined()
    }

    /// This watched table's dependency functions that no configured dependency uses (a dependency
    /// removed from the configuration): `name` (its regprocedure text).
    var staleDependencyFunctionsSQL: String {
        let wanted = table.dependencies.map { quoteLiteral(dependencyFunctionName($0)) }
        let keep = wanted.isEmpty ? "" : " AND p.proname NOT IN (\(wanted.joined(separator: ", ")))"
        return """
            SELECT p.oid::regprocedure::text FROM pg_proc p
            WHERE p.pronamespace = to_regnamespace(\(quoteLiteral(quoteIdentifier(table.schema))))
              AND p.proname LIKE \(quoteLiteral(Self.likeEscaped(table.name + "_dep_") + "%")) AND length(p.proname) = \(table.name.utf8.count + 13)\(keep)
              AND p.prorettype = 'trigger'::regtype
            """
    }

    static func likeEscaped(_ text: String) -> String {
        text.replacingAll("\\", with: "\\\\").replacingAll("_", with: "\\_").replacingAll("%", with: "\\%")
    }

    static func hex8(_ text: String) -> String {
        let hex = String(UInt32(truncatingIfNeeded: fnv1a(text)), radix: 16)
        return String(repeating: "0", count: 8 - hex.count) + hex
    }
}

extension TrackingSchema {
    /// Check every dependency against the database: the table exists and is a table, its key
    /// column exists with a type whose text is the watched key's text, its change columns exist,
    /// and SELECT is granted (the query reads it). Touches nothing.
    public func verifyDependencies(on db: PostgresConnection) throws {
        guard !table.dependencies.isEmpty else { return }
        let key = try db.execute("""
            SELECT a.atttypid::regtype::text FROM pg_attribute a
            WHERE a.attrelid = to_regclass($1) AND a.attname = $2 AND NOT a.attisdropped
            """, [watchedTable, table.primaryKey])
        let keyType = key.rows.first?[0] ?? ""
        for (index, dependency) in table.dependencies.enumerated() {
            let here = "service.watched_tables dependencies[\(index)] of '\(table.name)'"
            let relation = try db.execute("SELECT c.oid, c.relkind::text FROM pg_class c WHERE c.oid = to_regclass($1)", [dependencyTable(dependency)])
            guard let row = relation.rows.first, let oid = row[0] else {
                throw SchemaProblem("dependency table \(dependency.qualifiedName) does not exist (\(here): table = \"\(dependency.table)\", schema = \"\(dependency.schema)\")")
            }
            guard row[1] == "r" || row[1] == "p" else {
                throw SchemaProblem("dependency \(dependency.qualifiedName) is not a table (a view or another kind of relation has no rows to capture; \(here))")
            }
            let columns = try db.execute(
                "SELECT attname, atttypid::regtype::text FROM pg_attribute WHERE attrelid = $1::oid AND attnum > 0 AND NOT attisdropped", [oid])
            var types: [String: String] = [:]
            for column in columns.rows { if let name = column[0] { types[name] = column[1] ?? "" } }
            let keyKey = dependency.keyColumns.count == 1 ? "key_column" : "key_columns"
            for column in dependency.keyColumns {
                guard let type = types[column] else {
                    throw SchemaProblem("column \"\(column)\" does not exist in dependency table \(dependency.qualifiedName) (check \(keyKey) of \(here))")
                }
                if !Self.sameKeyText(type, keyType) {
                    throw SchemaProblem("column \"\(column)\" of \(dependency.qualifiedName) is \(type), but primary_key \"\(table.primaryKey)\" of \(table.qualifiedName) is \(keyType): a reference must have the key's type (or both be integers, or both text or varchar), so that it names the same key (\(keyKey) of \(here))")
                }
            }
            for column in dependency.changeColumns where types[column] == nil {
                throw SchemaProblem("column \"\(column)\" does not exist in dependency table \(dependency.qualifiedName) (check change_columns of \(here))")
            }
            let privilege = try db.execute("SELECT has_table_privilege($1::oid, 'SELECT')", [oid])
            if privilege[0, 0] != "t" {
                throw SchemaProblem("the database user has no SELECT privilege on dependency table \(dependency.qualifiedName): grant it, the atomic data query reads it (\(here))")
            }
        }
    }

    /// Whether values of these two types, cast to text, give the same text for the same key.
    static func sameKeyText(_ a: String, _ b: String) -> Bool {
        if a == b { return true }
        let integers: Set<String> = ["smallint", "integer", "bigint"]
        let texts: Set<String> = ["text", "character varying"]
        return (integers.contains(a) && integers.contains(b)) || (texts.contains(a) && texts.contains(b))
    }

    /// Inside setup's transaction: create or replace what differs, drop what is no longer configured.
    func installDependencies(on db: PostgresConnection) throws {
        for stale in try db.execute(staleDependencyFunctionsSQL).rows.compactMap({ $0[0] }) {
            try db.execute("DROP FUNCTION IF EXISTS \(stale) CASCADE")
        }
        for dependency in table.dependencies {
            let sql = createDependencyFunctionSQL(dependency)
            let now = try db.execute("SELECT p.prosrc, p.prosecdef FROM pg_proc p WHERE p.oid = to_regprocedure($1)",
                                     [dependencyFunction(dependency) + "()"])
            if now.rows.first?[0] != Self.functionBody(sql) || now.rows.first?[1] != "t" {
                try db.executeScript(sql)
            }
            let partitioned = try db.execute("SELECT c.relkind = 'p' FROM pg_class c WHERE c.oid = to_regclass($1)", [dependencyTable(dependency)])[0, 0] == "t"
            for event in Self.dependencyEvents {
                try Self.ensureTrigger(on: db, table: dependencyTable(dependency), name: dependencyTriggerName(event),
                                       wanted: createDependencyTriggerSQL(dependency, event, rowLevel: partitioned))
            }
        }
    }
}
