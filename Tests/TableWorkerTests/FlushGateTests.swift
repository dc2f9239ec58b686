import XCTest
@testable import TableWorker

/// The WAL stream's INSERTs commit asynchronously; what decides how far the slot may be confirmed
/// (WalStreamer's invariant: never before the keys up to it are durable in T_changes).
final class FlushGateTests: XCTestCase {
    func testAWrittenBatch_isConfirmable_onlyOnceTheWALIsFlushedPastItsCommit() {
        var gate = FlushGate()
        gate.written(upTo: 1_000, committedBefore: 1_200)
        XCTAssertEqual(gate.confirmable, 0)
        gate.flushed(upTo: 1_199)
        XCTAssertEqual(gate.confirmable, 0, "flushed short of the INSERT's commit")
        gate.flushed(upTo: 1_200)
        XCTAssertEqual(gate.confirmable, 1_000)
        XCTAssertFalse(gate.waiting)
    }

    func testBatchesAreReleasedInStreamOrder_aLaterFlushBoundNeverOvertakesAnEarlierOne() {
        var gate = FlushGate()
        gate.written(upTo: 1_000, committedBefore: 1_200)
        gate.written(upTo: 2_000, committedBefore: 2_200)
        gate.flushed(upTo: 1_500)
        XCTAssertEqual(gate.confirmable, 1_000)
        XCTAssertTrue(gate.waiting)
        gate.flushed(upTo: 2_200)
        XCTAssertEqual(gate.confirmable, 2_000)
    }

    func testPositionsReadAfterAnUnflushedBatch_withNothingOfOurs_waitForThatBatch() {
        var gate = FlushGate()
        gate.written(upTo: 1_000, committedBefore: 1_200)
        // Keepalives moved the read position on; no INSERT since.
        gate.written(upTo: 5_000, committedBefore: nil)
        XCTAssertEqual(gate.confirmable, 0, "a keepalive's position would skip the batch's keys if they were lost")
        gate.flushed(upTo: 1_200)
        XCTAssertEqual(gate.confirmable, 5_000)
    }

    func testWithNothingHeld_aPositionWithoutKeysIsConfirmableAtOnce_soAnIdleTableHoldsNoWAL() {
        var gate = FlushGate()
        gate.written(upTo: 7_000, committedBefore: nil)
        XCTAssertEqual(gate.confirmable, 7_000)
        XCTAssertFalse(gate.waiting)
    }

    func testAFlushSeenBeforeTheBatchIsRecorded_releasesIt_andTheConfirmablePositionNeverMovesBack() {
        var gate = FlushGate()
        gate.flushed(upTo: 3_000)
        gate.written(upTo: 2_000, committedBefore: 2_500)
        XCTAssertEqual(gate.confirmable, 2_000)
        gate.written(upTo: 1_500, committedBefore: nil)
        XCTAssertEqual(gate.confirmable, 2_000)
    }
}
