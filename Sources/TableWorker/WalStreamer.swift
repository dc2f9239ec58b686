// WAL capture's front (docs/database.md, "WAL capture"): on a thread and two connections of its
// own, the lease holder's worker streams the table's logical replication slot (pgoutput), turns
// row changes into keys (WalKeyExtractor) and writes them into T_changes, where the worker's loop
// finds them exactly as it finds the capture trigger's rows.
//
// Invariants:
// - Never confirm an LSN before the keys of every transaction committed up to it are committed
//   in T_changes: the confirmed position is the end of the last transaction whose keys were
//   written (or, with nothing of ours pending, the last keepalive's WAL end, outside a
//   transaction: everything before it that concerns us was sent before it). The INSERT runs with
//   synchronous_commit on, so "committed" means on disk when the confirmation leaves. (An
//   asynchronous commit with the confirmation held until the WAL flush passed it was measured:
//   on a server whose writers commit asynchronously, this commit's flush is what lets the
//   walsender decode their changes, and without it commit-to-arrival grew from a p99 of 164 ms
//   to 307 ms at 1,000 changes/s; docs/performance.md.)
// - An idle table never holds WAL back: with nothing pending, every keepalive's position is
//   confirmed at once (at most every `statusMinimumInterval`), so the slot follows the WAL end
//   while other tables write.
// - Anything unexpected (a lost connection, a malformed message, a relation whose configured
//   columns are gone) drops both connections and starts again from the slot's confirmed
//   position: keys may be written twice, never skipped.
// - A missing or invalidated slot is not recreated here (the changes in between would be lost
//   without a word): it is reported (`failure`) and the worker ends the table with a sentence.
// - Only the lease holder streams (TableWorker starts and stops this with the lease); a slot still
//   streamed by a previous holder (a paused host) has that session ended after
//   `takeOverAfterSeconds`, since the lease says the stream is ours now.

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import Logging
import Shared
import Synchronization

final class WalStreamer: Sendable {
    /// What the worker reads of the stream (stats, and whether it failed for good).
    struct Status: Sendable {
        var streaming = false
        /// The last position confirmed to the slot.
        var confirmedLSN: UInt64 = 0
        /// Keys written into T_changes since the process started.
        var keysWritten = 0
        /// Set once: the slot is missing or invalidated (a sentence for the failed table).
        var failure: String?
    }

    private let config: PublisherConfig
    private let schema: TrackingSchema
    private let logger: Logger
    private let status = Mutex(Status())
    /// Asked to stop; the thread's `running` ends when it has.
    private let stopping = Atomic<Bool>(false)
    private let running = Atomic<Bool>(false)
    private let queue = DispatchQueue(label: "atomic-data-publisher.wal")
    private let exited = DispatchSemaphore(value: 0)

    /// Keys written per INSERT at most (one statement, one round trip per batch).
    static let maximumBatch = 5_000
    static let statusMinimumInterval = 0.05
    /// How long a key read waits for others to share its INSERT (a small part of the 20 ms a
    /// change may take from commit to the ingestor).
    static let writeWindow = 0.005
    /// The server ends a walsender that hears nothing for wal_sender_timeout (60 s by default).
    static let statusMaximumInterval = 10.0
    static let takeOverAfterSeconds = 10.0

    init(config: PublisherConfig, schema: TrackingSchema, logger: Logger) {
        self.config = config
        self.schema = schema
        self.logger = logger
    }

    var current: Status { status.withLock { $0 } }
    var isRunning: Bool { running.load(ordering: .acquiring) }

    /// Start streaming (no-op while running, or once failed for good).
    func start() {
        guard !running.load(ordering: .acquiring), current.failure == nil else { return }
        stopping.store(false, ordering: .releasing)
        running.store(true, ordering: .releasing)
        queue.async { [self] in
            run()
            status.withLock { $0.streaming = false }
            running.store(false, ordering: .releasing)
            exited.signal()
        }
    }

    /// Stop, and wait up to `seconds` for the thread to let the slot go (a successor that starts
    /// streaming meanwhile retries until it is free).
    func stop(wait seconds: Double = 2) {
        guard running.load(ordering: .acquiring) else { return }
        stopping.store(true, ordering: .releasing)
        if exited.wait(timeout: .now() + seconds) == .timedOut {
            logger.warning("the WAL stream did not stop within \(seconds) s; it stops at its next step")
        }
    }

    private var shouldStop: Bool { stopping.load(ordering: .acquiring) }

    // MARK: - the thread

