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
}
