import XCTest

@testable import Shared

/// The backfill's SQL text: what the integration tests cannot see from outside.
final class BackfillSQLTests: XCTestCase {
    private let schema = TrackingSchema(table: WatchedTable(
        name: "items", changeColumns: ["version"], atomicDataQuery: "SELECT 1 WHERE $PRIMARY_KEY IS NOT NULL", publishEndpoint: "/x"))

    func testPlanRows_readsTheTopNodesEstimate() {
        XCTAssertEqual(TrackingSchema.planRows("Seq Scan on items  (cost=0.00..3385.00 rows=219500 width=4)"), 219_500)
        XCTAssertEqual(TrackingSchema.planRows("Result  (cost=0.00..0.01 rows=1 width=4)"), 1)
        XCTAssertEqual(TrackingSchema.planRows("no estimate"), 0)
    }

    func testChunk_comparesTheLastKeyInTheKeysOwnType_andOrdersByTheKeyNotItsText() {
        let sql = schema.backfillChunkSQL(where: "", keyType: "bigint", after: true)
        XCTAssertTrue(sql.contains(#""public"."items"."id" > $3::bigint"#), sql)
        XCTAssertTrue(sql.contains("ORDER BY p.k DESC"), sql)
    }

    func testChunk_theFirstBindsNoLastKey() {
        XCTAssertFalse(schema.backfillChunkSQL(where: "", keyType: "bigint", after: false).contains("$3"))
    }

    func testChunk_theWhereText_isOneParenthesisedConditionOnItsOwnLines() {
        let sql = schema.backfillChunkSQL(where: "version > 0 -- comment", keyType: "bigint", after: true)
        XCTAssertTrue(sql.contains("AND (\nversion > 0 -- comment\n)"), sql)
    }

    func testOperationCodes_acceptEveryOperation() {
        XCTAssertEqual(TrackingSchema.operationCodes, "('I', 'U', 'D', 'B')")
        // The dead letters keep the CHECK; the queue has none (it cost the writers a
        // parse and plan of the constraint at every captured row).
        XCTAssertEqual(schema.createTablesSQL.components(separatedBy: #"operation "char" NOT NULL CHECK (operation IN ('I', 'U', 'D', 'B'))"#).count, 2,
                       schema.createTablesSQL)
        XCTAssertTrue(schema.createTablesSQL.contains("operation \"char\" NOT NULL,\n"), schema.createTablesSQL)
    }

    func testBackfillIsNotATriggerOperation() {
        XCTAssertEqual(ChangeOperation.triggerOperations, [.insert, .update, .delete])
        XCTAssertEqual(ChangeOperation(code: "B"), .backfill)
        XCTAssertEqual(ChangeOperation.backfill.rawValue, "backfill")
    }
}
