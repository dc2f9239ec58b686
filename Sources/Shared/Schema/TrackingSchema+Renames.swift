// Column renames never break the application's writes (docs/database.md "Renamed columns").
//
// The capture function names the watched table's key and change columns (`NEW."v"`), and a
// dependency's function names the dependency's columns (`n."hotspot_id"`): after `ALTER TABLE
// ... RENAME COLUMN v TO v2`, PL/pgSQL would fail every INSERT, UPDATE and DELETE of the table
// inside our trigger ("record "new" has no field "v""). Bodies that read the row without naming a
// column (`to_jsonb(NEW) ->> 'v'`) cost the writers 54 % more per single-row UPDATE than the
// shipped body, and triggers whose WHEN clause does the recording (stored parsed, so they follow a
// rename) 2.1 times as much (docs/performance.md). So the bodies stay as they are, and an event
// trigger keeps them in step:
//
// - Each function carries a comment mapping column numbers to the names its body uses:
//   `atomic-data-publisher columns of <table oid>: 1=id 3=v`, written by setup (which knows the
//   numbers; print-sql writes it with a DO block).
// - An event trigger on `ddl_command_end` for `ALTER TABLE`, one per watched table, runs in the
//   transaction of the ALTER itself: for each of the table's functions whose mapped table was
//   altered, it replaces every quoted use of a renamed column (`NEW."v"`, `OLD."v"`, `n."v"`,
//   `o."v"`) with the new name and updates the comment. The rename and the new body commit
//   together, so no write ever sees a body that names a missing column.
// - Creating an event trigger takes a superuser. Setup creates it when its role is one; otherwise
//   it warns once and `print-sql` has it for a DBA. The function is SECURITY DEFINER (its owner
//   may replace our functions, whoever runs the ALTER).
// - The worker's configuration still names the old column: its periodic check finds the
//   configured column gone and marks the table failed with a sentence naming it
//   (`missingColumnsSQL`); capture goes on meanwhile, so nothing is lost while the operator
//   updates the configuration.

extension TrackingSchema {
    public var followRenamesFunctionName: String { "\(table.name)_follow_renames" }
    public var followRenamesFunction: String { "\(schemaIdent).\(quoteIdentifier(followRenamesFunctionName))" }
    /// At most 4 + 45 + 1 + 8 + 8 bytes.
    public var followRenamesTriggerName: String { "adp_\(table.name)_\(Self.hex8(table.qualifiedName))_renames" }

    static let columnMapPrefix = "atomic-data-publisher columns of "

    /// Every function of this table whose body names columns, with the table and the columns it
    /// names: the capture function (the watched table's key and change columns) and each
    /// dependency's (its key and change columns).
    var functionsNamingColumns: [(function: String, table: String, columns: [String])] {
        var result = [(function, watchedTable, [table.primaryKey] + table.changeColumns.filter { $0 != table.primaryKey })]
        for dependency in table.dependencies {
            result.append((dependencyFunction(dependency), dependencyTable(dependency),
                           dependency.keyColumns + dependency.changeColumns.filter { !dependency.keyColumns.contains($0) }))
        }
        return result
    }

    /// The comment a function's column map should have now, as an SQL expression.
    private func columnMapExpression(table: String, columns: [String]) -> String {
        let names = "ARRAY[" + columns.map(quoteLiteral).joined(separator: ", ") + "]"
        return """
            \(quoteLiteral(Self.columnMapPrefix)) || \(quoteLiteral(table))::regclass::oid || ': ' ||
                    (SELECT jsonb_object_agg(a.attnum::text, a.attname) FROM unnest(\(names)::name[]) k(name)
                     JOIN pg_attribute a ON a.attrelid = \(quoteLiteral(table))::regclass AND a.attname = k.name AND NOT a.attisdropped)::text
            """
    }

    /// Writes each function's column map as its comment, from the catalog's column numbers, where
    /// it differs (COMMENT needs the function's owner: a role that runs against objects a DBA
    /// made changes nothing).
    public var commentColumnMapsSQL: String {
        let statements = functionsNamingColumns.map { entry in
            let expected = columnMapExpression(table: entry.table, columns: entry.columns)
            let function = quoteLiteral(entry.function + "()")
            return """
                IF obj_description(to_regprocedure(\(function)), 'pg_proc') IS DISTINCT FROM (\(expected)) THEN
                    EXECUTE format('COMMENT ON FUNCTION %s IS %L', \(function), \(expected));
                END IF;
            """
        }
        return "DO $adp_map$ BEGIN\n" + statements.joined(separator: "\n") + "\nEND $adp_map$;"
    }

