import Foundation
import Shared
import XCTest

/// The whole-batch form of the atomic data query (`AtomicDataQuery.batched`) against a real
/// server: for every key type it renders exactly what the single-key statement renders, keys stay
/// bound values, and a statement that fails midway keeps the rows before the failure.
final class BatchedAtomicDataTests: IntegrationTestCase {
    private func connect(_ database: TestDatabase) throws -> PostgresConnection {
        try PostgresConnection.connect(ConnectionParameters(database.config, applicationName: "adp-batched-test"))
    }

    /// Prepare both forms as the worker does; the batched form typed like `$PRIMARY_KEY`.
    private func prepareBoth(_ connection: PostgresConnection, _ query: AtomicDataQuery) throws -> String {
        try connection.prepare(name: "single", sql: query.wrapped)
        let keyType = try XCTUnwrap(try connection.execute("SELECT parameter_types[1]::text FROM pg_prepared_statements WHERE name = 'single'").rows.first?.first ?? nil)
        try connection.prepare(name: "batch", sql: try XCTUnwrap(query.batched(keyType: keyType)))
        return keyType
    }

    private func single(_ connection: PostgresConnection, _ key: String) throws -> String {
        try connection.execute("EXECUTE single(\(quoteLiteral(key)))").rows.first?.first.flatMap { $0 } ?? "?"
    }

    private func batch(_ connection: PostgresConnection, _ keys: [String]) throws -> [String] {
        let result = try connection.pipeline([[.preparedStreaming(name: "batch", parameters: [TrackingSchema.textArray(keys)])]])[0][0]
        guard case .success(let q) = result else { throw XCTSkip("unexpected \(result)") }
        var out = Array(repeating: "missing", count: keys.count)
        for row in q.rows { out[Int(row[0] ?? "0")! - 1] = row[1] ?? "NULL" }
        return out
    }

    func testEveryKeyType_rendersExactlyAsTheSingleKeyStatement_andOddTextKeysStayValues() throws {
        let database = try makeDatabase()
        try database.executeScript("""
            CREATE TABLE nums (id bigint PRIMARY KEY, label text, at timestamptz DEFAULT '2026-11-29 12:00:00+00', tags text[] DEFAULT '{a,b}');
            INSERT INTO nums (id, label) SELECT g, 'n' || g FROM generate_series(1, 50) g;
            CREATE TABLE words (code text PRIMARY KEY, n int);
            CREATE TABLE things (uid uuid PRIMARY KEY, doc jsonb);
            INSERT INTO things VALUES ('7d444840-9dc0-11d1-b245-5ffdce74fad2', '{"k": [1, 2]}'), ('00000000-0000-0000-0000-000000000001', NULL);
            CREATE TABLE children (parent bigint, seq int, PRIMARY KEY (parent, seq));
            INSERT INTO children SELECT p, s FROM generate_series(1, 3) p, generate_series(1, p) s;
            """)
        let odd = ["x'); DROP TABLE nums; --", "\"quoted\" \\back\\", "NULL", "", "a,b", "{}", "ключ 🔑", "line\nbreak"]
        for (i, key) in odd.enumerated() { try database.execute("INSERT INTO words VALUES ($1, $2)", [key, String(i)]) }

        let cases: [(query: String, keys: [String], type: String)] = [
            ("SELECT id, label, at, tags FROM nums WHERE id = $PRIMARY_KEY", ["3", "1", "999", "50", "3"], "bigint"),
            ("SELECT code, n FROM words WHERE code = $PRIMARY_KEY;", odd + ["absent"], "text"),
            ("SELECT uid, doc FROM things WHERE uid = $PRIMARY_KEY", ["00000000-0000-0000-0000-000000000001", "7d444840-9dc0-11d1-b245-5ffdce74fad2"], "uuid"),
            // Several rows per key, the key used twice, a CTE: json_agg of each key's rows.
            ("WITH c AS (SELECT * FROM children WHERE parent = $PRIMARY_KEY) SELECT parent, seq FROM c WHERE parent = $PRIMARY_KEY ORDER BY seq",
             ["3", "2", "7"], "bigint"),
        ]
        for (index, c) in cases.enumerated() {
            let connection = try connect(database)
            defer { connection.close() }
            XCTAssertEqual(try prepareBoth(connection, AtomicDataQuery(c.query)), c.type, "case \(index)")
            let expected = try c.keys.map { try single(connection, $0) }
            XCTAssertEqual(try batch(connection, c.keys), expected, "case \(index): \(c.query)")
        }
        XCTAssertEqual(try database.rowCount("nums"), 50, "a key is a value, never SQL")
    }

