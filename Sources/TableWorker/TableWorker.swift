// One table's worker: the loop of DESIGN.md section 5, on one thread (BatchPrefetcher reads the next
// batch on a thread and connection of its own while a backlog drains, and hands it over to this one).
//
// Invariants:
// - The loop never blocks longer than one batch (bounded by the statement and HTTP timeouts);
//   between batches it waits in poll(2) on the signal self-pipe and, when supervised, on stdin,
//   so SIGTERM and the supervisor's death are noticed at once. Stats go out at least once a
//   second, also while requests are in flight.
// - The decisions are pure and live elsewhere: the loop's next step is WorkerLoop's, the lease
//   (fence, epoch, renewal, and the gate the HTTP client asks before every request) is
//   LeaseMachine's, the delivery rules are DeliveryPlan's (DeliveryRunner performs them). This type
//   gathers the facts, performs the steps, owns the session, reads batches, and reports.
// - Errors met where the runner cannot throw (its waits and ticks) are kept and thrown once it
//   returns: a dropped trigger during a retry's wait still ends the worker with 78.
// - A problem with the table or its query (a revoked grant, a dropped column) pauses the table,
//   keeps every change, says so in stats (so /health is not green) and retries every few seconds.

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif
import Logging
import Shared

final class TableWorker {
    enum Stop: Error {
        case requested
        case permanent(String)
    }

    let config: PublisherConfig
    let table: WatchedTable
    let supervised: Bool
    var logger: Logger

    let schema: TrackingSchema
    private let session: DatabaseSession
    private let reader: BatchReader
    /// Reads the next batch on a second connection while the current one is sent.
    private let prefetcher: BatchPrefetcher
    /// `capture = "wal"`: streams the table's replication slot into T_changes while this worker
    /// holds the lease (partition 0's worker for a partitioned table: one slot per table).
    private let wal: WalStreamer?
    /// Trigger mode (partition 0's worker): streams a slot of ours left by `capture = "wal"` while
    /// this worker holds the lease, until what it holds from before the triggers is in T_changes.
    private let leftover: WalStreamer?
    private var leftoverRead = LeftoverRead.unchecked
    enum LeftoverRead: Equatable {
        /// Not looked at under the current lease grant.
        case unchecked
        /// Streamed until its confirmed position is at least this (TrackingSchema.triggerCapturePosition).
        case reading(until: UInt64)
        /// None left (read and dropped, or none to begin with).
        case done
    }
    /// Counted up each time this worker takes the lease, and each time its session connects: a
    /// batch read ahead is only sent under the grant and session it was read under.
    private var leaseGrants = 0
    private var sessionGeneration = 0
    private let builder: RequestBuilder
    private let http: HTTPClient
    private var runner: DeliveryRunner!
    private var stats = WorkerStats()
    private var lastStatsAt = 0.0
    private var lastBacklogAt = -Double.infinity
    private var lastPublishUnix: Double?
    private var stopRequested = false
    private var idleDelay = 0.0
    private var breaker: CircuitBreaker
    private var lease: LeaseMachine
    /// The last time this worker gave up on requests in flight (monotonic): see LeaseMachine's fence.
    private var abandonedAt: Double?
    /// An error met where the delivery runner cannot throw (its waits and ticks): thrown once the
    /// runner returns, so a permanent problem still ends the worker with 78, not a clean stop.
    private var deferredError: Error?
    /// The standby last asked a silent holder's backend to end (logged once per holder).
    private var lastExpiredHolderPid: Int32?
    private var lastHolderLogged: String?
    /// Whether this session holds the table's generation lock (TrackingSchema+Partition).
    private var generationHeld = false
    private var staleIndexesChecked = false
    /// Batches were processed since the heap was last trimmed.
    private var heapDirty = false
    /// Partitioned tables: when to look next at how the partitions spread across instances, and
    /// after letting one go, until when not to try for it again (so the other instance takes it).
    private var nextBalanceAt = 0.0
    private var leaseCooldownUntil = 0.0
    static let balanceIntervalSeconds = 10.0
    private var random = JitterRandom()
    static let backlogIntervalSeconds = 5.0
    /// Stats, ready and fatal go to the supervisor through it, never blocking (SupervisorPipe).
    private let pipe: SupervisorPipe
    /// The supervisor read nothing of ours for this long: it is stopped, and this instance cannot
    /// be watched or reloaded, nor report. Let the lease go, so a standby on another host takes
    /// the table. The supervisor's own stall limit (it kills a worker silent that long), or the
    /// lease expiry if shorter: a whole instance paused is taken over after the expiry (the standby
    /// ends the silent holder's session), and a paused supervisor should cost no more than that.
    /// Each renewal keeps the standby from ending our session, so without this nobody would.
    let supervisorSilenceLimit: Double
    /// Whether the supervisor was last seen silent (logged on change).
    private var supervisorSilent = false
    /// Requests in a row the ingestor did not answer within `ingestor.timeout_seconds`.
    private var timeoutsInARow = 0
    /// From this many timeouts in a row, /health says the timeout may never be met: with retries
    /// and the breaker's probes that is a few seconds, and one slow answer is not a problem.
    static let timeoutsBeforeProblem = 3

    /// The table's name, or `name#index` for a partition's worker.
    var workerName: String { schema.partition.workerName(table: table.name) }

    /// This worker's part of the instance's session budget (SessionBudget).
    let sessions: SessionShare