    public var createFollowRenamesFunctionSQL: String {
        let functions = functionsNamingColumns.map { "to_regprocedure(\(quoteLiteral($0.function + "()")))" }.joined(separator: ", ")
        let prefix = quoteLiteral(Self.columnMapPrefix)
        return """
        CREATE OR REPLACE FUNCTION \(followRenamesFunction)() RETURNS event_trigger LANGUAGE plpgsql
        SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $adp$
        DECLARE
            f record; col record; rel oid; now_named text; body text; map jsonb; changed boolean; alias text; was text;
        BEGIN
            FOR f IN SELECT p.oid::regprocedure AS fn, p.prosrc, d.description FROM pg_proc p
                     JOIN pg_description d ON d.objoid = p.oid AND d.classoid = 'pg_proc'::regclass AND d.objsubid = 0
                     WHERE p.oid IN (\(functions)) AND starts_with(d.description, \(prefix)) LOOP
                rel := split_part(substr(f.description, length(\(prefix)) + 1), ':', 1)::oid;
                CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pg_event_trigger_ddl_commands() d WHERE d.objid = rel);
                body := f.prosrc; changed := false;
                map := substr(f.description, position(': ' IN f.description) + 2)::jsonb;
                FOR col IN SELECT key::int2 AS num, value AS named FROM jsonb_each_text(map) LOOP
                    SELECT a.attname INTO now_named FROM pg_attribute a WHERE a.attrelid = rel AND a.attnum = col.num AND NOT a.attisdropped;
                    IF now_named IS NOT NULL AND now_named <> col.named THEN
                        was := replace(col.named, '"', '""');
                        FOREACH alias IN ARRAY ARRAY['NEW', 'OLD', 'n', 'o'] LOOP
                            body := replace(body, alias || '."' || was || '"', alias || '."' || replace(now_named, '"', '""') || '"');
                        END LOOP;
                        map := jsonb_set(map, ARRAY[col.num::text], to_jsonb(now_named));
                        changed := true;
                    END IF;
                END LOOP;
                IF changed THEN
                    EXECUTE format('CREATE OR REPLACE FUNCTION %s RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS %L', f.fn, body);
                    EXECUTE format('COMMENT ON FUNCTION %s IS %L', f.fn, \(prefix) || rel || ': ' || map::text);
                END IF;
            END LOOP;
        END
        $adp$;
        """
    }

    public var createFollowRenamesTriggerSQL: String {
        "CREATE EVENT TRIGGER \(quoteIdentifier(followRenamesTriggerName)) ON ddl_command_end WHEN TAG IN ('ALTER TABLE') EXECUTE FUNCTION \(followRenamesFunction)();"
    }

    /// For print-sql: to be applied by a superuser (event triggers need one).
    public var printableFollowRenamesSQL: String {
        """
        -- Renames: keeps the functions above in step with RENAME COLUMN (an event trigger: apply as a superuser).
        \(commentColumnMapsSQL)
        \(createFollowRenamesFunctionSQL)
        DROP EVENT TRIGGER IF EXISTS \(quoteIdentifier(followRenamesTriggerName));
        \(createFollowRenamesTriggerSQL)

        """
    }

    public var followRenamesTeardownSQL: String {
        """
        DROP EVENT TRIGGER IF EXISTS \(quoteIdentifier(followRenamesTriggerName));
        DROP FUNCTION IF EXISTS \(followRenamesFunction)();

        """
    }

    /// Inside setup's transaction, after the functions: their column maps, and the event trigger
    /// when this role may create it. Returns false when the event trigger is missing and this role
    /// may not create it (the caller warns).
    func installFollowRenames(on db: PostgresConnection) throws -> Bool {
        try db.execute(commentColumnMapsSQL)
        let state = try db.execute("""
            SELECT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)::text,
                   EXISTS (SELECT 1 FROM pg_event_trigger e WHERE e.evtname = $1 AND e.evtfoid = to_regprocedure($2) AND e.evtenabled <> 'D')::text,
                   (SELECT p.prosrc FROM pg_proc p WHERE p.oid = to_regprocedure($2))
            """, [followRenamesTriggerName, followRenamesFunction + "()"])
        let superuser = state[0, 0] == "true", present = state[0, 1] == "true"
        let bodyRight = state[0, 2] == Self.functionBody(createFollowRenamesFunctionSQL)
        if present && bodyRight { return true }
        guard superuser else { return present }
        try db.executeScript(createFollowRenamesFunctionSQL)
        if !present {
            try db.execute("DROP EVENT TRIGGER IF EXISTS \(quoteIdentifier(followRenamesTriggerName))")
            try db.execute(createFollowRenamesTriggerSQL)
        }
        return true
    }

    public var followRenamesMissingWarning: String {
        "renaming a column that the capture of \(table.qualifiedName) names (RENAME COLUMN) would make the application's writes to it fail until setup runs again: the event trigger \(followRenamesTriggerName) that follows renames needs a superuser to create it; apply `print-sql` as one (docs/database.md, renamed columns)"
    }

    /// The configured columns that no longer exist, as `"column" of schema.table` phrases (empty
    /// when all do): the watched table's and each dependency's. $1 the tables (text[]), $2 the columns.
    public var missingColumnsSQL: String {
        """
        SELECT string_agg(format('"%s" of %s', c.col, replace(c.rel, '"', '')), ', ' ORDER BY c.i)
        FROM unnest($1::text[], $2::text[]) WITH ORDINALITY c(rel, col, i)
        WHERE to_regclass(c.rel) IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = to_regclass(c.rel) AND a.attname = c.col AND NOT a.attisdropped)
        """
    }

    public var missingColumnsParameters: [String?] {
        var tables: [String] = [], columns: [String] = []
        for entry in functionsNamingColumns {
            for column in entry.columns {
                tables.append(entry.table)
                columns.append(column)
            }
        }
        return [Self.textArray(tables), Self.textArray(columns)]
    }

    /// The sentence for /health and the log when `missing` (from `missingColumnsSQL`) is not empty.
    public func missingColumnsSentence(_ missing: String) -> String {
        "the configuration names columns that no longer exist (renamed or dropped): \(missing); the application's writes go on and their changes are kept in \(changesTableName) (a rename is followed when the event trigger \(followRenamesTriggerName) is installed), but nothing is published until the configuration names the columns as they are now; update it and reload (SIGHUP)"
    }
}
