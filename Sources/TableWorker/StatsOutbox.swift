// What a worker still has to write to the supervisor, and whether the supervisor reads it, as a
// pure value (times and byte counts passed in); SupervisorPipe performs the writes.
//
// Invariants:
// - Lines go out whole and in order: once the first byte of a line is written, the rest of it
//   goes before any byte of another line, so the supervisor never reads two lines interleaved.
// - Stats are cumulative, so an unsent stats line is worth nothing once a newer one exists: a new
//   stats line replaces the last queued one when nothing of it is written yet and no event is
//   queued behind it. A stats line queued before an event stays before it (the supervisor's
//   READY=1 then already shows the database up).
// - Events (ready, fatal) are never replaced. At most `maxEvents` wait (a worker sends one of
//   each in its life, so the bound only guards against a bug): past it the oldest unstarted one
//   goes, and is counted.
// - The supervisor is silent while bytes of ours sit in the pipe and none of them is read. A read
//   shows as the pipe holding fewer unread bytes than we left in it; an empty pipe is never
//   silent, however long nothing is sent.

struct StatsOutbox: Equatable, Sendable {
    static let maxEvents = 16

    private struct Line: Equatable, Sendable {
        var bytes: [UInt8]
        var isStats: Bool
    }

    private var queue: [Line] = []
    /// Bytes of `queue[0]` already written.
    private var writtenOfFirst = 0
    /// Events dropped past `maxEvents`.
    private(set) var droppedEvents = 0
    /// Unread bytes in the pipe as last seen, plus what was written since.
    private var unread = 0
    /// The last time the pipe was seen read (or empty).
    private var readAt: Double

    init(now: Double) {
        readAt = now
    }

    var isEmpty: Bool { queue.isEmpty }

    /// Lines waiting (the one partly written included).
    var count: Int { queue.count }

    mutating func enqueue(_ bytes: [UInt8], isStats: Bool) {
        let lastUnstarted = queue.count > 1 || (queue.count == 1 && writtenOfFirst == 0)
        if isStats, lastUnstarted, queue.last?.isStats == true {
            queue[queue.count - 1].bytes = bytes
            return
        }
        if !isStats, queue.count(where: { !$0.isStats }) >= Self.maxEvents {
            let firstUnstarted = writtenOfFirst > 0 ? 1 : 0
            if let index = queue[firstUnstarted...].firstIndex(where: { !$0.isStats }) {
                queue.remove(at: index)
                droppedEvents += 1
            }
        }
        queue.append(Line(bytes: bytes, isStats: isStats))
    }

    /// The bytes to write next: the rest of the line partly written, else the next line.
    var next: ArraySlice<UInt8>? {
        queue.first.map { $0.bytes[writtenOfFirst...] }
    }

    /// `count` bytes of `next` were written.
    mutating func wrote(_ count: Int) {
        guard count > 0, !queue.isEmpty else { return }
        writtenOfFirst += count
        unread += count
        if writtenOfFirst >= queue[0].bytes.count {
            queue.removeFirst()
            writtenOfFirst = 0
        }
    }

    /// The pipe holds `unreadBytes` not read yet, at `now`.
    mutating func observed(unreadBytes: Int, at now: Double) {
        if unreadBytes == 0 || unreadBytes < unread { readAt = now }
        unread = unreadBytes
    }

    /// How long bytes of ours have sat in the pipe with none of them read (0: being read, or empty).
    func readerSilentSeconds(now: Double) -> Double {
        unread > 0 ? max(0, now - readAt) : 0
    }
}
