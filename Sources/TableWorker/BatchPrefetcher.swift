// Reading the next batch while the current one is sent (measured: at the defaults a batch's read
// took a third of its time, PostgreSQL's, while the worker and nginx waited; then the other way
// round). A second connection, used only from this type's own thread, reads batch N+1 with the
// keys of batch N left out, while the worker sends N.
//
// Why this keeps DESIGN.md section 5's promises:
// - Per key, order: N+1 holds none of N's keys, and N+1 is sent only after N is settled (every
//   key acknowledged, rescheduled or dead-lettered); the batch after it is read once N is settled,
//   so it sees N's outcome like any later read.
// - Nothing is acknowledged by reading: a batch read ahead and never sent leaves its rows in place.
// - Only what the lease holder read while holding the same lease is sent: a batch read ahead is
//   used only under the same lease grant, session and tracking table (its `Token`), within a
//   second of being read, and only when it is not empty; else it is dropped and the batch is
//   read again on the worker's own session.
// - Errors on the second connection are never acted on: the batch is read again on the worker's
//   session, which reports them the usual way.
// - The second connection counts against the instance's session budget (SessionBudget): a worker
//   whose share has no read-ahead session never opens it, and one the server refuses (too many
//   connections) is not asked for again for a while, so a full server is not hammered.

import Dispatch
import Logging
import Shared

final class BatchPrefetcher: @unchecked Sendable {
    /// What a batch read ahead must still match to be sent.
    struct Token: Equatable, Sendable {
        var leaseGrant: Int
        var sessionGeneration: Int
        var epoch: String
    }

    /// One read ahead. Written by the reader's thread before `done` is signalled, read by the
    /// worker's thread after waiting on it.
    private final class Read: @unchecked Sendable {
        let token: Token
        let done = DispatchSemaphore(value: 0)
        var batch: Batch?
        var seconds = 0.0
        var finishedAt = 0.0
        /// The server refused the second connection (SQLSTATE 53300).
        var refused = false
        init(token: Token) { self.token = token }

        /// Wait up to `seconds` for the read to end (it stays ended for later calls).
        func wait(_ seconds: Double) -> Bool {
            guard done.wait(timeout: .now() + seconds) == .success else { return false }
            done.signal()
            return true
        }
    }

    /// A batch read ahead is sent only this soon after it was read (its atomic data is that old).
    static let maximumAgeSeconds = 1.0
    /// How long the worker waits for a read ahead before reading the batch in turn on its own
    /// session (a read ahead stuck on a dead connection must not hold the loop up longer).
    static let maximumWaitSeconds = 5.0
    /// After the server refused the second connection, no read ahead for this long (each batch is
    /// read in turn on the worker's session meanwhile).
    static let refusedPauseSeconds = 60.0

    private let config: PublisherConfig
    private let schema: TrackingSchema
    private let reader: BatchReader
    private let logger: Logger
    /// This worker's share of the session budget includes a read-ahead session.
    let enabled: Bool
    private let queue = DispatchQueue(label: "atomic-data-publisher.prefetch")
    /// The worker's thread only: the read to take next, and the last one started (while that one
    /// runs, no other starts: none queues behind a stuck one).
    private var pending: Read?
    private var last: Read?
    /// A read ahead was started since the last `close()`: the second connection may be open.
    private var opened = false
    /// The reader's thread only.
    private var connection: PostgresConnection?
    private var batched = false

    init(config: PublisherConfig, schema: TrackingSchema, reader: BatchReader, enabled: Bool, logger: Logger) {
        self.enabled = enabled
        self.config = config
        self.schema = schema
        self.reader = reader
        self.logger = logger
    }

    /// Start reading the batch after this one, without `keys` (the batch being sent). `batched`:
    /// the worker's session uses the whole-batch atomic data statement.
    func start(token: Token, excludingKeys keys: [String], batched allowed: Bool) {
        guard enabled else { return }
        if let last {
            guard last.wait(0) else { return }
            if last.refused && monotonicSeconds() - last.finishedAt < Self.refusedPauseSeconds { return }
        }
        let read = Read(token: token)
        pending = read
        last = read
        opened = true
        queue.async { [self] in
            let started = monotonicSeconds()
            do {
                let db = try readerConnection()
                read.batch = try reader.read(db, batched: allowed && batched, excludingKeys: keys)
            } catch let error as PostgresError where error.sqlState == "53300" {
                // Not an error of ours to act on, but the operator's to know: the budget leaves
                // room the server does not have (SessionRefusal says what to change).
                read.refused = true
                logger.warning("PostgreSQL refused the read-ahead connection (too many connections): batches are read in turn for \(Int(Self.refusedPauseSeconds)) s; lower database.max_connections or make room on the server",
                               metadata: ["error": "\(error)"])
            } catch {
                logger.debug("reading the next batch ahead failed; it is read again in turn", metadata: ["error": "\(error)"])
                closeOnQueue()
            }
            read.finishedAt = monotonicSeconds()
            read.seconds = read.finishedAt - started
            read.done.signal()
        }
    }

    /// The batch read ahead, when there is one that still matches `token`, is recent and not
    /// empty (waiting for its read to end); nil: read the batch in turn.
    func take(token: Token) -> (batch: Batch, seconds: Double)? {
        guard let read = pending else { return nil }
        pending = nil
        var waited = 0.0
        while !read.wait(1) {
            PostgresConnection.heartbeat?()  // stats keep flowing, as during a long query
            waited += 1
            if waited >= Self.maximumWaitSeconds { return nil }
        }
        guard read.token == token, let batch = read.batch, !batch.isEmpty,
              monotonicSeconds() - read.finishedAt <= Self.maximumAgeSeconds else { return nil }
        return (batch, read.seconds)
    }

    /// Let the second connection go (the table is idle; a batch read ahead is forgotten, its rows
    /// stay in the table); the next read ahead opens it again.
    func close() {
        pending = nil
        guard opened else { return }  // every empty poll of an idle table comes here
        opened = false
        queue.async { [self] in closeOnQueue() }
    }

    private func readerConnection() throws -> PostgresConnection {
        if let connection, connection.isConnected { return connection }
        closeOnQueue()
        let opened = try DatabaseSession.openReader(config: config, schema: schema, logger: logger)
        connection = opened.connection
        batched = opened.batched
        return opened.connection
    }

    private func closeOnQueue() {
        connection?.close()
        connection = nil
    }
}
