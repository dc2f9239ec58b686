import XCTest

@testable import Shared

/// The wake-up's SQL text (TrackingSchema+Wake.swift); WakeUpTests runs it against PostgreSQL.
final class WakeSQLTests: XCTestCase {
    private func schema(_ name: String, schema: String = "public", operations: [ChangeOperation]? = nil) -> TrackingSchema {
        var table = WatchedTable(name: name, changeColumns: ["version"], atomicDataQuery: "SELECT 1 WHERE $PRIMARY_KEY IS NOT NULL", publishEndpoint: "/x")
        table.schema = schema
        if let operations { table.operations = operations }
        return TrackingSchema(table: table)
    }

    func testChannel_isAFixedLengthNameOfItsOwnPerTable_quotedWhereUsed() {
        let long = schema(String(repeating: "x", count: 45), schema: "A \"quoted\" schema")
        XCTAssertEqual(long.wakeChannel.count, 25, long.wakeChannel)
        XCTAssertTrue(long.wakeChannel.hasPrefix("adp_wake_"))
        XCTAssertNotEqual(schema("items").wakeChannel, schema("items", schema: "other").wakeChannel)
        XCTAssertEqual(long.listenSQL, "LISTEN \"\(long.wakeChannel)\"")
        XCTAssertTrue(long.wakeTriggerSQL().contains("pg_notify('\(long.wakeChannel)', '')"), long.wakeTriggerSQL())
    }

    func testKey_isDistinctFromTheLeaseAndSetupKeys_andPerPartition() {
        let s = schema("items")
        let keys: Set<Int64> = [s.wakeKey(), s.leaseKey, s.advisoryLockKey, s.handoffKey]
        XCTAssertEqual(keys.count, 4)
        XCTAssertNotEqual(s.partitionWakeKey, s.generationKey)
        // A partitioned table: the trigger tries the flag of the changed key's partition only (a
        // primary key change: both keys').
        var table = s.table
        table.partitions = 4
        let p = TrackingSchema(table: table)
        let fragment = p.wakeTriggerSQL(keys: ["NEW.\"id\"::text"])
        XCTAssertEqual(fragment, "IF NOT (pg_try_advisory_xact_lock_shared(\(p.partitionWakeKey), (hashtext(NEW.\"id\"::text) & 2147483647) % 4)) AND current_setting('max_prepared_transactions') = '0' THEN PERFORM pg_notify('\(p.wakeChannel)', ''); END IF;")
        XCTAssertTrue(p.createFunctionSQL.contains(p.wakeTriggerSQL(keys: ["OLD.\"id\"::text", "NEW.\"id\"::text"])), p.createFunctionSQL)
    }

    func testTrigger_wakesAfterEveryRecordedChange_andOnlyThere() {
        let s = schema("items")
        let fragment = s.wakeTriggerSQL()
        // INSERT, UPDATE (changed key: one two-row INSERT; watched column: one), DELETE and TRUNCATE record changes.
        XCTAssertEqual(s.createFunctionSQL.components(separatedBy: fragment).count - 1, 5, s.createFunctionSQL)
        let insertOnly = schema("items", operations: [.insert])
        XCTAssertEqual(insertOnly.createFunctionSQL.components(separatedBy: fragment).count - 1, 1, insertOnly.createFunctionSQL)
        XCTAssertTrue(s.createFunctionSQL.contains("SECURITY DEFINER SET search_path = pg_catalog, pg_temp"))
    }
}
