import XCTest
@testable import SharedCore

/// poll(2) waits in whole milliseconds: a deadline under a millisecond away must be one short
/// sleep, not a run of poll(0) calls until it passes (the WAL stream's write window ends that way
/// hundreds of times a second).
final class PollTests: XCTestCase {
    func testASubMillisecondTimeout_roundsUpToOneMillisecond_notZero() {
        XCTAssertEqual(Poll.milliseconds(0.0004), 1)
        XCTAssertEqual(Poll.milliseconds(0.0049), 5)
        XCTAssertEqual(Poll.milliseconds(0.005), 5)
        XCTAssertEqual(Poll.milliseconds(0), 0)
        XCTAssertEqual(Poll.milliseconds(-1), 0)
    }

    func testWaitingForADeadlineUnderAMillisecondAway_pollsOnce() {
        // Counted as the stream counts them: waits until the deadline has passed.
        let deadline = monotonicSeconds() + 0.0008
        var polls = 0
        while monotonicSeconds() < deadline, polls < 1_000 {
            _ = Poll.wait(readable: [], timeout: deadline - monotonicSeconds())
            polls += 1
        }
        XCTAssertLessThanOrEqual(polls, 2)
    }
}