    init(config: PublisherConfig, table: WatchedTable, partition: TablePartition = .whole, sessions: SessionShare, supervised: Bool, logger: Logger) {
        self.sessions = sessions
        self.config = config
        self.table = table
        self.supervised = supervised
        self.logger = logger
        schema = TrackingSchema(table: table, partition: partition)
        session = DatabaseSession(config: config, schema: schema, logger: logger)
        reader = BatchReader(schema: schema, batchSize: config.service.batchSize)
        prefetcher = BatchPrefetcher(config: config, schema: schema, reader: reader, enabled: sessions.sessions >= 2, logger: logger)
        wal = table.capture == .wal && partition.index == 0 ? WalStreamer(config: config, schema: schema, logger: logger) : nil
        leftover = table.capture == .trigger && partition.index == 0 ? WalStreamer(config: config, schema: schema, logger: logger) : nil
        builder = RequestBuilder(config: config, table: table)
        breaker = CircuitBreaker(failureThreshold: config.ingestor.circuitBreakerFailureThreshold,
                                 resetSeconds: config.ingestor.circuitBreakerResetSeconds)
        lease = LeaseMachine(fenceSeconds: config.resolvedLeaseFenceSeconds, retrySeconds: config.service.leaseRetrySeconds,
                             requestTimeoutSeconds: Double(config.ingestor.timeoutSeconds))
        http = HTTPClient(timeoutMilliseconds: config.ingestor.timeoutSeconds * 1000,
                          connectTimeoutMilliseconds: min(10, config.ingestor.timeoutSeconds) * 1000,
                          maxConnections: max(8, config.service.maxConcurrentPublishes * 2),
                          tls: HTTPTLSOptions(config.ingestor),  // ingestor.ca_file / client_cert / client_key
                          // Room for a batch's per-item answers (about 60 bytes a document): a
                          // truncated list could not be read, and the 2xx would stand for all.
                          maximumBodyBytes: table.batchPublishEndpoint.isEmpty ? HTTPClient.defaultMaximumBodyBytes
                              : max(HTTPClient.defaultMaximumBodyBytes, config.service.maxDocumentsPerRequest * 256),
                          keptResponseHeaders: ResponseClassifier.headersRead)
        pipe = SupervisorPipe(supervised: supervised)
        supervisorSilenceLimit = min(WorkerMessage.stallSeconds, config.service.leaseExpirySeconds)
        runner = DeliveryRunner(transport: http, store: session, host: self, maxConcurrent: config.service.maxConcurrentPublishes)
        runner.log = { [unowned self] event in self.noteDelivery(event) }
        runner.requestTimeoutSeconds = config.ingestor.timeoutSeconds
        // SIGTERM mid-wave: let what is in flight be answered (well within the supervisor's
        // shutdown timeout), so nothing is left in flight and the lease can be handed over.
        runner.stopDrainSeconds = min(Double(config.ingestor.timeoutSeconds), config.service.shutdownTimeoutSeconds / 2)
    }

    /// Runs until asked to stop; returns the exit status.
    func run() -> Int32 {
        // During a long query the loop is inside libpq: keep reporting (no database use here).
        PostgresConnection.heartbeat = { [unowned self] in
            if monotonicSeconds() - lastStatsAt >= 1.0 { try? emitStats(refreshBacklog: false) }
        }
        defer { PostgresConnection.heartbeat = nil }
        defer { stopStreams() }
        do {
            try connect()
            // Stats first, so the supervisor's READY=1 and STATUS= already show the database up.
            try emitStats()
            emit(.ready(table: workerName, pid: getpid()))
            logger.info("worker ready", metadata: ["database": "\(ConnectionParameters(config.database, applicationName: "").safeDescription)"])
            while true {
                try checkStop()
                try emitStatsIfDue()
                let now = monotonicSeconds()
                let facts = WorkerLoop.Facts(now: now, connected: session.isConnected, leaseHeld: lease.isHeld, leading: lease.reported == .leader,
                                             partitioned: table.partitions > 1, cooldownUntil: leaseCooldownUntil, nextBalanceAt: nextBalanceAt,
                                             mayPublish: lease.mayPublish(now: now), fenceRemaining: lease.fenceRemaining(now: now),
                                             breakerWait: breaker.waitTime(now: now), supervisorSilent: noteSupervisorSilence(now: now))
                switch WorkerLoop.next(facts) {
                case .reconnect:
                    try reconnect()
                    continue
                case .takeLease:
                    try takeLease()
                    continue
                case .releaseLease:
                    releaseLeaseForSilentSupervisor()
                    continue
                case .balancePartitions:
                    nextBalanceAt = now + Self.balanceIntervalSeconds
                    _ = yieldToSpreadPartitions()
                    continue
                case .pause(let seconds):
                    try pause(seconds)
                    continue
                case .processBatch:
                    break
                }
                let processed = try processBatch()
                switch WorkerLoop.afterBatch(processed: processed, tableProblem: stats.tableProblem != nil) {
                case .pause(let seconds):
                    try pause(seconds)
                case .next:
                    idleDelay = 0
                    heapDirty = true
                    // Fresh figures for /metrics soon after work, without a line per batch.
                    if monotonicSeconds() - lastStatsAt >= 0.1 { try emitStats() }
                case .sleepUntilChange:
                    // The backlog is drained: hand the batches' freed heap back, and the second
                    // connection (it reads ahead only while batches come full).
                    prefetcher.close()
                    if heapDirty {
                        HeapMemory.releaseFreePages()
                        heapDirty = false
                    }
                    if try sleepUntilChange() {
                        idleDelay = 0  // woken by a change: read it without probing first
                    } else {
                        // The wake-up flag is taken (a writer between its change and its commit).
                        idleDelay = WorkerLoop.pollDelay(after: idleDelay, pollingInterval: config.service.pollingIntervalSeconds)
                        try pause(idleDelay)
                    }
                }
            }
        } catch Stop.requested {
            handOver()
            try? emitStats()
            pipe.drain(within: Self.exitDrainSeconds)
            logger.info("worker stopped")
            return ExitStatus.clean
        } catch let Stop.permanent(message) {
            logger.error("worker cannot run: \(message)")
            emit(.fatal(error: message))
            pipe.drain(within: Self.exitDrainSeconds)
            return ExitStatus.config
        } catch {
            logger.error("worker failed: \(error)")
            emit(.fatal(error: "\(error)"))
            pipe.drain(within: Self.exitDrainSeconds)
            return ExitStatus.transient
        }
    }

    // MARK: - database

