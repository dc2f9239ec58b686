import XCTest
@testable import TableWorker

/// The worker loop's next step, one rule per test.
final class WorkerLoopTests: XCTestCase {
    private func facts(_ change: (inout WorkerLoop.Facts) -> Void = { _ in }) -> WorkerLoop.Facts {
        var f = WorkerLoop.Facts(now: 100, connected: true, leaseHeld: true, leading: true, partitioned: false, mayPublish: true)
        change(&f)
        return f
    }

    func testWithoutASession_reconnectsFirst_whateverElseHolds() {
        XCTAssertEqual(WorkerLoop.next(facts { $0.connected = false; $0.leaseHeld = false }), .reconnect)
    }

    func testWithoutTheLease_triesForIt() {
        XCTAssertEqual(WorkerLoop.next(facts { $0.leaseHeld = false; $0.leading = false }), .takeLease)
    }

    func testWhileTheSupervisorReadsNothing_aHolderLetsTheLeaseGo_andNobodyTriesForIt() {
        XCTAssertEqual(WorkerLoop.next(facts { $0.supervisorSilent = true }), .releaseLease)
        XCTAssertEqual(WorkerLoop.next(facts { $0.supervisorSilent = true; $0.leaseHeld = false; $0.leading = false }), .pause(1))
        XCTAssertEqual(WorkerLoop.next(facts { $0.supervisorSilent = true; $0.connected = false }), .reconnect)
    }

    func testAfterHandingAPartitionOver_waitsOutTheCoolDownBeforeTryingAgain() {
        XCTAssertEqual(WorkerLoop.next(facts { $0.leaseHeld = false; $0.cooldownUntil = 103 }), .pause(3))
        XCTAssertEqual(WorkerLoop.next(facts { $0.leaseHeld = false; $0.cooldownUntil = 100 }), .takeLease)
    }

    func testAPartitionedLeader_looksAtTheSpread_whenItIsTime() {
        XCTAssertEqual(WorkerLoop.next(facts { $0.partitioned = true; $0.nextBalanceAt = 100 }), .balancePartitions)
        XCTAssertEqual(WorkerLoop.next(facts { $0.partitioned = true; $0.nextBalanceAt = 101 }), .processBatch)
        XCTAssertEqual(WorkerLoop.next(facts { $0.nextBalanceAt = 0 }), .processBatch, "a whole table has no spread to look at")
    }

    func testDuringTheFence_readsNothing_andWaitsASecondAtATime() {
        XCTAssertEqual(WorkerLoop.next(facts { $0.mayPublish = false; $0.fenceRemaining = 7 }), .pause(1))
        XCTAssertEqual(WorkerLoop.next(facts { $0.mayPublish = false; $0.fenceRemaining = 0.25 }), .pause(0.25))
    }

    func testAnOpenBreaker_readsNothing_untilItMayProbe() {
        XCTAssertEqual(WorkerLoop.next(facts { $0.breakerWait = 30 }), .pause(1))
        XCTAssertEqual(WorkerLoop.next(facts { $0.breakerWait = 0 }), .processBatch)
    }

    func testAfterABatch_aTableProblemWaits_workReadsOnAtOnce_andNothingSleeps() {
        XCTAssertEqual(WorkerLoop.afterBatch(processed: 0, tableProblem: true), .pause(5))
        XCTAssertEqual(WorkerLoop.afterBatch(processed: 3, tableProblem: false), .next)
        XCTAssertEqual(WorkerLoop.afterBatch(processed: 0, tableProblem: false), .sleepUntilChange)
    }

    func testPolling_doublesFromTenMilliseconds_upToTheInterval() {
        XCTAssertEqual(WorkerLoop.pollDelay(after: 0, pollingInterval: 10), 0.01)
        XCTAssertEqual(WorkerLoop.pollDelay(after: 0.01, pollingInterval: 10), 0.02)
        XCTAssertEqual(WorkerLoop.pollDelay(after: 8, pollingInterval: 10), 10)
    }
}
