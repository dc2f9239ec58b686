import XCTest
@testable import Shared

/// `[[service.watched_tables.dependencies]]`: parsing, and validation naming the key and table.
final class DependencyConfigTests: XCTestCase {
    private func parse(_ dependencies: String) throws -> PublisherConfig {
        var config = PublisherConfig()
        var warnings: [String] = []
        try ConfigLoader.apply(toml: ConfigLoaderTests.watchedTable() + dependencies, file: "test.toml", to: &config, warnings: &warnings)
        return config
    }

    private func error(_ body: () throws -> Void) -> ConfigError? {
        do { try body() } catch let error as ConfigError { return error } catch { XCTFail("\(error)") }
        return nil
    }

    func testTheSeedsRewardsDependency_parsesWithDefaults() throws {
        let config = try parse("""
            [[service.watched_tables.dependencies]]
            table = "rewards"
            key_column = "hotspot_id"

            [[service.watched_tables.dependencies]]
            table = "owners"
            schema = "crm"
            key_columns = ["hotspot_id"]
            change_columns = ["name", "email"]
            """)
        let dependencies = try XCTUnwrap(config.service.watchedTables.first?.dependencies)
        XCTAssertEqual(dependencies, [Dependency(table: "rewards", keyColumns: ["hotspot_id"]),
                                      Dependency(table: "owners", schema: "crm", keyColumns: ["hotspot_id"], changeColumns: ["name", "email"])])
        XCTAssertNoThrow(try ConfigLoader.validate(config))
        // The worker's configuration line carries them; an older line without them means none.
        let table = try XCTUnwrap(config.service.watchedTables.first)
        let decoded = try JSONDecoder().decode(WatchedTable.self, from: JSONEncoder().encode(table))
        XCTAssertEqual(decoded, table)
    }

    func testParsingErrors_nameTheKey() {
        let cases: [(String, String, String)] = [
            ("[[service.watched_tables.dependencies]]\nkey_column = \"hotspot_id\"", "service.watched_tables[0].dependencies[0].table", "missing required key"),
            ("[[service.watched_tables.dependencies]]\ntable = \"rewards\"", "service.watched_tables[0].dependencies[0].key_column", "missing required key"),
            ("[[service.watched_tables.dependencies]]\ntable = \"rewards\"\nkey_column = \"a\"\nkey_columns = [\"a\"]", "service.watched_tables[0].dependencies[0].key_columns", "not both"),
            ("[[service.watched_tables.dependencies]]\ntable = \"rewards\"\nkey_column = \"a\"\nchange_column = \"b\"", "service.watched_tables[0].dependencies[0].change_column", "unknown key"),
            ("[[service.watched_tables.dependencies]]\ntable = \"rewards\"\nkey_column = \"a\"\nchange_columns = []", "service.watched_tables[0].dependencies[0].change_columns", "at least one"),
        ]
        for (toml, key, problem) in cases {
            let e = error { _ = try parse(toml) }
            XCTAssertEqual(e?.key, key, toml)
            XCTAssertTrue(e?.problem.contains(problem) == true && e?.problem.contains("hotspots") == true, "\(String(describing: e))")
        }
    }

    func testValidation_refusesCompositeReferences_selfDependencies_duplicates_andBadIdentifiers() throws {
        func validation(_ dependencies: [Dependency]) -> ConfigError? {
            var config = PublisherConfig()
            config.service.watchedTables = [ConfigLoaderTests.hotspots]
            config.service.watchedTables[0].dependencies = dependencies
            return error { try ConfigLoader.validate(config) }
        }
        XCTAssertNil(validation([Dependency(table: "rewards", keyColumns: ["hotspot_id"])]))
        let composite = validation([Dependency(table: "rewards", keyColumns: ["a", "b"])])
        XCTAssertEqual(composite?.key, "service.watched_tables[0].dependencies[0].key_columns")
        XCTAssertTrue(composite?.problem.contains("one column 'id'") == true, "\(String(describing: composite))")
        XCTAssertEqual(validation([Dependency(table: "hotspots", keyColumns: ["id"])])?.key, "service.watched_tables[0].dependencies[0].table")
        let twice = validation([Dependency(table: "rewards", keyColumns: ["a"]), Dependency(table: "rewards", keyColumns: ["b"])])
        XCTAssertEqual(twice?.key, "service.watched_tables[0].dependencies[1].table")
        XCTAssertEqual(validation([Dependency(table: "rewards; drop", keyColumns: ["a"])])?.key, "service.watched_tables[0].dependencies[0].table")
        XCTAssertEqual(validation([Dependency(table: "rewards", keyColumns: ["a b"])])?.key, "service.watched_tables[0].dependencies[0].key_column")
    }

    func testGrouping_keepsTheWatchedRowsOperation_andCollectsDistinctCauses() {
        let rows = [
            ChangeRow(id: 1, primaryKey: "1", operation: .delete, changeColumnValue: "t1"),
            ChangeRow(id: 2, primaryKey: "1", operation: .update, cause: "public.rewards insert"),
            ChangeRow(id: 3, primaryKey: "1", operation: .update, cause: "public.rewards insert"),
            ChangeRow(id: 4, primaryKey: "2", operation: .update, cause: "public.rewards update"),
        ]
        let groups = KeyChanges.coalesce(rows)
        XCTAssertEqual(groups[0].latest.id, 3, "the payload covers every row")
        XCTAssertEqual(groups[0].latest.operation, .delete, "a deleted watched row stays deleted")
        XCTAssertEqual(groups[0].latest.changeColumnValue, "t1")
        XCTAssertEqual(groups[0].dependencyCauses, ["public.rewards insert"])
        XCTAssertEqual(groups[0].ownOperations, [.delete])
        XCTAssertEqual(groups[1].latest.operation, .update)
        XCTAssertEqual(groups[1].ownOperations, [])
        // Out of id order (a covered row read after the due rows): the same result.
        XCTAssertEqual(KeyChanges.coalesce([rows[2], rows[0], rows[1]])[0].latest.operation, .delete)
        XCTAssertEqual(KeyChanges.coalesce(rows.filter { $0.cause == nil })[0].dependencyCauses, [])
    }
}
