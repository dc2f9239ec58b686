// Worker → supervisor messages (DESIGN.md section 6): one JSON object per line on the worker's
// stdout, at most `WorkerMessage.maxLineBytes`. Counters are cumulative so a lost line loses
// nothing; the supervisor keeps totals across a worker's restarts.

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

public struct LatencySummary: Codable, Sendable, Equatable {
    public var count: Int = 0
    public var sumSeconds: Double = 0
    public var maxSeconds: Double = 0
    public var lastSeconds: Double = 0

    public init() {}

    public mutating func record(_ seconds: Double) {
        count += 1
        sumSeconds += seconds
        maxSeconds = max(maxSeconds, seconds)
        lastSeconds = seconds
    }

    public var averageSeconds: Double { count == 0 ? 0 : sumSeconds / Double(count) }

    enum CodingKeys: String, CodingKey {
        case count, sumSeconds = "sum_seconds", maxSeconds = "max_seconds", lastSeconds = "last_seconds"
    }
}

/// The circuit breaker as a worker reports it (`unknown` while no worker runs).
public enum BreakerState: String, Codable, Sendable, Equatable {
    case closed, open, halfOpen = "half_open", unknown
}

/// A worker's hold on its table's lease.
public enum LeaseState: String, Codable, Sendable, Equatable {
    /// Publishing: this worker's session holds the lease.
    case leader
    /// Waiting: another session holds it (or the fence after taking it has not passed yet).
    case standby
    /// Not connected, or not tried yet.
    case none
}

/// A worker's database connection as it reports it (`unknown` while no worker runs).
public enum DatabaseState: String, Codable, Sendable, Equatable {
    case up, down, unknown
}

public struct WorkerStats: Codable, Sendable, Equatable {
    public var changesProcessed = 0
    public var changesPublished = 0
    public var publishFailures = 0
    /// Of `publishFailures`, the requests the ingestor did not answer within `ingestor.timeout_seconds`.
    public var publishTimeouts = 0
    /// Requests the ingestor acknowledged with a 2xx (one per key, covering one or more changes).
    public var publishSuccesses = 0
    public var retries = 0
    public var queryErrors = 0
    public var deadLettered = 0
    public var backlog = 0
    public var oldestChangeAgeSeconds = 0.0
    public var inFlight = 0
    /// Rows waiting in the dead-letter table, and the age of the oldest.
    public var deadLetters = 0
    public var oldestDeadLetterAgeSeconds = 0.0
    public var query = LatencySummary()
    public var publish = LatencySummary()
    public var batch = LatencySummary()
    public var circuitBreaker = BreakerState.closed
    public var database = DatabaseState.down
    public var lastPublishAt: String?
    /// Set while the table cannot be published at all (a revoked grant, a dropped column in the
    /// atomic data query): its changes wait in the tracking table. One sentence with the fix.
    public var tableProblem: String?
    /// Set while the ingestor keeps answering no request within `ingestor.timeout_seconds`:
    /// one sentence with the value and the fix; cleared by the next answer.
    public var ingestorProblem: String?
    /// Set while PostgreSQL refuses this worker's session (too many connections): one sentence
    /// with the numbers and what to change; cleared once connected.
    public var databaseProblem: String?
    public var lease = LeaseState.none
    /// The instance holding the lease, when known (this one when leading).
    public var leaseHolder: String?
    /// Seconds since this worker took the lease (0 unless leading).
    public var leaseHeldSeconds = 0.0
    /// How many times this worker took the lease after another had it.
    public var takeovers = 0
    /// `capture = "wal"`: the WAL the table's replication slot holds back (from its restart
    /// position to the server's WAL end), and how far its confirmed position is behind that end.
    /// nil in trigger mode, and in the workers of partitions other than 0.
    public var walRetainedBytes: Int?
    public var walConfirmedLagBytes: Int?
    /// `capture = "wal"`: the slot's headroom before `max_slot_wal_keep_size` invalidates it (nil
    /// without a cap: `safe_wal_size` is NULL), and its `wal_status`.
    public var walSafeBytes: Int?
    public var walStatus: String?

    public init() {}

