import Foundation
import Shared
import XCTest

/// A rolling upgrade: during a deploy, instances of this release and of the one before (built by
/// dev/build-previous from the commit in dev/previous-release) run side by side on one table.
/// The advisory-lock lease is the gate both honour: they never publish the table at once, the old
/// one never sends after the new one took the lease with an epoch, and the new one's lease expiry
/// never mistakes a live old leader (which does not renew the lease row) for a paused one.
extension DeliveryReliabilityTests {
    private var previousRelease: URL? {
        TestEnvironment.environment["ADP_PREVIOUS_BIN_DIR"].flatMap { $0.isEmpty ? nil : URL(fileURLWithPath: $0) }
    }

    func testARollingUpgrade_oldAndNewInstancesTakeTurns_neverPublishTogether_andNoKeyGoesBackwards() throws {
        guard let previous = previousRelease else {
            throw XCTSkip("needs the previous release's binaries: ADP_PREVIOUS_BIN_DIR=$(./dev/build-previous) (./dev/test sets it)")
        }
        let keys = 100
        let database = try makeDatabase()
        try database.executeScript(itemsSQL(keys: keys))
        let ingestor = try startIngestor()
        try ingestor.setControl(["enforce_epoch": true])
        addDiagnostics { Self.trackingTableSummary(database, self.items) }
        func lease(_ s: SupervisorProcess) -> String? { (try? s.health().body["components"]?["tables"]?["items"]?["lease"]?.string) ?? nil }

        let old = try startInstance(database, ingestor, table: items, instance: "old", previousRelease: previous)
        try waitUntil(timeout: 30, "the previous release leads") { lease(old) == "leader" }
        let new = try startInstance(database, ingestor, table: items, instance: "new") { $0.service.leaseExpirySeconds = 6 }
        try waitUntil(timeout: 30, "this release stands by") { lease(new) == "standby" }
        let writer = BackgroundWriter(database: database.config, name: "upgrade-writer", rounds: 600, perRound: 5, keys: keys, pauseMicroseconds: 20_000)

        // Longer than the new instance's lease expiry: a live old leader is not taken for a paused one.
        let since = Date()
        try waitUntil(timeout: 30, "the old leader keeps the lease past the expiry") { Date().timeIntervalSince(since) > 10 }
        XCTAssertEqual(lease(old), "leader")
        XCTAssertEqual(lease(new), "standby")

        // The old host dies: this release takes over, with epochs.
        let oldWorker = try old.workerPIDs()["items"]
        old.process.send(SIGKILL)
        if let oldWorker { kill(oldWorker, SIGKILL) }
        try waitUntil(timeout: 30, "this release publishes") { try ingestor.requests().contains { $0.header("X-Publisher-Instance") == "new" } }
        // The old release comes back (a host not upgraded yet) and stands by.
        let oldAgain = try startInstance(database, ingestor, table: items, instance: "old-again", previousRelease: previous)
        try waitUntil(timeout: 30, "the returning old instance stands by") { lease(oldAgain) == "standby" }
        // This release is stopped for its own upgrade: it hands the lease to the old one.
        new.process.send(SIGTERM)
        try waitUntil(timeout: 30, "the old release leads again") { lease(oldAgain) == "leader" }
        try waitUntil(timeout: 120, "the writer is done") { writer.isDone }
        XCTAssertNil(writer.error)
        try database.execute("UPDATE items SET v = v + 1 WHERE id <= 20")  // published by the old release again
        try waitUntilEveryFinalStateArrived(database, ingestor, timeout: 120)

        let order = try publishingOrder(ingestor)
        XCTAssertEqual(order, ["old", "new", "old-again"], "one publisher at a time, in turn")
        _ = try assertNoKeyWentBackwards(ingestor)
        let requests = try ingestor.requests()
        XCTAssertFalse(requests.contains { $0.status == 409 }, "nothing was refused as stale")
        XCTAssertTrue(requests.filter { $0.header("X-Publisher-Instance") == "new" }.allSatisfy { $0.header("X-Publisher-Epoch") != nil })
        XCTAssertTrue(requests.filter { $0.header("X-Publisher-Instance") != "new" }.allSatisfy { $0.header("X-Publisher-Epoch") == nil },
                      "the previous release sends no epoch (an ingestor accepts requests without one)")
    }
}
