import Foundation
import Shared
import XCTest

/// The next batch is read on a second connection while the current one is sent (BatchPrefetcher):
/// a key's payloads still arrive in commit order, each change is published once, and the second
/// connection goes away when the table is idle.
final class ReadAheadTests: IntegrationTestCase {
    func testReadingAheadWhileABatchIsSent_keepsEachKeysOrder_publishesEachChangeOnce_andLetsItsConnectionGoWhenIdle() throws {
        let items = WatchedTable(
            name: "items", changeColumns: ["n"],
            atomicDataQuery: "SELECT id, n FROM items WHERE id = $PRIMARY_KEY",
            publishEndpoint: "/api/v1/items/atomic-data")
        // Small full batches and a slow ingestor: every batch is sent long enough for the next
        // one to be read meanwhile, many times over.
        let p = try startPipeline(schemaSQL: "CREATE TABLE items (id integer PRIMARY KEY, n integer NOT NULL);", tables: [items]) { config in
            config.service.batchSize = 10
            config.service.maxConcurrentPublishes = 5
        }
        try p.ingestor.setControl(["delay": 0.03])
        let keys = 200, rounds = 5
        let readers = "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'atomic-data-publisher-reader/items@%'"
        var readerSeen = 0

        // 200 inserts, then 5 rounds of an increment of every key, committed while the worker
        // publishes (the reads ahead see rows of keys being sent, and must leave them out).
        try p.database.execute("INSERT INTO items (id, n) SELECT g, 0 FROM generate_series(1, $1::int) g", [String(keys)])
        for _ in 1...rounds {
            try p.database.execute("UPDATE items SET n = n + 1")
            readerSeen = max(readerSeen, Int(try p.database.value(readers) ?? "0") ?? 0)
        }
        let changes = keys * (rounds + 1)

        var requests: [RecordedRequest] = []
        try waitUntil(timeout: 120, "every key's last payload carries n = \(rounds) and items_changes is empty") {
            readerSeen = max(readerSeen, Int(try p.database.value(readers) ?? "0") ?? 0)
            requests = try p.ingestor.requests()
            var last: [String: Int] = [:]
            for request in requests {
                if let key = request.body["primary_key"]?.string, let n = request.body["atomic_data"]?[0]?["n"]?.int { last[key] = n }
            }
            return try p.database.rowCount("items_changes") == 0 && last.count == keys && last.values.allSatisfy { $0 == rounds }
        }
        XCTAssertEqual(readerSeen, 1, "the worker read ahead on its second connection while it drained (one, named for the table)")

        XCTAssertEqual(Set(requests.compactMap { $0.body["primary_key"]?.string }).count, keys)
        assertEachKeysPayloadsInCommitOrder(requests)
        for request in requests { XCTAssertEqual(request.status, 200, "\(request)") }
        try waitUntil("the worker's stats report \(changes) changes published, each once") {
            p.worker.latestStats()?["changes_published"] == .number(Double(changes))
        }
        // Idle: the second connection is let go (the worker's own session stays).
        try waitUntil(timeout: 15, "the read-ahead connection is closed once the table is idle") {
            try p.database.value(readers) == "0"
        }
        print("ReadAheadTests: \(changes) changes to \(keys) keys -> \(requests.count) requests; read-ahead connection seen: \(readerSeen)")
    }
}
