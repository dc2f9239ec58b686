// /livez and /readyz: the two questions an orchestrator asks, answered from the snapshot alone.
//
// Invariants:
// - Liveness says only "the process is alive and its supervisor loop turns" (the loop publishes
//   a snapshot every iteration, at least every 0.25 s). It never looks at the database, the
//   ingestor or the workers: restarting the process cures none of their outages, and a liveness
//   probe that failed during one would turn an outage into a restart loop.
// - Readiness says "it can publish now": every table's worker is running, connected to its
//   database, no table has failed and none reports a problem (a revoked grant, a broken query, a
//   session the server refuses).
//   It is what /health reports as `ready`.

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import SharedCore
#if canImport(Glibc)
import Glibc
#endif

struct ProbeResult: Equatable, Sendable {
    var ok: Bool
    /// Short and safe to show (no secrets): why the probe fails, or what it saw when it passes.
    var reason: String

    static func pass(_ reason: String) -> ProbeResult { ProbeResult(ok: true, reason: reason) }
    static func fail(_ reason: String) -> ProbeResult { ProbeResult(ok: false, reason: reason) }
}

enum Liveness {
    /// A loop that has not published a snapshot for this long is stuck (it turns every 0.25 s
    /// at the latest, and nothing in it blocks for seconds).
    static let staleAfterSeconds = 10.0

    static func decide(snapshotAgeSeconds age: Double, staleAfter: Double = staleAfterSeconds) -> ProbeResult {
        if age <= staleAfter {
            return .pass("the supervisor loop turned \(format(age)) s ago")
        }
        return .fail("the supervisor loop has not turned for \(format(age)) s (limit \(format(staleAfter)) s)")
    }

    private static func format(_ seconds: Double) -> String {
        formatFixed(max(0, seconds), decimals: 2)
    }
}

extension ServiceSnapshot {
    /// Ready to publish: not stopping, at least one table, every worker running with its
    /// database up, no table failed or with a problem. The first reason found wins, failed
    /// tables first.
    var readiness: ProbeResult {
        if stopping { return .fail("stopping") }
        if tables.isEmpty { return .fail("no watched tables") }
        if let t = tables.first(where: { $0.state == "failed" }) {
            return .fail("table \(t.name) failed" + (t.lastError.map { ": \($0)" } ?? ""))
        }
        // Before "worker starting": a worker the server refuses keeps starting, and the refusal
        // is the reason worth reading (which limit, what to change).
        if let t = tables.first(where: { $0.stats.databaseProblem != nil }), let problem = t.stats.databaseProblem {
            return .fail("table \(t.name): \(problem)")
        }
        if let t = tables.first(where: { !$0.up }) {
            return .fail("table \(t.name): worker \(t.state)")
        }
        if let t = tables.first(where: { $0.stats.tableProblem != nil }), let problem = t.stats.tableProblem {
            return .fail("table \(t.name): \(problem)")
        }
        if let t = tables.first(where: { $0.stats.database != .up }) {
            return .fail("table \(t.name): database \(t.stats.database.rawValue)")
        }
        return .pass("\(tables.count) of \(tables.count) workers running with their database up")
    }
}