    /// One key's row breaks the query: the statement stops there, and the rows of the keys before
    /// it arrive anyway (single-row mode), so the worker queries only the rest key by key.
    func testAFailingKeyMidway_keepsTheRowsBeforeIt() throws {
        let database = try makeDatabase()
        try database.executeScript("""
            CREATE TABLE items (id int PRIMARY KEY, divisor int NOT NULL DEFAULT 1);
            INSERT INTO items (id) SELECT g FROM generate_series(1, 300) g;
            UPDATE items SET divisor = 0 WHERE id = 200;
            """)
        let connection = try connect(database)
        defer { connection.close() }
        _ = try prepareBoth(connection, AtomicDataQuery("SELECT id, 100 / divisor AS q FROM items WHERE id = $PRIMARY_KEY"))
        let keys = (1...300).map(String.init)
        let result = try connection.pipeline([[.preparedStreaming(name: "batch", parameters: [TrackingSchema.textArray(keys)])]])[0][0]
        guard case .failedAfter(let rows, let error) = result else { return XCTFail("expected rows, then the failure: \(result)") }
        XCTAssertEqual(error.sqlState, "22012", "division by zero: \(error)")
        XCTAssertEqual(rows.rows.map { $0[0] }, (1...199).map { String($0) }, "the 199 keys before the failing one")
        XCTAssertEqual(rows.rows[0][1], #"[{"id":1,"q":100}]"#)
        // The connection is usable afterwards, and the plain form still fails as a whole.
        XCTAssertEqual(try single(connection, "5"), #"[{"id":5,"q":100}]"#)
        let plain = try connection.pipeline([[.prepared(name: "batch", parameters: [TrackingSchema.textArray(keys)])]])[0][0]
        guard case .failure = plain else { return XCTFail("without streaming no row survives a failure: \(plain)") }
    }

    /// A query that names `adp_key` itself (an alias would capture the key's reference in the
    /// batched form): the worker stays key by key and publishes as before.
    func testAQueryNamingTheBatchAlias_isPublishedKeyByKey() throws {
        let aliased = WatchedTable(name: "items", changeColumns: ["v"],
                                   atomicDataQuery: "SELECT adp_key.id, adp_key.v FROM items AS adp_key WHERE adp_key.id = $PRIMARY_KEY",
                                   publishEndpoint: "/api/v1/items")
        XCTAssertNil(AtomicDataQuery(aliased.atomicDataQuery).batched(keyType: "bigint"))
        XCTAssertNotNil(AtomicDataQuery("SELECT id FROM items WHERE id = $PRIMARY_KEY").batched(keyType: "bigint"))

        let p = try startPipeline(schemaSQL: "CREATE TABLE items (id bigint PRIMARY KEY, v int NOT NULL DEFAULT 0); INSERT INTO items (id) SELECT g FROM generate_series(1, 5) g;",
                                  tables: [aliased])
        try p.database.execute("UPDATE items SET v = 7")
        try waitForRequests(p.ingestor, count: 5)
        try waitUntilTrackingTableIsEmpty(p.database, aliased)
        let requests = try p.ingestor.requests()
        XCTAssertEqual(requests.count, 5, "\(requests)")
        for key in 1...5 {
            let request = try XCTUnwrap(requests.first { $0.body["primary_key"] == .string(String(key)) }, "\(requests)")
            XCTAssertEqual(request.body["atomic_data"], [["id": .number(Double(key)), "v": 7]], "key \(key)")
        }
    }
}
