import XCTest
@testable import TableWorker

/// What a worker keeps for a supervisor that does not read, one rule per test.
final class StatsOutboxTests: XCTestCase {
    private func line(_ text: String) -> [UInt8] { Array((text + "\n").utf8) }

    /// Everything `outbox` hands out when the pipe takes it all, as text.
    private func drained(_ outbox: inout StatsOutbox) -> String {
        var out: [UInt8] = []
        while let chunk = outbox.next {
            out += chunk
            outbox.wrote(chunk.count)
        }
        return String(decoding: out, as: UTF8.self)
    }

    func testAPartlyWrittenLine_isFinishedBeforeAnythingElse_evenANewerStatsLine() {
        var o = StatsOutbox(now: 0)
        o.enqueue(line("stats 1"), isStats: true)
        o.wrote(3)
        o.enqueue(line("stats 2"), isStats: true)
        o.enqueue(line("fatal"), isStats: false)
        XCTAssertEqual(String(decoding: o.next!, as: UTF8.self), "ts 1\n")
        o.wrote(5)
        XCTAssertEqual(drained(&o), "stats 2\nfatal\n")
    }

    func testUnsentStats_keepOnlyTheLatest() {
        var o = StatsOutbox(now: 0)
        for i in 1...1000 { o.enqueue(line("stats \(i)"), isStats: true) }
        XCTAssertEqual(o.count, 1)
        XCTAssertEqual(drained(&o), "stats 1000\n")
    }

    func testStatsQueuedBeforeAnEvent_stayBeforeIt_andLaterOnesComeAfter() {
        var o = StatsOutbox(now: 0)
        o.enqueue(line("stats 1"), isStats: true)
        o.enqueue(line("ready"), isStats: false)
        o.enqueue(line("stats 2"), isStats: true)
        o.enqueue(line("stats 3"), isStats: true)
        XCTAssertEqual(drained(&o), "stats 1\nready\nstats 3\n")
    }

    func testEvents_areNeverCoalesced_andBounded_droppingTheOldestUnstarted() {
        var o = StatsOutbox(now: 0)
        o.enqueue(line("event 0"), isStats: false)
        o.wrote(2)
        for i in 1...StatsOutbox.maxEvents { o.enqueue(line("event \(i)"), isStats: false) }
        XCTAssertEqual(o.droppedEvents, 1)
        XCTAssertEqual(o.count, StatsOutbox.maxEvents)
        let text = drained(&o)
        XCTAssertTrue(text.hasPrefix("ent 0\nevent 2\n"), "the line begun is finished, the oldest unstarted one went: \(text)")
        XCTAssertTrue(text.hasSuffix("event \(StatsOutbox.maxEvents)\n"))
    }

    func testAnEmptyPipe_isNeverSilent_howeverLongNothingIsSent() {
        var o = StatsOutbox(now: 0)
        o.observed(unreadBytes: 0, at: 100)
        XCTAssertEqual(o.readerSilentSeconds(now: 200), 0)
    }

    func testBytesLeftUnread_countAsSilence_fromTheLastTimeAnyWasRead() {
        var o = StatsOutbox(now: 0)
        o.observed(unreadBytes: 0, at: 10)
        o.enqueue(line("stats 1"), isStats: true)
        o.wrote(8)
        o.observed(unreadBytes: 8, at: 11)
        XCTAssertEqual(o.readerSilentSeconds(now: 15), 5, "unread since 10, when the pipe was last seen empty")
        o.enqueue(line("stats 2"), isStats: true)
        o.wrote(8)
        o.observed(unreadBytes: 16, at: 16)
        XCTAssertEqual(o.readerSilentSeconds(now: 16), 6)
        o.observed(unreadBytes: 12, at: 17)
        XCTAssertEqual(o.readerSilentSeconds(now: 17), 0, "some was read: not silent, though the pipe is not empty")
        o.observed(unreadBytes: 12, at: 20)
        XCTAssertEqual(o.readerSilentSeconds(now: 20), 3)
    }
}
