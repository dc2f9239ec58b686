import XCTest
@testable import Supervisor
@testable import Shared

final class ProbesTests: XCTestCase {
    private func table(_ name: String, state: String = "running", database: DatabaseState = .up, breaker: BreakerState = .closed,
                       lastError: String? = nil, problem: String? = nil) -> ServiceSnapshot.Table {
        var s = WorkerStats()
        s.database = database
        s.circuitBreaker = breaker
        s.tableProblem = problem
        return .init(name: name, schema: "public", state: state, pid: state == "running" ? 42 : nil, restarts: 0,
                     lastExit: nil, lastError: lastError, stats: s)
    }

    private func snapshot(_ tables: [ServiceSnapshot.Table], stopping: Bool = false) -> ServiceSnapshot {
        var s = ServiceSnapshot()
        s.tables = tables
        s.stopping = stopping
        return s
    }

    func testLiveness_whenTheLoopTurnedRecently_isAlive() {
        XCTAssertTrue(Liveness.decide(snapshotAgeSeconds: 0.2).ok)
    }

    func testLiveness_whenTheLoopIsStuck_isNotAlive() {
        XCTAssertFalse(Liveness.decide(snapshotAgeSeconds: Liveness.staleAfterSeconds + 0.1).ok)
    }

    func testReadiness_whenEveryWorkerRunsWithItsDatabaseUp_isReady() {
        XCTAssertTrue(snapshot([table("a"), table("b")]).readiness.ok)
    }

    func testReadiness_whenTheIngestorBreakerIsOpen_staysReady() {
        XCTAssertTrue(snapshot([table("a", breaker: .open)]).readiness.ok)
    }

    func testReadiness_whenADatabaseIsDown_isNotReady() {
        XCTAssertEqual(snapshot([table("a"), table("b", database: .down)]).readiness, .fail("table b: database down"))
    }

    func testReadiness_beforeTheWorkerReportsItsDatabase_isNotReady() {
        XCTAssertEqual(snapshot([table("a", database: .unknown)]).readiness, .fail("table a: database unknown"))
    }

    func testReadiness_whenATableReportsAProblem_isNotReady_andSaysWhich() {
        XCTAssertEqual(snapshot([table("a"), table("b", problem: "permission denied for table b")]).readiness,
                       .fail("table b: permission denied for table b"))
    }

    func testReadiness_whenTheServerRefusesAStartingWorkersSession_saysWhyRatherThanStarting() {
        var refused = table("b", state: "starting", database: .down)
        refused.stats.databaseProblem = "PostgreSQL refused this worker's session, too many connections (SQLSTATE 53300): ..."
        XCTAssertEqual(snapshot([table("a", state: "starting"), refused]).readiness,
                       .fail("table b: PostgreSQL refused this worker's session, too many connections (SQLSTATE 53300): ..."))
        XCTAssertEqual(snapshot([table("a"), refused]).health, .degraded)
    }

    func testReadiness_whenAWorkerIsBackingOff_isNotReady() {
        XCTAssertEqual(snapshot([table("a", state: "backing_off", database: .unknown)]).readiness, .fail("table a: worker backing_off"))
    }

    func testReadiness_whenATableFailed_isNotReady_andSaysWhy() {
        XCTAssertEqual(snapshot([table("a", state: "backing_off"), table("b", state: "failed", lastError: "no such table")]).readiness,
                       .fail("table b failed: no such table"))
    }

    func testReadiness_whenStoppingOrWithoutTables_isNotReady() {
        XCTAssertFalse(snapshot([table("a")], stopping: true).readiness.ok)
        XCTAssertFalse(snapshot([]).readiness.ok)
    }

    func testHealthJSON_carriesReadiness() {
        let body = snapshot([table("a", database: .down)]).healthJSON
        XCTAssertTrue(body.contains("\"ready\":false"), body)
        XCTAssertTrue(body.contains("\"ready_reason\":\"table a: database down\""), body)
    }

    func testProbeJSON() {
        XCTAssertEqual(probeJSON(.fail("stopping"), okStatus: "ready", failStatus: "not_ready"), #"{"reason":"stopping","status":"not_ready"}"#)
    }
}
