import XCTest
@testable import TableWorker

final class CircuitBreakerTests: XCTestCase {
    func testClosed_permitsEverything() {
        var b = CircuitBreaker(failureThreshold: 3, resetSeconds: 10)
        XCTAssertNil(b.permits(now: 0))
        XCTAssertEqual(b.reported, .closed)
    }

    func testOpens_afterThresholdConsecutiveTransientFailures() {
        var b = CircuitBreaker(failureThreshold: 3, resetSeconds: 10)
        b.recordTransientFailure(now: 1)
        b.recordTransientFailure(now: 2)
        XCTAssertEqual(b.state, .closed)
        b.recordTransientFailure(now: 3)
        XCTAssertEqual(b.state, .open(until: 13))
        XCTAssertEqual(b.timesOpened, 1)
    }

    func testASuccess_resetsTheFailureCount() {
        var b = CircuitBreaker(failureThreshold: 2, resetSeconds: 10)
        b.recordTransientFailure(now: 1)
        b.recordSuccess()
        b.recordTransientFailure(now: 2)
        XCTAssertEqual(b.state, .closed)
    }

    func testOpen_permitsNothingUntilTheResetTime_thenOneProbe() {
        var b = CircuitBreaker(failureThreshold: 1, resetSeconds: 10)
        b.recordTransientFailure(now: 0)
        XCTAssertEqual(b.permits(now: 9.99), 0)
        XCTAssertEqual(b.waitTime(now: 4), 6)
        XCTAssertEqual(b.permits(now: 10), 1)
        XCTAssertEqual(b.state, .halfOpen)
        XCTAssertEqual(b.reported, .halfOpen)
    }

    func testHalfOpen_probeSuccess_closes() {
        var b = CircuitBreaker(failureThreshold: 1, resetSeconds: 10)
        b.recordTransientFailure(now: 0)
        _ = b.permits(now: 10)
        b.recordSuccess()
        XCTAssertEqual(b.state, .closed)
        XCTAssertNil(b.permits(now: 10))
    }

    func testHalfOpen_probeFailure_opensAgainForAnotherResetPeriod() {
        var b = CircuitBreaker(failureThreshold: 5, resetSeconds: 10)
        for t in 0..<5 { b.recordTransientFailure(now: Double(t)) }
        _ = b.permits(now: 20)
        b.recordTransientFailure(now: 20)
        XCTAssertEqual(b.state, .open(until: 30))
        XCTAssertEqual(b.timesOpened, 2)
    }
}
