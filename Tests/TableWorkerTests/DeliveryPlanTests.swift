import Shared
import XCTest
@testable import TableWorker

/// The delivery rules of DESIGN.md section 5, one line each, on the pure plan (no clock, no I/O).
final class DeliveryPlanTests: XCTestCase {
    private let policy = DeliveryPolicy(maxRetries: 2, backoff: Backoff(initial: 1, maximum: 30), deadLetterAfter: 3)

    private func plan(_ items: [DeliveryItem], threshold: Int = 5, policy: DeliveryPolicy? = nil) -> DeliveryPlan {
        DeliveryPlan(items: items, policy: policy ?? self.policy, breaker: CircuitBreaker(failureThreshold: threshold, resetSeconds: 60))
    }

    private func items(_ n: Int) -> [DeliveryItem] {
        (0..<n).map { (i: Int) -> DeliveryItem in
            let first = Int64(i * 10 + 1)
            return DeliveryItem(ids: [first, first + 1])
        }
    }

    func testStart_sendsEveryKeyOnce() {
        var p = plan(items(3))
        XCTAssertEqual(p.started(now: 0, unit: 0.5), [.send([0, 1, 2])])
        XCTAssertEqual(p.inFlight, 3)
    }

    func test2xx_acknowledgesExactlyTheCoveredIds() {
        var p = plan(items(2))
        _ = p.started(now: 0, unit: 0.5)
        XCTAssertEqual(p.responded(1, .delivered, now: 1, unit: 0.5), [.acknowledge([11, 12])])
        XCTAssertEqual(p.responded(0, .delivered, now: 1, unit: 0.5), [.acknowledge([1, 2])])
        XCTAssertTrue(p.isFinished)
    }

    func test4xx_reschedulesItsOwnKeyOnly_andNeverBlocksTheOthers() {
        var p = plan(items(2))
        _ = p.started(now: 0, unit: 0.5)
        XCTAssertEqual(p.responded(0, .rejected("HTTP 400"), now: 1, unit: 0.5),
                       [.reschedule(item: 0, error: "HTTP 400", afterSeconds: 0.75, attemptsMade: 1, permanent: true)])
        XCTAssertEqual(p.responded(1, .delivered, now: 1, unit: 0.5), [.acknowledge([11, 12])])
        XCTAssertTrue(p.isFinished, "a 4xx is not retried in the batch")
    }

    func test4xx_deadLettersAfterThePermanentFailureThreshold() {
        var p = plan([DeliveryItem(ids: [5], attempts: 9, permanentFailures: 2)])
        _ = p.started(now: 0, unit: 0.5)
        XCTAssertEqual(p.responded(0, .rejected("HTTP 422"), now: 1, unit: 0.5), [.deadLetter(item: 0, error: "HTTP 422", attemptsMade: 1)])
    }

    func test4xx_afterAnOutage_isNotDeadLetteredAtOnce_becauseTransientTriesDoNotCount() {
        var p = plan([DeliveryItem(ids: [5], attempts: 40, permanentFailures: 0)])
        _ = p.started(now: 0, unit: 0.5)
        guard case .reschedule(_, _, _, _, permanent: true)? = p.responded(0, .rejected("HTTP 400"), now: 1, unit: 0.5).first else {
            return XCTFail("40 transient tries must not dead-letter the first 4xx")
        }
    }

    func testTransient_isRetriedInTheBatch_withFullJitterBackoff() {
        var p = plan(items(1))
        _ = p.started(now: 0, unit: 0.5)
        XCTAssertEqual(p.responded(0, .failed("HTTP 503", retryAfter: nil), now: 10, unit: 0.5), [])
        XCTAssertEqual(p.nextWake, 10.5)
        XCTAssertEqual(p.due(now: 10.4), [])
        XCTAssertEqual(p.due(now: 10.5), [.send([0])])
    }

    func testTransient_afterMaxRetries_isRescheduledWithEveryTryRecorded() {
        var p = plan(items(1))
        _ = p.started(now: 0, unit: 0.5)
        for t in [1.0, 10, 20] {
            _ = p.due(now: t)
            let actions = p.responded(0, .failed("timeout", retryAfter: nil), now: t, unit: 0.5)
            if t == 20 {
                XCTAssertEqual(actions, [.reschedule(item: 0, error: "timeout", afterSeconds: 0.75, attemptsMade: 3, permanent: false)])
            }
        }
        XCTAssertTrue(p.isFinished)
    }

    func testRetryAfter_isHonoured() {
        var p = plan(items(1))
        _ = p.started(now: 0, unit: 0.5)
        _ = p.responded(0, .failed("HTTP 429", retryAfter: 7), now: 100, unit: 0.5)
        XCTAssertEqual(p.nextWake, 107)
    }

    func testRetryAfterZero_isFlooredAtTheConfiguredBackoff() {
        var p = plan(items(1))
        _ = p.started(now: 0, unit: 0.5)
        _ = p.responded(0, .failed("HTTP 429", retryAfter: 0), now: 100, unit: 0.5)
        XCTAssertEqual(p.nextWake, 101)
    }

