import Foundation
import Shared
import XCTest

/// The tracking table's queue rules against a real PostgreSQL: statements only, no worker.
final class QueueRuleTests: IntegrationTestCase {
    private let items = WatchedTable(name: "items", changeColumns: ["v"], atomicDataQuery: "SELECT id, v FROM items WHERE id = $PRIMARY_KEY",
                                     publishEndpoint: "/api/v1/items")

    /// The idle check and the batch read decide "due" by one rule. A key that backs off and then
    /// changes again has a due-looking newer row that the read must skip (order per key): the idle
    /// check must not call it due either, or an idle worker polls in a tight loop for the whole
    /// backoff.
    func testTheIdleCheck_agreesWithTheBatchRead_whileAKeyBacksOffWithANewerChange() throws {
        let database = try makeDatabase()
        try database.executeScript("CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL DEFAULT 0); INSERT INTO items (id) VALUES (1), (2);")
        let schema = TrackingSchema(table: items)
        try schema.install(on: database.connection)
        func anyDue() throws -> Bool { try database.value(schema.anyDueSQL) == "t" }
        func due() throws -> [String] { try database.execute(schema.fetchDueSQL, ["100"]).rows.map { $0[1] ?? "" } }

        try database.execute("UPDATE items SET v = 1 WHERE id = 1")
        try database.execute("UPDATE items_changes SET next_attempt_at = clock_timestamp() + interval '1 hour', attempts = 1")
        try database.execute("UPDATE items SET v = 2 WHERE id = 1")  // a newer change of the key that backs off
        XCTAssertEqual(try due(), [], "the read skips a key with an earlier row backing off")
        XCTAssertFalse(try anyDue(), "and the idle check agrees")

        try database.execute("UPDATE items SET v = 1 WHERE id = 2")
        XCTAssertEqual(try due(), ["2"])
        XCTAssertTrue(try anyDue())

        try database.execute("DELETE FROM items_changes WHERE primary_key = '2'")
        try database.execute("UPDATE items_changes SET next_attempt_at = clock_timestamp() - interval '1 second' WHERE next_attempt_at IS NOT NULL")
        XCTAssertEqual(try due(), ["1", "1"], "the retry came due: both rows of the key")
        XCTAssertTrue(try anyDue())
    }

    /// A tracking table made again keeps ids above every dead-lettered id: dead-lettering and
    /// replay move rows by id (`ON CONFLICT (id) DO NOTHING`), so a repeated id lost a change.
    func testARecreatedTrackingTable_neverRepeatsAnIdOfTheDeadLetters() throws {
        let database = try makeDatabase()
        try database.executeScript("CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL DEFAULT 0); INSERT INTO items (id) VALUES (1), (2);")
        let schema = TrackingSchema(table: items)
        try schema.install(on: database.connection)
        for v in 1...3 { try database.execute("UPDATE items SET v = \(v) WHERE id = 1") }
        try database.execute("INSERT INTO items_changes_failed (id, primary_key, operation) SELECT id, primary_key, operation FROM items_changes")
        XCTAssertEqual(try database.value("SELECT max(id) FROM items_changes_failed"), "3")
        try database.execute("DROP TABLE items_changes")
        try schema.install(on: database.connection)
        try database.execute("UPDATE items SET v = 9 WHERE id = 2")
        XCTAssertEqual(try database.value("SELECT min(id) FROM items_changes"), "4", "the new table's ids start above the dead letters'")
        try schema.install(on: database.connection)  // idempotent: nothing moves when nothing is missing
        try database.execute("UPDATE items SET v = 10 WHERE id = 2")
        XCTAssertEqual(try database.value("SELECT max(id) FROM items_changes"), "5")
    }

    /// A replayed dead letter goes back under a new id: its key may have had newer changes
    /// delivered meanwhile, and a payload covering the old id would carry a lower version (the
    /// highest tracking id covered) than one already delivered for the key.
    func testReplay_queuesDeadLettersUnderNewIds_inTheirOrder() throws {
        let database = try makeDatabase()
        try database.executeScript("CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL DEFAULT 0); INSERT INTO items (id) VALUES (1), (2);")
        let schema = TrackingSchema(table: items)
        try schema.install(on: database.connection)
        try database.execute("UPDATE items SET v = 1 WHERE id = 1")  // id 1
        try database.execute("UPDATE items SET v = 1 WHERE id = 2")  // id 2
        try schema.deadLetter(database.connection, ids: [1, 2], error: "refused", attemptsMade: 1)
        try database.execute("UPDATE items SET v = 2 WHERE id = 1")  // id 3: a newer change of key 1, delivered
        try database.execute("DELETE FROM items_changes WHERE id = 3")
        XCTAssertEqual(try schema.replay(database.connection, id: nil), 2)
        let rows = try database.execute("SELECT id, primary_key, attempts FROM items_changes ORDER BY id").rows.map { $0.map { $0 ?? "" } }
        XCTAssertEqual(rows, [["4", "1", "0"], ["5", "2", "0"]], "above every id handed out, in the dead letters' order, counters reset")
        XCTAssertEqual(try database.rowCount("items_changes_failed"), 0)
    }
}
