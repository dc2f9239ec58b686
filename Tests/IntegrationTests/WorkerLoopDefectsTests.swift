import Foundation
import Shared
import XCTest

/// Defects of the worker's loop found by review, each shown from the outside: a real supervisor,
/// a real PostgreSQL, the real ingestor.
extension DeliveryReliabilityTests {
    private func tableEntry(_ s: SupervisorProcess) -> JSON? {
        (try? s.health().body["components"]?["tables"]?["items"]) ?? nil
    }

    /// The capture trigger is dropped while a retry waits on Retry-After. Capture has stopped, which
    /// is exit 78 and a failed table (someone must decide), not a clean stop after which a
    /// restarted worker's setup silently recreated the trigger.
    func testATriggerDroppedDuringARetryWait_endsTheWorkerWith78_andTheTableIsFailed() throws {
        let database = try makeDatabase()
        try database.executeScript(itemsSQL(keys: 5))
        let ingestor = try startIngestor()
        let s = try startInstance(database, ingestor, table: items, instance: "solo") {
            $0.ingestor.maxRetries = 3
            $0.ingestor.maxRetryDelaySeconds = 30
        }
        try waitUntil(timeout: 30, "the worker leads") { self.tableEntry(s)?["lease"] == "leader" }
        try ingestor.setControl(["fail_keys": ["1": 503], "retry_after": 20])
        try database.execute("UPDATE items SET v = 1 WHERE id = 1")
        try waitUntil("the first try is answered 503 with Retry-After 20") { try ingestor.requests().contains { $0.status == 503 } }
        try database.execute("DROP TRIGGER atomic_data_publisher_capture ON items")
        try waitUntil(timeout: 15, "the table is marked failed") { self.tableEntry(s)?["state"] == "failed" }
        XCTAssertEqual(try database.count("SELECT count(*) FROM pg_trigger WHERE tgname = 'atomic_data_publisher_capture'"), 0,
                       "the trigger was not recreated behind the operator's back")
        XCTAssertEqual(try s.health().status, 503)
    }

    /// A database blip while nothing is in flight: the worker re-takes its own lease and publishes
    /// at once, instead of waiting the whole fence (12 s here) after its last request.
    func testADatabaseBlipWithNothingInFlight_costsNoFence() throws {
        let database = try makeDatabase()
        try database.executeScript(itemsSQL(keys: 5))
        let ingestor = try startIngestor()
        let s = try startInstance(database, ingestor, table: items, instance: "solo", ingestorTimeoutSeconds: 10)  // fence 12 s
        try waitUntil(timeout: 30, "the worker leads") { self.tableEntry(s)?["lease"] == "leader" }
        try database.execute("UPDATE items SET v = 1 WHERE id = 1")
        try waitUntil("the first change is published") { try self.sequences(ingestor)["1"] == [1] }
        try database.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE 'atomic-data-publisher/items@solo'")
        let cutAt = Date()
        try database.execute("UPDATE items SET v = 2 WHERE id = 1")
        try waitUntil(timeout: 30, "the next change is published") { try self.sequences(ingestor)["1"] == [1, 2] }
        let seconds = Date().timeIntervalSince(cutAt)
        print("database blip with nothing in flight: the next change was published \(String(format: "%.2f", seconds)) s after the session was cut (fence 12 s)")
        XCTAssertLessThan(seconds, 8, "no fence: none of this worker's requests could still be in flight")
    }

    /// `webhook-timestamp` is the time a request is sent, not the batch's start: a retry late in a
    /// batch would otherwise carry a timestamp minutes old, which receivers with the usual
    /// five-minute tolerance refuse (and a 4xx counts toward dead letters).
    func testARetryInsideABatch_isSignedAtTheTimeItIsSent() throws {
        let database = try makeDatabase()
        try database.executeScript(itemsSQL(keys: 5))
        let ingestor = try startIngestor()
        let s = try startInstance(database, ingestor, table: items, instance: "solo") {
            $0.ingestor.signingSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
            $0.ingestor.maxRetries = 3
            $0.ingestor.maxRetryDelaySeconds = 30
        }
        try waitUntil(timeout: 30, "the worker leads") { self.tableEntry(s)?["lease"] == "leader" }
        try ingestor.setControl(["fail_keys": ["1": 503], "retry_after": 3])
        try database.execute("UPDATE items SET v = 1 WHERE id = 1")
        try waitUntil("the first try is answered 503") { try ingestor.requests().contains { $0.status == 503 } }
        try ingestor.setControl(["fail_keys": [String: Int]()])
        try waitUntil(timeout: 20, "the retry is accepted") { try self.sequences(ingestor)["1"] == [1] }
        let tries = try ingestor.requests().filter { $0.body["primary_key"]?.string == "1" }
        XCTAssertEqual(tries.count, 2, "\(tries)")
        let stamps = tries.compactMap { $0.header("webhook-timestamp").flatMap { Int($0) } }
        XCTAssertEqual(stamps.count, 2)
        XCTAssertGreaterThanOrEqual((stamps.last ?? 0) - (stamps.first ?? 0), 2, "the retry is signed when sent, 3 s later: \(stamps)")
        XCTAssertEqual(tries.first?.header("Idempotency-Key"), tries.last?.header("Idempotency-Key"), "the same body under the same key")
    }
}