    enum CodingKeys: String, CodingKey {
        case changesProcessed = "changes_processed", changesPublished = "changes_published"
        case publishFailures = "publish_failures", publishTimeouts = "publish_timeouts", publishSuccesses = "publish_successes", retries, queryErrors = "query_errors"
        case deadLettered = "dead_lettered", backlog, oldestChangeAgeSeconds = "oldest_change_age_seconds"
        case inFlight = "in_flight", deadLetters = "dead_letters", oldestDeadLetterAgeSeconds = "oldest_dead_letter_age_seconds", query, publish, batch, circuitBreaker = "circuit_breaker", database
        case lastPublishAt = "last_publish_at", tableProblem = "table_problem", ingestorProblem = "ingestor_problem", databaseProblem = "database_problem"
        case lease, leaseHolder = "lease_holder", leaseHeldSeconds = "lease_held_seconds", takeovers
        case walRetainedBytes = "wal_retained_bytes", walConfirmedLagBytes = "wal_confirmed_lag_bytes"
        case walSafeBytes = "wal_safe_bytes", walStatus = "wal_status"
    }
}

public enum WorkerMessage: Sendable, Equatable {
    case ready(table: String, pid: Int32)
    case stats(table: String, stats: WorkerStats)
    case fatal(error: String)

    public static let maxLineBytes = 64 * 1024
    /// Each side's patience with the other: the supervisor kills a running worker that reported
    /// nothing for this long (stats go out at least every second), and a worker whose reports the
    /// supervisor has not read for this long (or `lease_expiry_seconds`, if shorter) lets its lease go.
    public static let stallSeconds = 10.0

    private struct Envelope: Codable {
        var type: String
        var table: String?
        var pid: Int32?
        var error: String?
    }

    private struct StatsEnvelope: Codable {
        var type: String
        var table: String
        var stats: WorkerStats
        func encode(to encoder: Encoder) throws {
            var c = encoder.container(keyedBy: DynamicKey.self)
            try c.encode(type, forKey: DynamicKey("type"))
            try c.encode(table, forKey: DynamicKey("table"))
            try stats.encode(to: encoder)
        }
        init(type: String, table: String, stats: WorkerStats) {
            self.type = type
            self.table = table
            self.stats = stats
        }
        init(from decoder: Decoder) throws {
            let c = try decoder.container(keyedBy: DynamicKey.self)
            type = try c.decode(String.self, forKey: DynamicKey("type"))
            table = try c.decode(String.self, forKey: DynamicKey("table"))
            stats = try WorkerStats(from: decoder)
        }
    }

    private struct DynamicKey: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(_ s: String) { stringValue = s }
        init?(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    /// The message as one line of JSON, newline included.
    public func encodedLine() -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let data: Data?
        switch self {
        case let .ready(table, pid):
            data = try? encoder.encode(Envelope(type: "ready", table: table, pid: pid))
        case let .stats(table, stats):
            data = try? encoder.encode(StatsEnvelope(type: "stats", table: table, stats: stats))
        case let .fatal(error):
            data = try? encoder.encode(Envelope(type: "fatal", error: String(error.prefix(4096))))
        }
        return Array(data ?? Data("{}".utf8)) + [UInt8(ascii: "\n")]
    }

    public enum DecodeError: Error, Equatable {
        case tooLong, malformed, unknownType(String)
    }

    public static func decode(line: some Collection<UInt8>) throws(DecodeError) -> WorkerMessage {
        if line.count > maxLineBytes { throw .tooLong }
        let data = Data(line)
        guard let envelope = try? JSONDecoder().decode(Envelope.self, from: data) else { throw .malformed }
        switch envelope.type {
        case "ready":
            guard let table = envelope.table, let pid = envelope.pid else { throw .malformed }
            return .ready(table: table, pid: pid)
        case "stats":
            guard let s = try? JSONDecoder().decode(StatsEnvelope.self, from: data) else { throw .malformed }
            return .stats(table: s.table, stats: s.stats)
        case "fatal":
            return .fatal(error: envelope.error ?? "")
        default:
            throw .unknownType(envelope.type)
        }
    }
}

/// Exit statuses (DESIGN.md section 7).
public enum ExitStatus {
    public static let clean: Int32 = 0
    /// Transient failure: restart with backoff.
    public static let transient: Int32 = 1
    /// EX_CONFIG: configuration or permission error. Never restarted.
    public static let config: Int32 = 78
}