    /// Connect, retrying with backoff while the database is unreachable (set up once per process).
    private func connect(reconnecting: Bool = false) throws {
        var attempt = 0
        while true {
            try checkStop()
            do {
                try session.open()
                sessionGeneration += 1
                stats.database = .up
                if attempt > 0 || reconnecting { logger.notice("database connection restored") }
                if stats.databaseProblem != nil {
                    stats.databaseProblem = nil
                    logger.notice("PostgreSQL accepted this worker's session again")
                }
                return
            } catch let error as PostgresError {
                if error.isConfigurationFailure {  // a rejected login or a TLS verification failure: exit 78
                    throw Stop.permanent(error.description)
                }
                if !error.isConnectionLost, case .table = QueryFailure.classify(error) {
                    // At start, a query that cannot even be prepared is a configuration error (78).
                    // Once running, it is the same table problem a batch meets (a revoked grant, a
                    // dropped column): pause, keep every change, say so, and resume once fixed.
                    guard sessionGeneration > 0 else { throw Stop.permanent("table \(table.qualifiedName): \(error)") }
                    stats.database = .up
                    reportTableProblem(error)
                    try pause(WorkerLoop.tableProblemRetrySeconds)
                    continue
                }
                stats.database = .down
                let delay = Backoff(initial: 0.5, maximum: 30).delay(attempt: attempt, unit: randomUnit())
                // No room on the server is the operator's to fix, not a crash: say what to change
                // (in /health and /readyz too) and keep trying; the supervisor never restarts a
                // worker for it (it keeps reporting while it waits).
                let refusal = SessionRefusal.matches(error) ? SessionRefusal.sentence(error, share: sessions, role: config.database.username) : nil
                if let refusal, refusal != stats.databaseProblem {
                    logger.warning("\(refusal)", metadata: ["error": "\(error)"])
                }
                stats.databaseProblem = refusal
                logger.warning("database unavailable, retrying", metadata: ["error": "\(error)", "retry_in_seconds": "\((delay * 10).rounded() / 10)"])
                attempt += 1
                try pause(delay)
            }
        }
    }

    /// Try to take the table's lease; stand by (and say who leads) when another session holds it,
    /// or while workers configured with another partition count hold the table (so two partition counts never publish at once).
    private func takeLease() throws {
        let acquired: Bool
        var otherGenerations: [TrackingSchema.OtherGeneration] = []
        do {
            let db = try session.connection()
            if !generationHeld {
                // Take ours first, then look: of two workers racing with different counts, at
                // least one sees the other (TrackingSchema+Partition).
                try schema.takeGeneration(db)
                generationHeld = true
                otherGenerations = try schema.otherGenerations(db)
                if !otherGenerations.isEmpty {
                    try schema.releaseGeneration(db)
                    generationHeld = false
                }
            }
            var taken = otherGenerations.isEmpty ? try schema.tryLease(db) : false
            if !taken && otherGenerations.isEmpty && endSilentHolder(db) {
                // Its locks go as its backend exits: try again for a moment.
                let deadline = monotonicSeconds() + 2
                while !taken && monotonicSeconds() < deadline {
                    _ = Poll.wait(readable: [], timeout: 0.05)
                    taken = try schema.tryLease(db)
                }
            }
            acquired = taken
        } catch {
            try databaseFailed(error)
            return
        }
        let clean = acquired && lease.reported != .none && awaitCleanHandoff()
        let now = monotonicSeconds()
        if var retryAt = lease.tried(acquired: acquired, now: now, abandonedAt: abandonedAt, cleanHandoff: clean) {
            let holder: String?
            let note: String
            if !otherGenerations.isEmpty {
                let names = Set(otherGenerations.map { DatabaseSession.instance(fromApplicationName: $0.applicationName) }).sorted()
                let counts = Set(otherGenerations.map(\.partitions)).sorted().map(String.init).joined(separator: ", ")
                holder = names.joined(separator: ",")
                note = "standing by: instance(s) \(holder ?? "?") publish this table with partitions = \(counts), this instance has partitions = \(table.partitions); it takes over once they run with the same partitions or stop"
                // Both sides of a race back off: retry at a random point of the next period.
                retryAt = now + config.service.leaseRetrySeconds * (0.5 + randomUnit())
            } else {
                holder = (try? schema.leaseHolder(session.connection())).flatMap { $0 }.map(DatabaseSession.instance(fromApplicationName:))
                note = "standing by: another instance holds the lease of this table"
            }
            stats.leaseHolder = holder
            if lastHolderLogged != note + (holder ?? "?") {
                lastHolderLogged = note + (holder ?? "?")
                logger.notice("\(note)", metadata: ["leader": "\(holder ?? "unknown")"])
            }
            try emitStats()
            try pause(max(0, retryAt - now))
            return
        }
        lastHolderLogged = nil
        lastExpiredHolderPid = nil
        // The grant's epoch, written on the session that holds the lock. Without it nothing is sent
        // (LeaseMachine.launch): give the lock back with the session and try again.
        let grant: (epoch: Int64, previous: Int64?)
        do {
            grant = try schema.grantEpoch(session.connection(), holder: config.resolvedInstanceId)
        } catch {
            logger.warning("took the lease of this table but could not record its epoch: letting it go", metadata: ["error": "\(error)"])
            loseLease()
            if !error.isConnectionLost { try databaseFailed(error) }
            return
        }
        lease.granted(epoch: grant.epoch, at: now)
        abandonedAt = nil
        leaseGrants += 1
        stats.leaseHolder = config.resolvedInstanceId
        let fence = lease.fenceRemaining(now: now) ?? 0
        logger.notice("took the lease of this table", metadata: ["fence_seconds": "\(fence)", "takeovers": "\(lease.takeovers)", "clean_handoff": "\(clean)",
                                                                   "epoch": "\(grant.epoch)", "previous_epoch": "\(grant.previous.map(String.init) ?? "none")"])
        if !staleIndexesChecked {
            staleIndexesChecked = true
            do {
                for name in try schema.dropStalePartitionIndexes(session.connection()) {
                    logger.notice("dropped the index of a former partition count: no worker uses it any more", metadata: ["index": "\(name)"])
                }
            } catch {
                logger.warning("cannot drop the indexes of former partition counts (they cost the application's writes until dropped)", metadata: ["error": "\(error)"])
            }
        }
        try emitStats()
    }

    /// Just took the lease from a standby position: did the previous holder hand it over cleanly
    /// (its handoff lock is held: it let the lease go with nothing in flight)? Then wait for that
    /// lock to go (the holder lets it go once it sees us hold the lease), so a later successor of
    /// ours never mistakes our own requests for a clean handoff. False: fence as usual.
    private func awaitCleanHandoff() -> Bool {
        guard let db = try? session.connection(), (try? schema.heldByAnotherSession(db, key: schema.handoffKey)) == true else { return false }
        let deadline = monotonicSeconds() + 5
        while monotonicSeconds() < deadline {
            guard let held = try? schema.heldByAnotherSession(db, key: schema.handoffKey) else { return false }
            if !held { return true }
            _ = Poll.wait(readable: [], timeout: 0.05)
        }
        return false
    }