    private func run() {
        var attempt = 0
        var inUseSince: Double?
        while !shouldStop {
            var session = Session(streamer: self)
            do {
                try session.stream { attempt = 0; inUseSince = nil }
                return
            } catch let error as PostgresError {
                if error.sqlState == "42704" || (error.sqlState == "55000" && error.message.contains("replication slot")) {
                    let sentence = schema.slotLostSentence(database: config.database.databaseName)
                    logger.error("\(sentence)", metadata: ["error": "\(error)"])
                    status.withLock { $0.failure = sentence }
                    return
                }
                if error.sqlState == "55006" {
                    // Still streamed by the previous lease holder (stopping, or paused).
                    let now = monotonicSeconds()
                    let since = inUseSince ?? now
                    inUseSince = since
                    if now - since >= Self.takeOverAfterSeconds {
                        endPreviousStreamer()
                        inUseSince = now
                    }
                    logger.info("the replication slot is still streamed by the previous lease holder; retrying", metadata: ["error": "\(error)"])
                    sleep(0.5)
                    continue
                }
                logger.warning("the WAL stream failed; starting again from the slot's confirmed position", metadata: ["error": "\(error)"])
            } catch {
                logger.warning("the WAL stream failed; starting again from the slot's confirmed position", metadata: ["error": "\(error)"])
            }
            status.withLock { $0.streaming = false }
            sleep(Backoff(initial: 0.2, maximum: 10).delay(attempt: attempt, unit: Double.random(in: 0..<1)))
            attempt += 1
        }
    }

    private func endPreviousStreamer() {
        do {
            let db = try PostgresConnection.connect(parameters(suffix: "wal"), heartbeats: false)
            let ended = try db.execute("""
                SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
                WHERE slot_name = $1 AND active_pid IS NOT NULL AND active_pid <> pg_backend_pid()
                """, [schema.slotName(database: config.database.databaseName)])
            logger.warning("ended the session still streaming this table's replication slot for a former lease holder", metadata: ["ended": "\(ended.rows.first?[0] ?? "none")"])
        } catch {
            logger.warning("cannot end the session still streaming this table's replication slot", metadata: ["error": "\(error)"])
        }
    }

    /// Sleep in steps, so a stop is noticed within 0.1 s.
    private func sleep(_ seconds: Double) {
        let deadline = monotonicSeconds() + seconds
        while !shouldStop, monotonicSeconds() < deadline {
            _ = Poll.wait(readable: [], timeout: min(0.1, max(0, deadline - monotonicSeconds())))
        }
    }

    fileprivate func parameters(suffix: String, replication: Bool = false) -> ConnectionParameters {
        let name = "atomic-data-publisher-\(suffix)/\(schema.table.name)@\(config.resolvedInstanceId)"
        var p = ConnectionParameters(config.database, applicationName: String(decoding: Array(name.utf8.prefix(63)), as: UTF8.self))
        p.replication = replication
        return p
    }

    /// One attempt: two connections, the stream, and what is pending.
    private struct Session {
        let streamer: WalStreamer
        var extractor: WalKeyExtractor
        var inTransaction = false
        var commitMicroseconds: Int64 = 0
        /// Keys read, not yet written; the dependency keys among them (written once per batch).
        var pending: [(key: CapturedKey, committed: Int64)] = []
        var pendingCauses: Set<String> = []
        /// When the oldest pending key was read.
        var firstPendingAt = 0.0
        /// Every transaction that concerns us up to here has been read (its keys are pending or written).
        var receivedLSN: UInt64 = 0
        /// Written and committed up to here: what may be confirmed.
        var writtenLSN: UInt64 = 0
        var confirmedLSN: UInt64 = 0
        var lastStatusAt = -Double.infinity
        var replyRequested = false
        /// Keeps the slot's retained WAL bounded while the table is idle (WalSlotNudge.swift).
        var nudge: WalSlotNudge

        init(streamer: WalStreamer) {
            self.streamer = streamer
            extractor = WalKeyExtractor(table: streamer.schema.table)
            nudge = WalSlotNudge(slotName: streamer.schema.slotName(database: streamer.config.database.databaseName), logger: streamer.logger)
        }

