import XCTest
@testable import Supervisor
@testable import Shared

final class StatsAggregatorTests: XCTestCase {
    private func stats(published: Int, backlog: Int = 0) -> WorkerStats {
        var s = WorkerStats()
        s.changesPublished = published
        s.changesProcessed = published
        s.backlog = backlog
        s.database = .up
        return s
    }

    func testCountersSurviveAWorkerRestart() {
        var t = TableStats()
        t.received(stats(published: 10))
        t.received(stats(published: 25, backlog: 4))
        t.workerExited()
        XCTAssertEqual(t.combined.changesPublished, 25)
        XCTAssertEqual(t.combined.backlog, 4, "the last known backlog is kept while no worker runs")
        t.received(stats(published: 3))
        XCTAssertEqual(t.combined.changesPublished, 28)
        XCTAssertEqual(t.combined.database, .up)
    }

    func testWorkerExitWithoutStats_changesNothing() {
        var t = TableStats()
        t.workerExited()
        XCTAssertEqual(t.combined.changesPublished, 0)
        XCTAssertEqual(t.combined.database, .unknown)
    }

    func testHealth_isDegradedWhileAWorkerBacksOff_andUnhealthyWhenATableFailed() {
        var s = ServiceSnapshot()
        let up = stats(published: 1)
        s.tables = [.init(name: "a", schema: "public", state: "running", pid: 1, restarts: 0, stats: up),
                    .init(name: "b", schema: "public", state: "running", pid: 2, restarts: 0, stats: up)]
        XCTAssertEqual(s.health, .healthy)
        s.tables[1].state = "backing_off"
        XCTAssertEqual(s.health, .degraded)
        s.tables[1].state = "failed"
        XCTAssertEqual(s.health, .unhealthy)
    }

    func testHealth_isUnhealthy_whileATableCannotBePublished_andShowsTheProblem() {
        var s = ServiceSnapshot()
        var blocked = stats(published: 1)
        blocked.tableProblem = "the atomic data query fails for every key: grant SELECT"
        s.tables = [.init(name: "a", schema: "public", state: "running", pid: 1, restarts: 0, stats: blocked)]
        XCTAssertEqual(s.health, .unhealthy)
        XCTAssertTrue(s.healthJSON.contains("\"problem\":\"the atomic data query fails for every key: grant SELECT\""), s.healthJSON)
    }

    func testPrometheusText_namesEveryFamilyWithPrefix_andEscapesLabels() {
        var s = ServiceSnapshot()
        s.tables = [.init(name: "we\"ird", schema: "public", state: "running", pid: 1, restarts: 2, stats: stats(published: 5))]
        let text = s.prometheusText
        XCTAssertTrue(text.contains("atomic_data_publisher_changes_published_total{table=\"we\\\"ird\"} 5\n"))
        XCTAssertTrue(text.contains("atomic_data_publisher_worker_restarts_total{table=\"we\\\"ird\"} 2\n"))
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            XCTAssertTrue(line.hasPrefix("atomic_data_publisher_"), String(line))
        }
    }

    /// A WAL table's slot headroom: with a cap (max_slot_wal_keep_size) its safe bytes and status;
    /// without one, no safe-bytes sample (the alert rules tell the two apart by that), and null in
    /// /health; a trigger-mode table has neither.
    func testWALSlotHeadroom_isInHealthAndPrometheus_andWithoutACapHasNoSafeBytesSample() {
        var capped = stats(published: 0), uncapped = stats(published: 0)
        capped.walRetainedBytes = 300 << 20
        capped.walConfirmedLagBytes = 0
        capped.walSafeBytes = 700 << 20
        capped.walStatus = "extended"
        uncapped.walRetainedBytes = 5 << 20
        uncapped.walConfirmedLagBytes = 0
        uncapped.walStatus = "reserved"
        var s = ServiceSnapshot()
        s.tables = [.init(name: "capped", schema: "public", state: "running", pid: 1, restarts: 0, stats: capped),
                    .init(name: "uncapped", schema: "public", state: "running", pid: 2, restarts: 0, stats: uncapped),
                    .init(name: "triggered", schema: "public", state: "running", pid: 3, restarts: 0, stats: stats(published: 0))]
        let text = s.prometheusText
        XCTAssertTrue(text.contains("atomic_data_publisher_wal_safe_bytes{table=\"capped\"} 734003200\n"), text)
        XCTAssertFalse(text.contains("atomic_data_publisher_wal_safe_bytes{table=\"uncapped\"}"), text)
        XCTAssertTrue(text.contains("atomic_data_publisher_wal_status{table=\"capped\",status=\"extended\"} 1\n"), text)
        XCTAssertTrue(text.contains("atomic_data_publisher_wal_status{table=\"uncapped\",status=\"reserved\"} 1\n"), text)
        XCTAssertFalse(text.contains("{table=\"triggered\",status="), text)
        let health = s.healthJSON
        XCTAssertTrue(health.contains("\"wal_safe_bytes\":734003200"), health)
        XCTAssertTrue(health.contains("\"wal_safe_bytes\":null"), health)
        XCTAssertTrue(health.contains("\"wal_status\":\"extended\""), health)

        var aggregator = TableStats()
        aggregator.received(capped)
        aggregator.workerExited()
        XCTAssertEqual(aggregator.combined.walSafeBytes, 700 << 20, "the last figures outlive the worker, as the retained bytes do")
        XCTAssertEqual(aggregator.combined.walStatus, "extended")
    }
}