    func testRetryAfter_isCappedAtTheMaximumBackoff() {
        var p = plan(items(1))
        _ = p.started(now: 0, unit: 0.5)
        _ = p.responded(0, .failed("HTTP 503", retryAfter: 3600), now: 100, unit: 0.5)
        XCTAssertEqual(p.nextWake, 130)
    }

    func testNeverTwoInFlightForOneKey() {
        var p = plan(items(2))
        _ = p.started(now: 0, unit: 0.5)
        XCTAssertEqual(p.due(now: 1000), [], "in flight: not sent again, however late")
        _ = p.responded(0, .failed("HTTP 500", retryAfter: nil), now: 1, unit: 0)
        XCTAssertEqual(p.due(now: 1), [.send([0])])
        XCTAssertEqual(p.due(now: 2), [])
    }

    func testShutdownMidRound_acknowledgesOnlyWhatWasAnswered2xx() {
        var p = plan(items(3))
        _ = p.started(now: 0, unit: 0.5)
        XCTAssertEqual(p.responded(0, .delivered, now: 1, unit: 0.5), [.acknowledge([1, 2])])
        XCTAssertEqual(p.stopped(unit: 0.5), [], "keys 1 and 2 were not answered: nothing to acknowledge or record")
        XCTAssertTrue(p.isFinished)
    }

    func testShutdownDuringARetryWait_recordsTheTriesMade() {
        var p = plan(items(1))
        _ = p.started(now: 0, unit: 0.5)
        _ = p.responded(0, .failed("HTTP 502", retryAfter: nil), now: 1, unit: 0.5)
        XCTAssertEqual(p.stopped(unit: 0.5), [.reschedule(item: 0, error: "HTTP 502", afterSeconds: 0.75, attemptsMade: 1, permanent: false)])
    }

    func testBreakerOpens_failedKeysAreRescheduled_andUnsentKeysStayUntouched() {
        var p = plan(items(3), threshold: 1)
        XCTAssertEqual(p.started(now: 0, unit: 0.5), [.send([0, 1, 2])])
        let actions = p.responded(0, .failed("HTTP 503", retryAfter: nil), now: 1, unit: 0.5)
        XCTAssertEqual(actions, [.reschedule(item: 0, error: "HTTP 503", afterSeconds: 0.75, attemptsMade: 1, permanent: false)])
        XCTAssertEqual(p.notSent(1, now: 1, unit: 0.5), [])
        XCTAssertEqual(p.notSent(2, now: 1, unit: 0.5), [])
        XCTAssertTrue(p.isFinished, "keys 1 and 2 wait in the tracking table, untouched")
        XCTAssertEqual(p.breaker.reported, .open)
    }

    func testHalfOpenBreaker_sendsOneProbe_thenTheRestAfterItSucceeds() {
        var breaker = CircuitBreaker(failureThreshold: 1, resetSeconds: 10)
        breaker.recordTransientFailure(now: 0)
        var p = DeliveryPlan(items: items(3), policy: policy, breaker: breaker)
        XCTAssertEqual(p.started(now: 5, unit: 0.5), [], "open: nothing is sent")
        XCTAssertTrue(p.isFinished)
        p = DeliveryPlan(items: items(3), policy: policy, breaker: breaker)
        XCTAssertEqual(p.started(now: 10, unit: 0.5), [.send([0])])
        XCTAssertEqual(p.due(now: 10), [], "one probe at a time")
        _ = p.responded(0, .delivered, now: 11, unit: 0.5)
        XCTAssertEqual(p.due(now: 11), [.send([1, 2])])
    }

    func testKnownQueryFailure_isSettledWithoutSending_andCountsAsPermanent() {
        var items = items(2)
        items[0].knownFailure = .rejected("atomic data query failed: division by zero")
        var p = plan(items)
        XCTAssertEqual(p.started(now: 0, unit: 0.5), [
            .reschedule(item: 0, error: "atomic data query failed: division by zero", afterSeconds: 0.75, attemptsMade: 1, permanent: true),
            .send([1]),
        ])
    }

    func testStatementTimeoutInTheQuery_isTransient() {
        var items = items(1)
        items[0].knownFailure = .failed("canceling statement due to statement timeout", retryAfter: nil)
        var p = plan(items)
        XCTAssertEqual(p.started(now: 0, unit: 0.5), [
            .reschedule(item: 0, error: "canceling statement due to statement timeout", afterSeconds: 0.75, attemptsMade: 1, permanent: false),
        ])
    }

    func testQueryFailureClassification() {
        func c(_ state: String) -> QueryFailure { QueryFailure.classify(PostgresError(kind: .query, sqlState: state, message: "")) }
        XCTAssertEqual(c("57014"), .transient)
        XCTAssertEqual(c("40P01"), .transient)
        XCTAssertEqual(c("42501"), .table)
        XCTAssertEqual(c("42P01"), .table)
        XCTAssertEqual(c("42703"), .table)
        XCTAssertEqual(c("42883"), .table)
        XCTAssertEqual(c("22012"), .key)
        XCTAssertEqual(c("P0001"), .key)
    }
}