    /// A standby's look at the holder: a holder that shows no sign of life for
    /// `lease_expiry_seconds` (a paused host keeps its session and lock) has its backend ended.
    /// True when it was asked to end.
    private func endSilentHolder(_ db: PostgresConnection) -> Bool {
        let holder: (pid: Int32, silentSeconds: Double, name: String)?
        do {
            holder = try schema.expiredHolder(db, expirySeconds: config.service.leaseExpirySeconds)
        } catch {
            logger.debug("cannot look at the lease holder's last sign of life", metadata: ["error": "\(error)"])
            return false
        }
        guard let holder else { return false }
        do {
            let ended = try schema.terminateHolder(db, pid: holder.pid)
            logger.warning("the lease holder of this table showed no sign of life: ended its database session to take over", metadata: [
                "leader": "\(DatabaseSession.instance(fromApplicationName: holder.name))", "silent_seconds": "\((holder.silentSeconds * 10).rounded() / 10)",
                "backend_pid": "\(holder.pid)", "ended": "\(ended)"])
            return ended
        } catch {
            if lastExpiredHolderPid != holder.pid {
                lastExpiredHolderPid = holder.pid
                logger.error("the lease holder of this table shows no sign of life, but its session cannot be ended: grant this role pg_signal_backend (GRANT pg_signal_backend TO <role>) or run every instance as the same role", metadata: [
                    "leader": "\(DatabaseSession.instance(fromApplicationName: holder.name))", "error": "\(error)"])
            }
            return false
        }
    }

    /// The slot is streamed only under the lease: what was read is written and confirmed first.
    private func stopStreams() {
        wal?.stop()
        leftover?.stop()
    }

    /// The lease is gone or must go (stale epoch, lost session): drop the session (the lock goes
    /// with it) and stand by; the loop reconnects and writes only what is owed for 2xx answers.
    private func loseLease() {
        stopStreams()
        lease.connectionLost()
        generationHeld = false
        session.close()
    }

    /// Renew the grant when due (also while idle: a standby reads the renewal). False when the
    /// lease is gone (the session failed or another grant is newer): it is let go at once.
    @discardableResult
    private func renewLeaseIfDue(force: Bool = false) -> Bool {
        let now = monotonicSeconds()
        guard lease.isHeld, let epoch = lease.epoch else { return false }
        guard force || lease.renewalDue(now: now) else { return true }
        do {
            if try schema.renewLease(session.connection(), epoch: epoch) {
                lease.renewed(at: now)
                return true
            }
            logger.warning("this table's lease was granted to another session since (epoch \(epoch) is stale): sending nothing more")
        } catch {
            logger.warning("cannot confirm the lease of this table: sending nothing more", metadata: ["error": "\(error)"])
        }
        loseLease()
        return false
    }

    /// Partitions spread across instances: when this instance leads two more of the table's
    /// partitions than another instance standing by for ours, and ours is our highest, hand it
    /// over (PartitionPicture.shouldYield). Returns true when the lease was let go.
    private func yieldToSpreadPartitions() -> Bool {
        guard let db = try? session.connection(), let picture = try? schema.partitionPicture(db),
              picture.shouldYield(instance: config.resolvedInstanceId, partition: schema.partition.index) else { return false }
        logger.notice("letting this partition go to spread the table's partitions across instances",
                      metadata: ["leaders": "\(picture.leaders.sorted { $0.key < $1.key }.map { "\($0.key):\($0.value)" }.joined(separator: ","))"])
        guard handOver() else { return false }
        lease.yielded()
        leaseCooldownUntil = monotonicSeconds() + max(5, 2 * config.service.leaseRetrySeconds)
        try? emitStats()
        return true
    }

    /// Stopping with the lease and nothing in flight: hand it over, so a standby elsewhere
    /// takes over without waiting the fence. Hold the handoff lock, let the lease go, and keep
    /// the handoff lock until another session holds the lease (or a few seconds pass).
    @discardableResult
    private func handOver() -> Bool {
        // The slot is the successor's to stream as soon as it holds the lease: what was read is
        // written and confirmed first (WalStreamer.stop).
        stopStreams()
        guard lease.reported == .leader, !runner.abandonedInFlight, let db = try? session.connection() else { return false }
        do {
            guard try schema.holdHandoff(db) else { return false }
            try schema.releaseLease(db)
            lease.released()
            let deadline = monotonicSeconds() + min(config.service.leaseRetrySeconds + 1, max(0.5, config.service.shutdownTimeoutSeconds / 2))
            var taken = false
            while monotonicSeconds() < deadline {
                if try schema.heldByAnotherSession(db, key: schema.leaseKey) { taken = true; break }
                _ = Poll.wait(readable: [], timeout: 0.05)
            }
            try schema.releaseHandoff(db)
            if taken {
                let holder = (try? schema.leaseHolder(db)).flatMap { $0 }.map(DatabaseSession.instance(fromApplicationName:))
                logger.notice("handed the lease of this table over", metadata: ["leader": "\(holder ?? "unknown")"])
            }
            return true
        } catch {
            logger.debug("could not hand the lease over: \(error)")
            return !lease.isHeld
        }
    }

    /// The connection is gone: connect again, then write what the last round still owes
    /// (acknowledgements of payloads already answered 2xx). The lease went with the session.
    private func reconnect() throws {
        if lease.isHeld { logger.warning("lost the lease of this table with the database session") }
        lease.connectionLost()
        generationHeld = false  // it went with the session
        session.close()
        // The lease went with the session: another instance may own these rows now.
        let dropped = runner.dropOwedExceptAcknowledgements()
        if dropped > 0 { logger.info("dropped \(dropped) owed reschedule(s) or dead letter(s) of a lost lease: the rows stay due for whoever leads") }
        stats.database = .down
        try emitStats()
        while true {
            try connect(reconnecting: true)
            do {
                try runner.flushPending()
                return
            } catch {
                if !error.isConnectionLost { try databaseFailed(error) ; return }
                logger.warning("database connection lost again while acknowledging", metadata: ["error": "\(error)"])
                session.close()
            }
        }
    }

