import XCTest

@testable import PublisherCLI

/// The backfill command's progress arithmetic and text, one expectation per line.
final class BackfillMeterTests: XCTestCase {
    private let meter = BackfillMeter(total: 200_000, totalIsEstimate: false, doneAtStart: 0, startedAt: 100)

    func testReading_rateAndETA_overThisRun() {
        XCTAssertEqual(meter.reading(done: 50_000, now: 110), .init(done: 50_000, total: 200_000, rate: 5_000, eta: 30, fraction: 0.25))
    }

    func testReading_beforeAnyTime_hasNoRateAndNoETA() {
        XCTAssertEqual(meter.reading(done: 0, now: 100), .init(done: 0, total: 200_000, rate: 0, eta: nil, fraction: 0))
    }

    func testReading_rowsInsertedMeanwhile_neverPassAHundredPercent() {
        XCTAssertEqual(meter.reading(done: 201_000, now: 140).fraction, 1)
    }

    func testReading_aResume_countsOnlyThisRunsRowsInTheRate() {
        let resumed = BackfillMeter(total: 200_000, totalIsEstimate: false, doneAtStart: 150_000, startedAt: 100)
        XCTAssertEqual(resumed.reading(done: 160_000, now: 110).rate, 1_000)
    }

    func testLine_namesDoneTotalPercentRateAndETA() {
        XCTAssertEqual(meter.line(table: "public.items", done: 50_000, now: 110), "backfill public.items: 50000/200000 rows (25.0%), 5000 rows/s, ETA 30 s")
    }

    func testLine_anEstimatedTotal_isMarked() {
        let estimated = BackfillMeter(total: 9_000_000, totalIsEstimate: true, doneAtStart: 0, startedAt: 0)
        XCTAssertEqual(estimated.line(table: "t", done: 0, now: 0), "backfill t: 0/~9000000 rows (0.0%), 0 rows/s, ETA unknown")
    }

    func testBar_forATerminal() {
        XCTAssertEqual(meter.bar(done: 50_000, now: 110, width: 20), "[=====>              ] 50,000/200,000  25.0%  5,000 rows/s  ETA 0:30")
    }

    func testBar_whenDone_isFull() {
        XCTAssertEqual(meter.bar(done: 200_000, now: 140, width: 10), "[==========] 200,000/200,000  100.0%  5,000 rows/s  ETA 0:00")
    }

    func testDuration_hoursMinutesSeconds() {
        XCTAssertEqual(BackfillMeter.duration(3_731), "1:02:11")
        XCTAssertEqual(BackfillMeter.duration(nil), "--:--")
    }

    func testPacer_waitsSoThatTheAverageStaysAtTheRate() {
        XCTAssertEqual(BackfillPacer(rowsPerSecond: 1_000).delay(rowsThisRun: 2_000, elapsed: 1.5), 0.5)
        XCTAssertEqual(BackfillPacer(rowsPerSecond: 1_000).delay(rowsThisRun: 2_000, elapsed: 3), 0)
        XCTAssertEqual(BackfillPacer(rowsPerSecond: nil).delay(rowsThisRun: 2_000, elapsed: 0), 0)
    }

    func testPacer_chunkIsAtMostAQuarterSecondOfRows() {
        XCTAssertEqual(BackfillPacer(rowsPerSecond: 4_000).chunkSize(batch: 5_000), 1_000)
        XCTAssertEqual(BackfillPacer(rowsPerSecond: 2).chunkSize(batch: 5_000), 1)
        XCTAssertEqual(BackfillPacer(rowsPerSecond: nil).chunkSize(batch: 5_000), 5_000)
    }

    func testPacer_parsesRowsPerSecond() {
        XCTAssertEqual(BackfillPacer.parse("2000/s"), 2_000)
        XCTAssertEqual(BackfillPacer.parse("2000"), 2_000)
        XCTAssertNil(BackfillPacer.parse("0/s"))
        XCTAssertNil(BackfillPacer.parse("fast"))
    }
}
