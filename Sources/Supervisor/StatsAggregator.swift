// Per-table statistics kept across worker restarts: a worker reports cumulative counters for its
// own life; when it exits they are folded into `finished`, so totals never go backwards.

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif
import SharedCore

struct TableStats: Sendable {
    var finished = WorkerStats()
    var current: WorkerStats?

    /// Counters over every run; gauges from the current run only.
    var combined: WorkerStats {
        var s = current ?? WorkerStats()
        s.changesProcessed += finished.changesProcessed
        s.changesPublished += finished.changesPublished
        s.publishFailures += finished.publishFailures
        s.publishTimeouts += finished.publishTimeouts
        s.publishSuccesses += finished.publishSuccesses
        s.retries += finished.retries
        s.queryErrors += finished.queryErrors
        s.deadLettered += finished.deadLettered
        s.takeovers += finished.takeovers
        s.query = Self.merge(s.query, finished.query)
        s.publish = Self.merge(s.publish, finished.publish)
        s.batch = Self.merge(s.batch, finished.batch)
        if s.lastPublishAt == nil { s.lastPublishAt = finished.lastPublishAt }
        if current == nil {
            s.database = .unknown
            s.circuitBreaker = .unknown
            s.lease = .none
            s.leaseHeldSeconds = 0
            s.backlog = finished.backlog
            s.oldestChangeAgeSeconds = finished.oldestChangeAgeSeconds
            s.deadLetters = finished.deadLetters
            s.oldestDeadLetterAgeSeconds = finished.oldestDeadLetterAgeSeconds
            s.walRetainedBytes = finished.walRetainedBytes
            s.walConfirmedLagBytes = finished.walConfirmedLagBytes
            s.walSafeBytes = finished.walSafeBytes
            s.walStatus = finished.walStatus
            s.inFlight = 0
        }
        return s
    }

    mutating func received(_ stats: WorkerStats) {
        current = stats
    }

    /// The worker exited: keep its counters, forget its gauges (but remember the last backlog).
    mutating func workerExited() {
        guard let current else { return }
        var folded = combined
        folded.backlog = current.backlog
        folded.oldestChangeAgeSeconds = current.oldestChangeAgeSeconds
        folded.deadLetters = current.deadLetters
        folded.oldestDeadLetterAgeSeconds = current.oldestDeadLetterAgeSeconds
        folded.walRetainedBytes = current.walRetainedBytes
        folded.walConfirmedLagBytes = current.walConfirmedLagBytes
        folded.walSafeBytes = current.walSafeBytes
        folded.walStatus = current.walStatus
        finished = folded
        self.current = nil
    }

    private static func merge(_ a: LatencySummary, _ b: LatencySummary) -> LatencySummary {
        var m = LatencySummary()
        m.count = a.count + b.count
        m.sumSeconds = a.sumSeconds + b.sumSeconds
        m.maxSeconds = max(a.maxSeconds, b.maxSeconds)
        m.lastSeconds = a.count > 0 ? a.lastSeconds : b.lastSeconds
        return m
    }
}

/// What /health and /metrics show: built by the supervisor loop, read by the HTTP threads.
struct ServiceSnapshot: Sendable {
    struct Table: Sendable {
        /// The worker's name: the table's, or `table#index` for a partition.
        var name: String
        /// The watched table's name ("": the same as `name`), and the share of it this worker publishes.
        var table = ""
        var partition = TablePartition.whole
        var tableName: String { table.isEmpty ? name : table }
        var schema: String
        var state: String
        var pid: Int32?
        var restarts: Int
        var lastExit: String?
        var lastError: String?
        var stats: WorkerStats
        /// Seconds since the running worker last reported (it reports every second).
        var silentSeconds = 0.0
        var up: Bool { state == "running" }
        /// A running worker that has not reported for a few seconds: its figures are stale.
        var stalled: Bool { up && silentSeconds >= ServiceSnapshot.staleAfterSeconds }
    }

    var tables: [Table] = []
    /// `service.instance_id` (or the host name): which instance answers.
    var instance = ""
    var startedAt = Date()
    var malformedLines = 0
    var ready = false
    var stopping = false
    static let staleAfterSeconds = 3.0

    enum Health: String { case healthy, degraded, unhealthy }

    var health: Health {
        if tables.isEmpty || stopping { return .unhealthy }
        if tables.contains(where: { $0.state == "failed" }) { return .unhealthy }
        // A table that cannot be published (a revoked grant, a broken query) publishes nothing.
        if tables.contains(where: { $0.stats.tableProblem != nil }) { return .unhealthy }
        if !tables.contains(where: \.up) { return .unhealthy }
        if tables.contains(where: { !$0.up || $0.stalled || $0.stats.database != .up || $0.stats.circuitBreaker != .closed }) { return .degraded }
        // Requests that time out every time: retried for ever, delivered never.
        if tables.contains(where: { $0.stats.ingestorProblem != nil }) { return .degraded }
        return .healthy
    }

    /// One line for systemd's STATUS= and `status`.
    var summary: String {
        let running = tables.filter(\.up).count
        let published = tables.reduce(0) { $0 + $1.stats.changesPublished }
        let backlog = tables.reduce(0) { $0 + $1.stats.backlog }
        var text = "\(health.rawValue): \(running)/\(tables.count) workers running, \(published) changes published, backlog \(backlog)"
        let failed = tables.filter { $0.state == "failed" }.map(\.name)
        if !failed.isEmpty { text += ", failed: \(failed.joined(separator: ","))" }
        let standby = tables.filter { $0.up && $0.stats.lease == .standby }.map(\.name)
        if !standby.isEmpty { text += ", standby: \(standby.joined(separator: ","))" }
        return text
    }
}