    /// A database error outside the atomic data query: a lost connection reconnects; a missing
    /// tracking table or privilege stops the worker (exit 78); anything else is a crash.
    private func databaseFailed(_ error: PostgresError) throws {
        if error.isConnectionLost {
            logger.warning("database connection lost", metadata: ["error": "\(error)"])
            try reconnect()
            return
        }
        if error.sqlState == "42P01", try recreateTrackingTables() {
            return
        }
        if error.sqlState == "42P01" || error.sqlState == "42501" {
            throw Stop.permanent("table \(table.qualifiedName): \(error)")
        }
        throw error
    }

    /// The tracking table was dropped under us: every write of the application to the watched
    /// table now fails in our trigger. Recreate it at once (setup is idempotent) and say so loudly.
    /// Returns false when that is not what happened or it cannot be done.
    private func recreateTrackingTables() throws -> Bool {
        guard let db = try? session.connection(),
              let missing = try? db.execute("SELECT to_regclass($1) IS NULL OR to_regclass($2) IS NULL", [schema.changesTable, schema.failedTable]),
              missing[0, 0] == "t" else { return false }
        do {
            try schema.install(on: db)
        } catch {
            logger.error("the tracking table \(schema.changesTable) is missing and cannot be recreated: \(error)")
            return false
        }
        logger.error("the tracking table \(schema.changesTable) was dropped while the service ran: recreated it. Writes to \(table.qualifiedName) failed while it was missing, and unpublished changes recorded in it are lost; republish those keys from the source if the ingestor needs them. Payload ids carry a new epoch, so they do not repeat the old ones")
        try? session.refreshEpoch()  // new payload ids must not repeat the old table's
        runner.dropAllOwed()  // writes owed to the old table's ids would land on new changes
        return true
    }

    // MARK: - one batch

    private func processBatch() throws -> Int {
        let started = monotonicSeconds()
        let batch: Batch
        do {
            let queryStarted = monotonicSeconds()
            if let ahead = prefetcher.take(token: prefetchToken) {
                batch = ahead.batch
                stats.query.record(ahead.seconds)
            } else {
                do {
                    try session.prepareIfNeeded()
                } catch where !error.isConnectionLost && QueryFailure.classify(error) == .table {
                    // Still failing as the table problem was found: report PostgreSQL's error.
                    reportTableProblem(error)
                    return 0
                }
                batch = try reader.read(session.connection(), probeFirst: idleDelay > 0, batched: session.batched)
                if !batch.isEmpty { stats.query.record(monotonicSeconds() - queryStarted) }
            }
            if let failure = batch.batchedFailure {
                // A statement timeout counts against the whole batch in one statement: stay key by
                // key on this connection rather than pay the timeout on every batch.
                if failure.sqlState == "57014" {
                    session.batched = false
                    logger.info("atomic data query: one statement per key from now on (the whole-batch statement timed out)", metadata: ["error": "\(failure)"])
                } else {
                    logger.debug("atomic data query: the whole-batch statement failed, the batch was queried key by key", metadata: ["error": "\(failure)"])
                }
            }
        } catch {
            try databaseFailed(error)
            return 0
        }
        if batch.isEmpty {
            clearTableProblem()
            return 0
        }

        var items: [DeliveryItem] = []
        items.reserveCapacity(batch.groups.count)
        for (index, group) in batch.groups.enumerated() {
            var item = DeliveryItem(ids: group.ids, primaryKey: group.primaryKey, attempts: group.attempts, permanentFailures: group.permanentFailures)
            // Without an error, its request is built when it is sent (below).
            if let error = batch.queryError(index) {
                if error.isConnectionLost {
                    try databaseFailed(error)
                    return 0
                }
                switch QueryFailure.classify(error) {
                case .table:
                    reportTableProblem(error)
                    return 0
                case .transient:
                    item.knownFailure = .failed("atomic data query failed: \(error)", retryAfter: nil)
                case .key:
                    item.knownFailure = .rejected("atomic data query failed: \(error)")
                }
                stats.queryErrors += 1
                logger.warning("atomic data query failed", metadata: ["primary_key": "\(group.primaryKey)", "change_id": "\(group.latest.id)", "error": "\(error)"])
                if let detail = error.detail { logger.debug("atomic data query failed: detail", metadata: ["primary_key": "\(group.primaryKey)", "detail": "\(detail)"]) }
            }
            items.append(item)
        }
        clearTableProblem()
        let changeCount = batch.changeCount
        stats.changesProcessed += changeCount

        let policy = DeliveryPolicy(maxRetries: config.ingestor.maxRetries,
                                    backoff: Backoff(initial: config.ingestor.retryDelaySeconds, maximum: config.ingestor.maxRetryDelaySeconds),
                                    deadLetterAfter: config.service.deadLetterAfterAttempts)
        let limits = builder.batchURL == nil ? nil : RequestLimits(documents: config.service.maxDocumentsPerRequest, bytes: config.service.maxRequestBytes)
        var plan = DeliveryPlan(items: items, policy: policy, breaker: breaker, limits: limits)
        // Each document is built as it is sent (building 5,000 bodies built up front held ~5 MB
        // for the whole batch; batch mode builds a wave's documents when it packs them), from
        // inputs fixed for the batch (the time and the epoch read once), so a retry within the
        // batch sends the same bytes under the same Idempotency-Key.
        let unixNow = Date().timeIntervalSince1970
        let epoch = session.epoch
        let lease = (name: schema.leaseName, epoch: self.lease.epoch ?? 0)
        let document: (Int) -> Payload = { [table] index in
            let group = batch.groups[index]
            return Payload.build(table: table, epoch: epoch, changes: group, atomicData: batch.atomicData[index], unixNow: unixNow,
                                 retryCount: group.attempts, leaseEpoch: lease.epoch)
        }
        // A full batch: more is probably due. Read the next batch (without this one's keys) on the
        // second connection while this one is sent (BatchPrefetcher says why that is safe).
        if batch.dueCount >= config.service.batchSize {
            prefetcher.start(token: prefetchToken, excludingKeys: batch.groups.map(\.primaryKey), batched: session.batched)
        }
        let end: DeliveryEnd
        if limits != nil {
            // Items whose query failed are settled before anything is sent: never asked for.
            end = runner.run(&plan, document: document, request: { [builder] payloads in
                builder.request(for: payloads, unixNow: Date().timeIntervalSince1970, lease: lease)
            })
        } else {
            end = runner.run(&plan, request: { [builder] index in
                guard batch.queryError(index) == nil else {
                    return HTTPRequest(url: builder.url)  // never sent: the item is settled before sending
                }
                return builder.request(for: document(index), unixNow: Date().timeIntervalSince1970, lease: lease)
            })
        }
        if runner.abandonedInFlight { abandonedAt = monotonicSeconds() }
        breaker = plan.breaker
        noteBreaker()
        copyCounters()
        stats.inFlight = 0
        stats.batch.record(monotonicSeconds() - started)
        // A permanent problem met while waiting (the trigger dropped during a retry's wait): exit 78.
        if let deferred = deferredError {
            deferredError = nil
            throw deferred
        }
        switch end {
        case .finished:
            break
        case .stopRequested:
            stopRequested = true
            throw Stop.requested
        case .storeFailed(let error):
            try databaseFailed(error)
        case .leaseLost(let why):
            logger.warning("lost the lease of this table mid-batch: \(why); standing by", metadata: ["epoch": "\(lease.epoch)"])
            if self.lease.isHeld { loseLease() }
        }
        return changeCount
    }