        mutating func stream(started: () -> Void) throws {
            let schema = streamer.schema, database = streamer.config.database.databaseName
            let db = try PostgresConnection.connect(streamer.parameters(suffix: "wal-writer"), heartbeats: false)
            // The confirmation that follows a write must not get ahead of the write's durability.
            try db.execute("SELECT set_config('synchronous_commit', 'on', false), set_config('jit', 'off', false)")
            // Prepared once: parsing and planning the INSERT for every batch cost the server
            // about a tenth of what the INSERT costs per key.
            try db.prepare(name: Self.insertStatement, sql: schema.walInsertSQL)
            let replication = try PostgresConnection.connect(streamer.parameters(suffix: "wal", replication: true), heartbeats: false)
            try replication.startCopyBoth(schema.startReplicationCommand(database: database))
            started()
            streamer.status.withLock { $0.streaming = true }
            streamer.logger.info("streaming the table's changes from its replication slot", metadata: ["slot": "\(schema.slotName(database: database))"])
            while true {
                if streamer.shouldStop {
                    // What was read is written and confirmed, so a successor starts after it.
                    try write(db)
                    try confirm(replication, force: true)
                    return
                }
                // Keys wait at most `writeWindow` for more to join their INSERT: one commit (a WAL
                // flush) per window rather than per burst read, which the writers' own commits
                // would otherwise queue behind on a durable server.
                let wait = pending.isEmpty ? 0.1 : max(0, firstPendingAt + WalStreamer.writeWindow - monotonicSeconds())
                let ready = Poll.wait(readable: [replication.socket], timeout: wait)
                if !ready.readable.isEmpty || !ready.hangup.isEmpty {
                    while case .data(let bytes) = try replication.readCopyData() {
                        let before = pending.count
                        try handle(bytes)
                        if before == 0 && !pending.isEmpty { firstPendingAt = monotonicSeconds() }
                        if pending.count >= WalStreamer.maximumBatch { try write(db) }
                    }
                }
                if pending.isEmpty || monotonicSeconds() - firstPendingAt >= WalStreamer.writeWindow { try write(db) }
                try confirm(replication)
                if pending.isEmpty { nudge.tick(db, now: monotonicSeconds()) }
            }
        }

        mutating func handle(_ bytes: [UInt8]) throws {
            switch try PgOutput.streamMessage(bytes) {
            case .keepalive(let walEnd, let reply):
                if !inTransaction { receivedLSN = max(receivedLSN, walEnd) }
                if reply { replyRequested = true }
            case .xlogData(_, _, let payload):
                let message = try PgOutput.message(payload)
                switch message {
                case .begin(_, let committed, _):
                    inTransaction = true
                    commitMicroseconds = committed
                case .commit(_, let end, _):
                    inTransaction = false
                    receivedLSN = max(receivedLSN, end)
                case .relation(let relation):
                    try extractor.relationReceived(relation)
                case .insert(let oid, _), .update(let oid, _, _, _), .delete(let oid, _, _):
                    guard extractor.knows(oid) else { throw PgOutput.Malformed(description: "a row of relation \(oid) before its Relation message") }
                    for key in extractor.keys(for: message) {
                        if let cause = key.cause, !pendingCauses.insert(key.primaryKey + "\u{0}" + cause).inserted { continue }
                        pending.append((key, commitMicroseconds))
                    }
                case .other:
                    break
                }
            }
        }

        static let insertStatement = "adp_wal_insert"

        /// Write what is pending in one INSERT (its own transaction); then everything read up to
        /// `receivedLSN` is in T_changes.
        mutating func write(_ db: PostgresConnection) throws {
            if !pending.isEmpty {
                let results = try db.pipeline([[.prepared(name: Self.insertStatement, parameters: [
                    TrackingSchema.textArray(pending.map(\.key.primaryKey)),
                    TrackingSchema.textArray(pending.map(\.key.operation)),
                    TrackingSchema.nullableTextArray(pending.map(\.key.changeValue)),
                    TrackingSchema.nullableTextArray(pending.map(\.key.cause)),
                    "{" + pending.map { String($0.committed) }.joined(separator: ",") + "}",
                ])]])
                if case .failure(let error) = results[0][0] { throw error }
                let count = pending.count
                streamer.status.withLock { $0.keysWritten += count }
                pending.removeAll(keepingCapacity: true)
                pendingCauses.removeAll(keepingCapacity: true)
            }
            // A batch cut inside a transaction leaves receivedLSN at the previous commit's end.
            writtenLSN = max(writtenLSN, receivedLSN)
        }

        /// Send a standby status update when the written position moved (at most every
        /// `statusMinimumInterval`), when asked, and every `statusMaximumInterval` anyway.
        mutating func confirm(_ replication: PostgresConnection, force: Bool = false) throws {
            let now = monotonicSeconds()
            let moved = writtenLSN > confirmedLSN && now - lastStatusAt >= WalStreamer.statusMinimumInterval
            guard force || moved || replyRequested || now - lastStatusAt >= WalStreamer.statusMaximumInterval else { return }
            try replication.writeCopyData(PgOutput.statusUpdate(lsn: writtenLSN, unixNow: Date().timeIntervalSince1970))
            confirmedLSN = writtenLSN
            lastStatusAt = now
            replyRequested = false
            let lsn = writtenLSN
            streamer.status.withLock { $0.confirmedLSN = lsn }
        }
    }
}
