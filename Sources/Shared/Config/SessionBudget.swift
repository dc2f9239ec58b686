// How many PostgreSQL sessions one instance may hold (`database.max_connections`), and how they are
// shared among its workers.
//
// Invariants:
// - Each worker needs exactly one session (its lease, LISTEN and acknowledgements live on it), and
//   a worker that streams a WAL-mode table's slot (`capture = "wal"`: the whole table's worker, or
//   partition 0's) two more while it holds the lease (WalStreamer: a replication connection, a
//   walsender, and the connection that writes the keys). A limit below what they need
//   (`required`) is a configuration error, never a silent shortfall.
// - The sessions left over (limit - required) are read-ahead sessions (BatchPrefetcher), at most
//   one per worker. A worker without one reads every batch on its own session.
// - The sum of every worker's share never exceeds the limit, so the instance never holds more,
//   whatever its workers do.
//
// Why a static share, handed to each worker in its configuration line, rather than a count granted
// at run time (over the pipe, or as advisory-lock "slots" in PostgreSQL): the supervisor alone knows
// how many workers there are, and a share fixed at spawn needs no messages, cannot leak when a
// worker is killed (its sessions die with it, and its successor gets the same share), and keeps
// holding while the supervisor itself is stopped or busy. What it gives up: when the limit is
// below twice the workers, an idle worker's unused read-ahead right is not lent to a busy one.
// Reading ahead only shortens a drain (a batch's read overlaps the sending of the one before);
// correctness and every change's delivery never depend on it.

public struct SessionBudget: Sendable, Equatable {
    /// Worker processes this configuration starts: one per table, one per partition.
    public let workers: Int
    /// The workers (indexes in configuration order) that stream a WAL slot, and take
    /// `walStreamSessions` more sessions for it.
    public let streamingWorkers: Set<Int>
    /// WalStreamer's connections: the replication connection and the one that writes the keys.
    public static let walStreamSessions = 2
    /// The sessions the instance may hold in all: `database.max_connections`, or when it is 0
    /// (automatic) one per worker plus one read-ahead each, which is what every worker may use.
    public let limit: Int
    /// Whether `limit` was configured (`database.max_connections` > 0) rather than automatic.
    public let configured: Bool

    public init(_ config: PublisherConfig) {
        let entries = config.workerEntries
        self.init(workers: entries.count, maxConnections: config.database.maxConnections,
                  streamingWorkers: Set(entries.indices.filter { entries[$0].table.capture == .wal && entries[$0].partition.index == 0 }))
    }

    public init(workers: Int, maxConnections: Int, streamingWorkers: Set<Int> = []) {
        self.workers = workers
        self.streamingWorkers = streamingWorkers
        configured = maxConnections > 0
        limit = configured ? maxConnections : 2 * workers + streamingWorkers.count * Self.walStreamSessions
    }

    /// The sessions the workers cannot do without: one each, and their WAL streams'.
    public var required: Int { workers + streamingWorkers.count * Self.walStreamSessions }

    /// Workers that may read ahead on a second session: the first ones in configuration order.
    public var readAheadWorkers: Int { max(0, min(workers, limit - required)) }

    /// The sessions the worker at `index` (0-based, in configuration order, partitions each
    /// counted) may hold besides its WAL stream's: its own, plus one to read ahead while the spare
    /// sessions last.
    public func sessions(workerIndex index: Int) -> Int {
        index < readAheadWorkers ? 2 : 1
    }

    /// The sessions the WAL stream of the worker at `index` takes (0 for most workers).
    public func streamSessions(workerIndex index: Int) -> Int {
        streamingWorkers.contains(index) ? Self.walStreamSessions : 0
    }

    /// The most sessions the workers can hold at once under this budget (the limit, or less when
    /// the limit is more than every worker can use).
    public var peak: Int { required + readAheadWorkers }

    /// "database.max_connections = 35" or "database.max_connections automatic (2 per worker)".
    public var setting: String {
        configured ? "database.max_connections = \(limit)" : "database.max_connections automatic (2 per worker)"
    }
}

/// What the supervisor tells one worker about the budget (WorkerConfig): its own sessions and the
/// instance's, so that a worker refused by the server can say what to change.
public struct SessionShare: Codable, Sendable, Equatable {
    /// Sessions this worker may hold: 1, or 2 with a read-ahead session (its WAL stream's aside).
    public var sessions: Int
    /// Sessions its WAL stream takes besides (nil: none, or a supervisor that did not say).
    public var walStreamSessions: Int?
    /// The instance's limit and its workers (see `SessionBudget`).
    public var instanceLimit: Int
    public var instanceWorkers: Int
    public var configured: Bool

    public init(sessions: Int, budget: SessionBudget, walStreamSessions: Int? = nil) {
        self.sessions = sessions
        self.walStreamSessions = walStreamSessions
        instanceLimit = budget.limit
        instanceWorkers = budget.workers
        configured = budget.configured
    }

    /// The share of the worker named `workerName` (`table` or `table#index`) under `config`; nil
    /// when the configuration has no such worker.
    public static func of(workerName: String, in config: PublisherConfig) -> SessionShare? {
        let budget = SessionBudget(config)
        guard let index = config.workerEntries.firstIndex(where: { $0.name == workerName }) else { return nil }
        let stream = budget.streamSessions(workerIndex: index)
        return SessionShare(sessions: budget.sessions(workerIndex: index), budget: budget, walStreamSessions: stream > 0 ? stream : nil)
    }
}

extension PublisherConfig {
    /// One worker per table, or per partition of a partitioned table, in configuration order: the
    /// order the supervisor starts them in and the budget's shares follow.
    public var workerEntries: [(name: String, table: WatchedTable, partition: TablePartition)] {
        service.watchedTables.flatMap { table in
            let shares = table.partitions > 1 ? (0..<table.partitions).map { TablePartition(index: $0, count: table.partitions) } : [.whole]
            return shares.map { (name: $0.workerName(table: table.name), table: table, partition: $0) }
        }
    }
}