    /// What a batch read ahead must still match to be sent.
    private var prefetchToken: BatchPrefetcher.Token {
        BatchPrefetcher.Token(leaseGrant: leaseGrants, sessionGeneration: sessionGeneration, epoch: session.epoch)
    }

    private func reportTableProblem(_ error: PostgresError) {
        let fix: String
        switch error.sqlState {
        case "42501": fix = "grant the database user SELECT on every table the atomic data query reads (see docs/database.md, least privilege)"
        case "42P01", "3F000": fix = "a table or schema the atomic data query reads is gone: restore it or fix atomic_data_query"
        case "42703": fix = "a column the atomic data query reads is gone: restore it or fix atomic_data_query"
        case "42883": fix = "a function the atomic data query calls is gone: restore it or fix atomic_data_query"
        default: fix = "fix the table or atomic_data_query"
        }
        let problem = "the atomic data query of \(table.qualifiedName) fails for every key (\(error.message), SQLSTATE \(error.sqlState ?? "?")): \(fix); its changes are kept and publishing resumes by itself once fixed"
        if stats.tableProblem != problem {
            logger.error("table cannot be published: \(problem)")
        }
        stats.tableProblem = problem
        // A cached plan may be what fails (a dropped column): the next try prepares afresh. The
        // session (and the lease) are kept; a statement that cannot prepare yet is prepared again
        // before the next read (DatabaseSession.prepareIfNeeded), which then meets this error again.
        if session.prepared { try? session.reprepare() }
    }

    private func clearTableProblem() {
        if stats.tableProblem != nil {
            logger.notice("table can be published again")
            stats.tableProblem = nil
        }
    }

    private func noteDelivery(_ event: DeliveryLogEvent) {
        switch event {
        case .published(let seconds, let item):
            noteAnswered(timedOut: false)
            stats.publish.record(seconds)
            lastPublishUnix = Date().timeIntervalSince1970
            if logger.logLevel <= .debug {
                logger.debug("published", metadata: ["primary_key": "\(item.primaryKey)", "change_id": "\(item.ids.last ?? 0)"])
            }
        case .failed(let error, let response, let item, let documents):
            if case .failure(let transport) = response, transport.isTimeout {
                stats.publishTimeouts += 1
                noteAnswered(timedOut: true)
            } else {
                noteAnswered(timedOut: false)
            }
            var meta: Logger.Metadata = ["primary_key": "\(item.primaryKey)", "change_id": "\(item.ids.last ?? 0)", "error": "\(error)"]
            if case .success(let r) = response {
                stats.publish.record(r.seconds)
                meta["http_status"] = "\(r.status)"
                if logger.logLevel <= .debug {
                    logger.debug("ingestor response body", metadata: ["primary_key": "\(item.primaryKey)", "change_id": "\(item.ids.last ?? 0)", "body": "\(String(r.bodyText.prefix(2000)))"])
                }
            }
            if documents > 1 { meta["documents"] = "\(documents)" }
            logger.warning("publish failed", metadata: meta)
        case .deadLettered(let item, let error):
            logger.error("change moved to dead letters", metadata: ["primary_key": "\(item.primaryKey)", "change_id": "\(item.ids.last ?? 0)", "error": "\(error)"])
        case .storeFailed(let error):
            logger.error("cannot write to the tracking table", metadata: ["error": "\(error)"])
        }
    }

    /// Timeouts in a row make an ingestor problem (see `timeoutsBeforeProblem`); any other outcome
    /// ends it. Logged on change.
    private func noteAnswered(timedOut: Bool) {
        guard timedOut else {
            timeoutsInARow = 0
            if stats.ingestorProblem != nil {
                stats.ingestorProblem = nil
                logger.notice("the ingestor answers within ingestor.timeout_seconds again")
            }
            return
        }
        timeoutsInARow += 1
        guard timeoutsInARow >= Self.timeoutsBeforeProblem, stats.ingestorProblem == nil else { return }
        let seconds = config.ingestor.timeoutSeconds
        let problem = "\(ResponseClassifier.timeoutText(seconds)) (\(timeoutsInARow) requests in a row timed out): they are retried, but cannot succeed while the ingestor takes longer; raise ingestor.timeout_seconds or find out why the ingestor is slow"
        stats.ingestorProblem = problem
        logger.warning("\(problem)", metadata: ["timeout_seconds": "\(seconds)"])
    }

    private func copyCounters() {
        let c = runner.counters
        stats.publishSuccesses = c.successes
        stats.publishFailures = c.failures
        stats.retries = c.retries
        stats.changesPublished = c.changesPublished
        stats.deadLettered = c.deadLettered
    }

    /// Log and export breaker state changes.
    private func noteBreaker() {
        let now = breaker.reported
        if now != stats.circuitBreaker {
            let level: Logger.Level = now == .closed ? .notice : .warning
            logger.log(level: level, "circuit breaker \(stats.circuitBreaker.rawValue) -> \(now.rawValue)", metadata: ["circuit_breaker": "\(now.rawValue)"])
            stats.circuitBreaker = now
        }
    }

    // MARK: - waiting, stopping, reporting

    private func checkStop() throws {
        if stopRequested { throw Stop.requested }
        let signals = Signals.take()
        if signals.contains(.hup) {
            logger.info("SIGHUP ignored: the supervisor reloads the configuration and restarts workers as needed")
        }
        if !signals.intersection([.term, .int]).isEmpty {
            stopRequested = true
            throw Stop.requested
        }
    }

