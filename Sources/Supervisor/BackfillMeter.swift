// Progress of `atomic-data-publisher backfill`, as pure arithmetic and text: the
// command feeds it counts and the clock, and prints what it renders. Rates and ETAs are over
// this run only (a resumed run does not count the earlier run's rows as fast ones).

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Shared
#if canImport(Glibc)
import Glibc
#endif

struct BackfillMeter {
    /// Rows the whole backfill covers (done before this run + still to do at its start).
    var total: Int
    /// True when `total` is the planner's estimate (a table too large to count at start).
    var totalIsEstimate: Bool
    /// Rows already done when this run started (a resume).
    var doneAtStart: Int
    var startedAt: Double

    struct Reading: Equatable {
        var done: Int
        var total: Int
        /// Rows per second over this run; 0 before any time has passed.
        var rate: Double
        /// Seconds left at `rate`; nil while unknown.
        var eta: Double?
        var fraction: Double
    }

    func reading(done: Int, now: Double) -> Reading {
        let total = max(self.total, done)   // rows inserted meanwhile: never past 100 %
        let elapsed = now - startedAt
        let rate = elapsed > 0 ? Double(done - doneAtStart) / elapsed : 0
        let eta = rate > 0 ? Double(total - done) / rate : nil
        return Reading(done: done, total: total, rate: rate, eta: eta, fraction: total > 0 ? Double(done) / Double(total) : 1)
    }

    /// For a terminal: `[=========>          ] 45,000/200,000  22.5%  8,532 rows/s  ETA 0:18`.
    func bar(done: Int, now: Double, width: Int = 30) -> String {
        let r = reading(done: done, now: now)
        let filled = min(width, Int(r.fraction * Double(width)))
        let bar = String(repeating: "=", count: filled) + (filled < width ? ">" + String(repeating: " ", count: width - filled - 1) : "")
        return "[\(bar)] \(Self.grouped(r.done))/\(totalText(r.total))  \(Self.percent(r.fraction))  \(Self.grouped(Int(r.rate))) rows/s  ETA \(Self.duration(r.eta))"
    }

    /// For a log or a pipe: `backfill public.devices: 45000/200000 rows (22.5%), 8532 rows/s, ETA 18 s`.
    func line(table: String, done: Int, now: Double) -> String {
        let r = reading(done: done, now: now)
        let eta = r.eta.map { "\(Int($0.rounded(.up))) s" } ?? "unknown"
        return "backfill \(table): \(r.done)/\(totalIsEstimate ? "~" : "")\(r.total) rows (\(Self.percent(r.fraction))), \(Int(r.rate)) rows/s, ETA \(eta)"
    }

    private func totalText(_ total: Int) -> String { (totalIsEstimate ? "~" : "") + Self.grouped(total) }

    static func percent(_ fraction: Double) -> String {
        formatFixed(min(1, max(0, fraction)) * 100, decimals: 1) + "%"
    }

    static func grouped(_ n: Int) -> String {
        let digits = String(abs(n))
        var out = ""
        for (i, ch) in digits.enumerated() {
            if i > 0 && (digits.count - i) % 3 == 0 { out += "," }
            out.append(ch)
        }
        return (n < 0 ? "-" : "") + out
    }

    /// `0:18`, `12:05`, `3:02:11`; `--:--` when unknown.
    static func duration(_ seconds: Double?) -> String {
        guard let seconds, seconds.isFinite else { return "--:--" }
        let s = Int(seconds.rounded(.up))
        let (h, m, sec) = (s / 3600, (s / 60) % 60, s % 60)
        return h > 0 ? "\(h):\(zeroPadded(m, width: 2)):\(zeroPadded(sec, width: 2))" : "\(m):\(zeroPadded(sec, width: 2))"
    }
}

/// `--rate N/s`: how long to wait before the next chunk so that this run's rows stay at or
/// below the rate on average.
struct BackfillPacer {
    var rowsPerSecond: Double?

    func delay(rowsThisRun: Int, elapsed: Double) -> Double {
        guard let rate = rowsPerSecond, rate > 0 else { return 0 }
        return max(0, Double(rowsThisRun) / rate - elapsed)
    }

    /// With a rate, a chunk holds at most a quarter of a second's rows, so the rate is smooth
    /// rather than one burst per `--batch`.
    func chunkSize(batch: Int) -> Int {
        guard let rate = rowsPerSecond else { return batch }
        return max(1, min(batch, Int(rate / 4)))
    }

    /// `500`, `500/s`: rows per second.
    static func parse(_ text: String) -> Double? {
        var t = text.trimmingWhitespace()
        if t.hasSuffix("/s") { t.removeLast(2) }
        guard let value = Double(t), value > 0, value.isFinite else { return nil }
        return value
    }
}