    /// Sleep up to `seconds`, waking for signals and (supervised) stdin EOF; stats keep flowing.
    private func pause(_ seconds: Double) throws {
        let deadline = monotonicSeconds() + seconds
        while true {
            try checkStop()
            try emitStatsIfDue()
            let left = deadline - monotonicSeconds()
            if left <= 0 { return }
            try waitForEvents(timeout: min(left, 1.0))
        }
    }

    /// After an empty read: one short plain wait (a busy table's next change is usually that
    /// close), then sleep holding the table's wake-up flag, so the trigger notifies the next change
    /// (TrackingSchema+Wake.swift for why none is missed). While asleep, one probe per
    /// `polling_interval_seconds` finds retries come due, unless the backlog (read every 5 s for
    /// the stats) was zero since the flag was taken: then every new row notifies. Returns true
    /// when a change was notified or found due, false when the flag could not be taken.
    private func sleepUntilChange() throws -> Bool {
        if idleDelay == 0 {
            idleDelay = 0.01
            try pause(idleDelay)
        }
        if session.twoPhaseCommit { return false }  // no notifications: poll (TrackingSchema+Wake.swift)
        do {
            let db = try session.connection()
            _ = try db.takeNotifications()  // sent for changes already read
            guard try schema.trySleep(db) else { return false }
            defer { try? schema.wake(db) }  // a lost session released it anyway
            let asleepAt = monotonicSeconds()
            var probedAt = asleepAt
            if try db.execute(schema.anyDueSQL)[0, 0] == "t" { return true }
            let interval = config.service.pollingIntervalSeconds
            while true {
                try checkStop()
                try emitStatsIfDue()
                if try db.takeNotifications() > 0 { return true }
                // A partitioned table's leader looks at the spread every few seconds (run loop).
                if table.partitions > 1 && lease.reported == .leader && monotonicSeconds() >= nextBalanceAt { return true }
                let now = monotonicSeconds()
                // Read asleep, an empty tracking table can only fill with notified rows: no probe.
                if lastBacklogAt > asleepAt && stats.backlog == 0 { probedAt = now }
                if now - probedAt >= interval {
                    if try db.execute(schema.anyDueSQL)[0, 0] == "t" { return true }
                    probedAt = now
                    continue
                }
                try waitForEvents(timeout: min(probedAt + interval - now, 1.0), database: db.socket)
            }
        } catch let error as PostgresError {
            try databaseFailed(error)
            return true
        }
    }

    /// poll(2) on the signal pipe, the database session when given (a notification) and,
    /// supervised, stdin (EOF: the supervisor is gone).
    private func waitForEvents(timeout: Double, database: Int32? = nil) throws {
        var fds = [Signals.wakeFD]
        if let database, database >= 0 { fds.append(database) }
        if supervised { fds.append(0) }
        let ready = Poll.wait(readable: fds, timeout: timeout)
        if supervised && (ready.readable.contains(0) || ready.hangup.contains(0)) {
            var buffer = [UInt8](repeating: 0, count: 512)
            let n = read(0, &buffer, buffer.count)
            if n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR) {
                logger.notice("supervisor is gone (stdin closed), stopping")
                stopRequested = true
                throw Stop.requested
            }
        }
    }

    /// Stats at least once a second; the backlog (and whether capture still works) every few.
    private func emitStatsIfDue() throws {
        if monotonicSeconds() - lastStatsAt >= 1.0 { try emitStats() }
    }

    private func emitStats(refreshBacklog: Bool = true) throws {
        lastStatsAt = monotonicSeconds()
        if refreshBacklog, session.isConnected, lastStatsAt - lastBacklogAt >= (stats.backlog > 0 ? 1.0 : Self.backlogIntervalSeconds) {
            lastBacklogAt = lastStatsAt
            do {
                let backlog = try schema.backlog(session.connection())
                stats.backlog = backlog.count
                stats.oldestChangeAgeSeconds = backlog.oldestAgeSeconds
                stats.deadLetters = backlog.deadLetters
                stats.oldestDeadLetterAgeSeconds = backlog.oldestDeadLetterAgeSeconds
                if wal != nil {
                    stats.walRetainedBytes = backlog.walRetainedBytes
                    stats.walConfirmedLagBytes = backlog.walConfirmedLagBytes
                    stats.walSafeBytes = backlog.walSafeBytes
                    stats.walStatus = backlog.walStatus
                }
                if !backlog.capturing && table.capture == .wal {
                    throw Stop.permanent(schema.slotLostSentence(database: config.database.databaseName))
                }
                if !backlog.capturing {
                    throw Stop.permanent("the watched table \(table.qualifiedName) or its capture trigger \(TrackingSchema.triggerName) no longer exists: changes are not being recorded; restore it and run setup, or send SIGHUP to re-install")
                }
                if let missing = backlog.missingColumns {
                    throw Stop.permanent(schema.missingColumnsSentence(missing))
                }
            } catch let error as PostgresError {
                if !error.isConnectionLost { try databaseFailed(error) }
            }
        }
        if refreshBacklog, session.isConnected {
            renewLeaseIfDue()
            try readLeftoverSlot()  // not from the heartbeat: the session may be mid-query there
        }
        try reconcileWAL()
        stats.database = session.isConnected ? .up : .down
        if !session.isConnected && lease.isHeld { lease.connectionLost() }
        stats.lease = lease.reported
        stats.leaseHeldSeconds = lease.heldSeconds(now: lastStatsAt)
        stats.takeovers = lease.takeovers
        if let lastPublishUnix { stats.lastPublishAt = Timestamp.iso8601(unixSeconds: lastPublishUnix) }
        emit(.stats(table: workerName, stats: stats))
    }

    /// WAL mode: stream while the lease is held (the fence included: writing keys sends nothing),
    /// not otherwise; a lost slot ends the table with its sentence. Trigger mode: a slot left by
    /// WAL mode is streamed the same way while it is read to its end (`readLeftoverSlot`).
    private func reconcileWAL() throws {
        if let leftover, leftoverRead != .done {
            if let failure = leftover.current.failure { throw Stop.permanent(failure) }
            if !(lease.isHeld && session.isConnected) {
                // Whoever holds the lease next reads it; looked at again if the lease comes back.
                leftover.stop()
                leftoverRead = .unchecked
            }
        }
        guard let wal else { return }
        if let failure = wal.current.failure { throw Stop.permanent(failure) }
        if lease.isHeld && session.isConnected { wal.start() } else { wal.stop() }
    }

    /// Trigger mode, with the lease (docs/database.md, "Switching"): a slot of ours left by
    /// `capture = "wal"` holds the changes committed before the triggers existed. Take a position
    /// after the triggers' commit, stream the slot (keys into T_changes, as in WAL mode) until its
    /// confirmed position has passed it, then drop the slot and the publication. Only the lease
    /// holder does, and a slot still streamed elsewhere is not dropped (tried again later).
    private func readLeftoverSlot() throws {
        guard let leftover, leftoverRead != .done, lease.isHeld, session.isConnected else { return }
        if let failure = leftover.current.failure { throw Stop.permanent(failure) }
        let database = config.database.databaseName
        do {
            let db = try session.connection()
            switch leftoverRead {
            case .done:
                return
            case .unchecked:
                switch try schema.leftoverSlot(on: db) {
                case .none:
                    leftoverRead = .done
                case .lost:
                    throw Stop.permanent(schema.slotLostSentence(database: database))
                case .readable:
                    // No trigger: the backlog's check ends the table with its own sentence.
                    guard let position = try schema.triggerCapturePosition(on: db) else { return }
                    leftoverRead = .reading(until: position)
                    logger.info("reading the replication slot left by capture = \"wal\" up to where the capture triggers took over, then dropping it",
                                metadata: ["slot": "\(schema.slotName(database: database))", "until_lsn": "\(Self.lsnText(position))"])
                    leftover.start()
                }
            case .reading(let position):
                guard leftover.current.confirmedLSN >= position else {
                    leftover.start()
                    return
                }
                leftover.stop()
                if !leftover.isRunning { try dropLeftoverSlot(db, confirmed: leftover.current.confirmedLSN) }
            }
        } catch let error as PostgresError {
            if !error.isConnectionLost { try databaseFailed(error) }
        }
    }

    /// The slot is read past the triggers' position and no longer streamed here: drop it, then
    /// the publication (nothing reads it; a failure to drop that one only leaves an object behind).
    private func dropLeftoverSlot(_ db: PostgresConnection, confirmed: UInt64) throws {
        guard try schema.dropLeftoverSlot(on: db) else { return }
        leftoverRead = .done
        let slot = schema.slotName(database: config.database.databaseName)
        var publication = "dropped it and its publication"
        do {
            try db.execute(schema.dropPublicationSQL)
        } catch {
            if error.isConnectionLost { throw error }
            publication = "dropped it; the publication \(schema.publicationName) could not be dropped (\(error)): drop it by hand, nothing reads it"
        }
        logger.info("read the replication slot left by capture = \"wal\" past where the capture triggers took over, and \(publication)",
                    metadata: ["slot": "\(slot)", "confirmed_lsn": "\(Self.lsnText(confirmed))"])
    }

    /// PostgreSQL's `X/Y` form of a WAL position.
    static func lsnText(_ lsn: UInt64) -> String {
        String(lsn >> 32, radix: 16, uppercase: true) + "/" + String(lsn & 0xFFFF_FFFF, radix: 16, uppercase: true)
    }

    private func emit(_ message: WorkerMessage) {
        pipe.send(message)
    }

    /// How long an exiting worker waits for a full pipe to take its last lines (a stopped
    /// supervisor reads them later, or never: it is not waited for longer).
    static let exitDrainSeconds = 2.0

    /// Is the supervisor silent (see `supervisorSilenceLimit`)? Logs each change.
    private func noteSupervisorSilence(now: Double) -> Bool {
        pipe.flush()
        let silentFor = pipe.supervisorSilentSeconds(now: now)
        let silent = silentFor >= supervisorSilenceLimit
        if silent != supervisorSilent {
            supervisorSilent = silent
            if silent {
                logger.warning("the supervisor has read nothing of this worker's reports for \(Int(silentFor)) s (stopped?): letting the lease of this table go and publishing nothing until it reads again, so a standby instance can take over",
                               metadata: ["limit_seconds": "\(supervisorSilenceLimit)"])
            } else {
                logger.notice("the supervisor reads this worker's reports again: trying for the lease")
            }
        }
        return silent
    }

    /// The supervisor is silent: hand the lease over (a standby takes it without the fence when
    /// nothing is in flight), else let it go with the session; stand by until it reads again.
    private func releaseLeaseForSilentSupervisor() {
        if handOver() {
            lease.yielded()
        } else if lease.isHeld {
            loseLease()
        }
        stats.leaseHolder = nil
        try? emitStats()
    }
}

// MARK: - the runner's host

extension TableWorker: DeliveryHost {
    var now: Double { monotonicSeconds() }
    var unixNow: Double { Date().timeIntervalSince1970 }

    func randomUnit() -> Double { Double.random(in: 0..<1, using: &random) }

    func wait(_ seconds: Double) -> TickVerdict {
        // In steps, so a lease lost during a long Retry-After ends the wait (pause renews it).
        let deadline = monotonicSeconds() + seconds
        do {
            while true {
                if !lease.isHeld { return .leaseLost }
                let left = deadline - monotonicSeconds()
                if left <= 0 { return .go }
                try pause(min(left, 0.5))
            }
        } catch Stop.requested {
            stopRequested = true
            return .stop
        } catch {
            deferredError = error
            return .stop
        }
    }

    func mayLaunch() -> TickVerdict {
        if stopRequested { return .stop }
        switch lease.launch(now: monotonicSeconds()) {
        case .go: return .go
        case .refuse: return .leaseLost
        case .confirmFirst: return renewLeaseIfDue(force: true) ? .go : .leaseLost
        }
    }

    func observe(_ breaker: CircuitBreaker) {
        self.breaker = breaker
        noteBreaker()
    }

    func tick(inFlight: Int) -> TickVerdict {
        stats.inFlight = inFlight
        do {
            try checkStop()
            if monotonicSeconds() - lastStatsAt >= 1.0 {
                copyCounters()
                try emitStats(refreshBacklog: false)
            }
            if supervised { try waitForEvents(timeout: 0) }
        } catch Stop.requested {
            stopRequested = true
            return .stop
        } catch {
            deferredError = error
            return .stop
        }
        // Renewed while requests are out, so a standby sees the leader alive during long answers.
        return renewLeaseIfDue() ? .go : .leaseLost
    }
}
