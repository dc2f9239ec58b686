// One table's worker: the loop of DESIGN.md section 5, single-threaded.
//
// Invariants:
// - The loop never blocks longer than one batch (bounded by the statement and HTTP timeouts);
//   between batches it waits in poll(2) on the signal self-pipe and, when supervised, on stdin,
//   so SIGTERM and the supervisor's death are noticed at once.
// - A tracking row is deleted only after a 2xx for the payload that covered it. A failure
//   records attempts, last_error and next_attempt_at in the table, not in memory.
// - Transient failures (transport errors, timeouts, 5xx, 408, 429) are retried forever with
//   capped backoff; permanent ones (an atomic data query that fails for that key, other 4xx)
//   move the key's rows to the dead-letter table after `dead_letter_after_attempts`.
// - Stats go to stdout at least once a second, cumulative.

import Foundation
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

    private let feed: ChangeFeed
    private let query: AtomicDataQuery
    private let http: HTTPClient
    private var db: PostgresConnection?
    private var stats = WorkerStats()
    private var lastStatsAt = 0.0
    private var lastBacklogAt = 0.0
    private var stopRequested = false
    private var idleDelay = 0.0
    private var breaker: CircuitBreaker
    private var random = SystemRandomNumberGenerator()
    private static let statementName = "adp_atomic_data"

    init(config: PublisherConfig, table: WatchedTable, supervised: Bool, logger: Logger) {
        self.config = config
        self.table = table
        self.supervised = supervised
        self.logger = logger
        feed = ChangeFeed(table: table)
        breaker = CircuitBreaker(failureThreshold: config.ingestor.circuitBreakerFailureThreshold,
                                 resetSeconds: config.ingestor.circuitBreakerResetSeconds)
        query = AtomicDataQuery(table.atomicDataQuery)
        http = HTTPClient(timeoutMilliseconds: config.ingestor.timeoutSeconds * 1000,
                          connectTimeoutMilliseconds: min(10, config.ingestor.timeoutSeconds) * 1000,
                          maxConnections: max(8, config.service.maxConcurrentPublishes * 2),
                          tls: HTTPTLSOptions(config.ingestor))  // issue11: ingestor.ca_file / client_cert / client_key
    }

    /// Runs until asked to stop; returns the exit status.
    func run() -> Int32 {
        do {
            try connectAndPrepare()
            // Stats first, so the supervisor's READY=1 and STATUS= already show the database up.
            try emitStats()
            emit(.ready(table: table.name, pid: getpid()))
            logger.info("worker ready", metadata: ["database": "\(ConnectionParameters(config.database, applicationName: "").safeDescription)"])
            while true {
                try checkStop()
                try emitStatsIfDue()
                guard let db, db.isConnected else {
                    try reconnect()
                    continue
                }
                if let wait = breaker.waitTime(now: monotonicSeconds()), wait > 0 {
                    // Open breaker: send nothing; the changes wait safely in the tracking table.
                    try pause(min(wait, 1.0))
                    continue
                }
                let processed = try processBatch(db)
                if processed > 0 {
                    idleDelay = 0
                    // Fresh figures for /metrics soon after work, without a line per batch.
                    if monotonicSeconds() - lastStatsAt >= 0.1 { try emitStats() }
                } else {
                    // Adaptive polling: right away while there is work, then backing off from
                    // 10 ms to the polling interval while idle.
                    idleDelay = min(max(idleDelay * 2, 0.01), config.service.pollingIntervalSeconds)
                    try pause(idleDelay)
                }
            }
        } catch Stop.requested {
            try? emitStats()
            logger.info("worker stopped")
            return ExitStatus.clean
        } catch let Stop.permanent(message) {
            logger.error("worker cannot run: \(message)")
            emit(.fatal(error: message))
            return ExitStatus.config
        } catch {
            logger.error("worker failed: \(error)")
            emit(.fatal(error: "\(error)"))
            return ExitStatus.transient
        }
    }

    // MARK: - database

    private func connectAndPrepare() throws {
        var attempt = 0
        while true {
            try checkStop()
            do {
                let connection = try PostgresConnection.connect(ConnectionParameters(config.database, applicationName: "atomic-data-publisher/\(table.name)"))
                connection.noticeHandler = { [logger] notice in logger.notice("\(notice)") }  // issue11: server NOTICEs to the log
                do {
                    try feed.schema.install(on: connection)
                    try connection.prepare(name: Self.statementName, sql: query.wrapped)
                } catch let problem as SchemaProblem {
                    throw Stop.permanent(problem.description)
                } catch let error as PostgresError where !error.isConnectionLost && error.isPermanent {
                    throw Stop.permanent("table \(table.qualifiedName): \(error)")
                }
                db = connection
                stats.database = "up"
                if attempt > 0 { logger.notice("database connection restored") }
                return
            } catch let error as PostgresError {
                if error.isConfigurationFailure {  // issue11: rejected login or TLS verification failure: exit 78
                    throw Stop.permanent(error.description)
                }
                stats.database = "down"
                let delay = Backoff(initial: 0.5, maximum: 30).delay(attempt: attempt, unit: Double.random(in: 0..<1, using: &random))
                logger.warning("database unavailable, retrying", metadata: ["error": "\(error)", "retry_in_seconds": "\(String(format: "%.1f", delay))"])
                attempt += 1
                try pause(delay)
            }
        }
    }

    private func reconnect() throws {
        db?.close()
        db = nil
        stats.database = "down"
        try emitStats()
        try connectAndPrepare()
    }

    /// Handle a database error in the loop: a lost connection reconnects, anything else is a bug
    /// in our SQL or a permission revoked under us.
    private func databaseFailed(_ error: PostgresError) throws {
        if error.isConnectionLost {
            logger.warning("database connection lost", metadata: ["error": "\(error)"])
            try reconnect()
            return
        }
        if error.sqlState == "42P01" || error.sqlState == "42501" {
            throw Stop.permanent("table \(table.qualifiedName): \(error)")
        }
        throw error
    }

    // MARK: - one batch

    private func processBatch(_ db: PostgresConnection) throws -> Int {
        let started = monotonicSeconds()
        let batch: (rows: [ChangeRow], queried: [KeyChanges], results: [Result<QueryResult, PostgresError>])
        do {
            batch = try readBatch(db)
        } catch {
            try databaseFailed(error)
            return 0
        }
        let rows = batch.rows
        if rows.isEmpty { return 0 }
        let groups = KeyChanges.coalesce(rows)
        stats.changesProcessed += rows.count
        let (queried, results) = (batch.queried, batch.results)
        var atomicData: [String: Result<String, PostgresError>] = [:]
        for (group, result) in zip(queried, results) {
            atomicData[group.primaryKey] = result.map { $0.rows.first?.first.flatMap { $0 } ?? "[]" }
        }
        if case .failure(let error)? = results.first(where: { if case .failure(let e) = $0 { return e.isConnectionLost } else { return false } }) {
            try databaseFailed(error)
            return 0
        }

        var published: [KeyChanges] = []
        var atomicJSON: [String] = []
        var failures: [Failure] = []
        for group in groups {
            let data: String
            switch atomicData[group.primaryKey] {
            case .failure(let error):
                stats.queryErrors += 1
                logger.warning("atomic data query failed", metadata: ["primary_key": "\(group.primaryKey)", "change_id": "\(group.latest.id)", "error": "\(error)"])
                failures.append(Failure(group: group, error: "atomic data query failed: \(error)", permanent: true, retryAfter: nil))
                continue
            case .success(let json):
                data = json
            case nil:
                data = "[]"
            }
            atomicJSON.append(data)
            published.append(group)
        }
        try settle(db, acked: [], failures: failures)

        // Publish rounds: the first attempt, then up to max_retries immediate retries of the
        // transient failures with full-jitter backoff. Successes are acknowledged after every
        // round, so a slow retry never holds back what already went through. What is still
        // failing after the last round is rescheduled in the table.
        var pending = Array(published.indices)
        var round = 0
        // The latest transient failure of each key still being retried, to reschedule it with.
        var lastFailure: [Int: Failure] = [:]
        while !pending.isEmpty {
            let permits = breaker.permits(now: monotonicSeconds())
            noteBreaker()
            if permits == 0 { break }  // open: the rest waits, untouched, in the tracking table
            let sending = permits.map { Array(pending.prefix($0)) } ?? pending
            stats.inFlight = min(sending.count, config.service.maxConcurrentPublishes)
            var acked: [Int64] = []
            var finalFailures: [Failure] = []
            var retry: [Int] = []
            var retryAfter: Double?
            var attempted: Set<Int> = []
            let now = Date()
            let requests = sending.map { request(for: published[$0], atomicData: atomicJSON[$0], now: now, retryCount: published[$0].attempts + round) }
            _ = http.perform(requests, maxConcurrent: config.service.maxConcurrentPublishes, shouldAbort: { [self] in
                if stopRequested { return true }
                stopRequested = !Signals.take().intersection([.term, .int]).isEmpty
                return stopRequested
            }, onComplete: { [self] position, response in
                let index = sending[position]
                let group = published[index]
                attempted.insert(index)
                switch classify(response, group: group) {
                case .success:
                    breaker.recordSuccess()
                    stats.publishSuccesses += 1
                    stats.changesPublished += group.rows.count
                    acked.append(contentsOf: group.ids)
                case .aborted:
                    break  // shutting down: the rows stay and are published after the restart
                case .failed(var failure):
                    failure.attemptsMade = round + 1
                    stats.publishFailures += 1
                    if failure.permanent {
                        finalFailures.append(failure)
                    } else {
                        breaker.recordTransientFailure(now: monotonicSeconds())
                        if round < config.ingestor.maxRetries && !stopRequested {
                            retry.append(index)
                            if let after = failure.retryAfter { retryAfter = max(retryAfter ?? 0, after) }
                        } else {
                            finalFailures.append(failure)
                        }
                        lastFailure[index] = failure
                    }
                }
                // An open breaker stops the rest of the round from being sent at all.
                if case .open = breaker.state { return false }
                return true
            })
            stats.inFlight = 0
            noteBreaker()
            try settle(db, acked: acked, failures: finalFailures)
            pending = retry + pending.filter { !attempted.contains($0) }
            if stopRequested { break }
            if case .open = breaker.state { break }  // opened this round: no retry storm
            if !retry.isEmpty {
                round += 1
                stats.retries += retry.count
                let backoff = Backoff(initial: config.ingestor.retryDelaySeconds, maximum: config.ingestor.maxRetryDelaySeconds)
                let delay = retryAfter.map { min($0, config.ingestor.maxRetryDelaySeconds) }
                    ?? backoff.fullJitter(attempt: round - 1, unit: Double.random(in: 0..<1, using: &random))
                do {
                    try pause(delay)
                } catch {
                    try settle(db, acked: [], failures: pending.compactMap { lastFailure[$0] })
                    throw error
                }
            }
        }
        // Keys whose last attempt failed and that are not retried now are rescheduled in the
        // table; keys never sent (breaker open, shutdown) stay as they are.
        try settle(db, acked: [], failures: pending.compactMap { lastFailure[$0] })
        stats.batch.record(monotonicSeconds() - started)
        if stopRequested { throw Stop.requested }
        return rows.count
    }

    /// Read due changes and the atomic data of their keys (every key whose latest change is not
    /// a delete, pipelined: one round trip) in one REPEATABLE READ snapshot. The state published
    /// for a key is then exactly its state as of the changes read: a change committed meanwhile is
    /// published next time with its own state, instead of this batch publishing its state early
    /// and the next batch publishing the same state again.
    private func readBatch(_ db: PostgresConnection) throws(PostgresError) -> (rows: [ChangeRow], queried: [KeyChanges], results: [Result<QueryResult, PostgresError>]) {
        try db.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        do {
            var rows = try feed.fetchDue(db, limit: config.service.batchSize)
            if rows.isEmpty {
                try db.execute("COMMIT")
                return ([], [], [])
            }
            // The keys' later changes beyond the LIMIT are in the state read below too: cover
            // them now rather than publish the same state once per slice of a backlog.
            var keys: [String] = []
            var seen = Set<String>()
            for row in rows where seen.insert(row.primaryKey).inserted { keys.append(row.primaryKey) }
            rows += try feed.fetchCovered(db, keys: keys, excluding: rows.map(\.id), limit: config.service.batchSize * 4)
            let queried = KeyChanges.coalesce(rows).filter { $0.latest.operation != .delete }
            let parameters = queried.map { [$0.primaryKey] as [String?] }
            let queryStarted = monotonicSeconds()
            var results = try db.pipelinePrepared(name: Self.statementName, parameterLists: parameters)
            if results.contains(where: { if case .failure = $0 { true } else { false } }) {
                // A failing query aborts the snapshot: read the keys again, each on its own, so
                // one bad key gets its own error and the others their data.
                try db.execute("ROLLBACK")
                results = try db.pipelinePrepared(name: Self.statementName, parameterLists: parameters)
            } else {
                try db.execute("COMMIT")
            }
            stats.query.record(monotonicSeconds() - queryStarted)
            return (rows, queried, results)
        } catch {
            if !error.isConnectionLost { _ = try? db.execute("ROLLBACK") }
            throw error
        }
    }

    /// One publish: the payload and headers of DESIGN.md section 5. The id (and Idempotency-Key)
    /// stays the same across retries; retry_count counts them.
    private func request(for group: KeyChanges, atomicData: String, now: Date, retryCount: Int) -> HTTPRequest {
        let payload = Payload.build(table: table, changes: group, atomicData: atomicData, now: now, retryCount: retryCount)
        var headers = [
            ("Content-Type", "application/json"),
            ("Idempotency-Key", payload.id),
            ("User-Agent", PublisherVersion.userAgent),
        ]
        if !config.ingestor.authToken.isEmpty {
            headers.append(("Authorization", "Bearer \(config.ingestor.authToken)"))
        }
        headers += WebhookSigner.forIngestor(config.ingestor)?.headers(id: payload.id, timestamp: Int(now.timeIntervalSince1970), body: payload.body) ?? []  // issue11: Standard Webhooks signature
        return HTTPRequest(url: endpointURL, headers: headers, body: payload.body)
    }

    struct Failure {
        var group: KeyChanges
        var error: String
        var permanent: Bool
        var retryAfter: Double?
        /// Attempts made in this batch (the first plus immediate retries): added to `attempts`,
        /// so metadata.retry_count never goes back.
        var attemptsMade = 1
    }

    private enum Outcome {
        case success
        case aborted
        case failed(Failure)
    }

    /// Transport errors, timeouts, 5xx, 408 and 429 are transient; other non-2xx are permanent
    /// for that payload.
    private func classify(_ response: Result<HTTPResponse, HTTPTransportError>, group: KeyChanges) -> Outcome {
        let meta: Logger.Metadata = ["primary_key": "\(group.primaryKey)", "change_id": "\(group.latest.id)"]
        switch response {
        case .success(let r) where r.isSuccess:
            stats.publish.record(r.seconds)
            stats.lastPublishAt = Timestamp.iso8601(Date())
            logger.debug("published", metadata: meta.merging(["http_status": "\(r.status)"]) { a, _ in a })
            return .success
        case .success(let r):
            stats.publish.record(r.seconds)
            let transient = r.status >= 500 || r.status == 408 || r.status == 429
            let retryAfter = (r.status == 429 || r.status == 503) ? r.headers["retry-after"].flatMap { Double($0.trimmingCharacters(in: .whitespaces)) } : nil
            logger.warning("ingestor rejected payload", metadata: meta.merging(["http_status": "\(r.status)"]) { a, _ in a })
            return .failed(Failure(group: group, error: "HTTP \(r.status) from ingestor: \(String(r.bodyText.prefix(200)))", permanent: !transient, retryAfter: retryAfter))
        case .failure(let error) where error.message == "aborted by shutdown" || error.code == HTTPClient.notSentCode:
            return .aborted
        case .failure(let error):
            logger.warning("ingestor request failed", metadata: meta.merging(["error": "\(error)"]) { a, _ in a })
            return .failed(Failure(group: group, error: "ingestor request failed: \(error)", permanent: false, retryAfter: nil))
        }
    }

    /// Acknowledge successes (delete by tracking id) and record failures: rescheduled with
    /// backoff, or moved to the dead letters once a permanent failure has been seen
    /// `dead_letter_after_attempts` times.
    private func settle(_ db: PostgresConnection, acked: [Int64], failures: [Failure]) throws {
        if let error = record(db, acked: acked, failures: failures) {
            // The rows stay as they were: published again after reconnecting (at least once).
            try databaseFailed(error)
        }
    }

    private func record(_ db: PostgresConnection, acked: [Int64], failures: [Failure]) -> PostgresError? {
        do {
            try feed.delete(db, ids: acked)
        } catch {
            return error
        }
        for failure in failures {
            let attempts = failure.group.attempts + failure.attemptsMade
            do {
                if failure.permanent && attempts >= config.service.deadLetterAfterAttempts {
                    try feed.deadLetter(db, ids: failure.group.ids, error: failure.error, attemptsMade: failure.attemptsMade)
                    stats.deadLettered += failure.group.rows.count
                    logger.error("change moved to dead letters", metadata: ["primary_key": "\(failure.group.primaryKey)", "change_id": "\(failure.group.latest.id)", "error": "\(failure.error)"])
                } else {
                    let backoff = Backoff(initial: config.ingestor.retryDelaySeconds, maximum: config.ingestor.maxRetryDelaySeconds)
                    let delay = failure.retryAfter.map { min($0, config.ingestor.maxRetryDelaySeconds) }
                        ?? backoff.delay(attempt: failure.group.attempts, unit: Double.random(in: 0..<1, using: &random))
                    try feed.reschedule(db, ids: failure.group.ids, error: failure.error, afterSeconds: delay, attemptsMade: failure.attemptsMade)
                }
            } catch {
                return error
            }
        }
        return nil
    }

    /// Log and export breaker state changes.
    private func noteBreaker() {
        let name = breaker.name
        if name != stats.circuitBreaker {
            let level: Logger.Level = name == "closed" ? .notice : .warning
            logger.log(level: level, "circuit breaker \(stats.circuitBreaker) -> \(name)", metadata: ["circuit_breaker": "\(name)"])
            stats.circuitBreaker = name
        }
    }

    private var endpointURL: String {
        var base = config.ingestor.baseURL
        while base.hasSuffix("/") { base.removeLast() }
        return base + table.publishEndpoint
    }

    // MARK: - waiting, stopping, reporting

    private func checkStop() throws {
        if stopRequested { throw Stop.requested }
        if !Signals.take().intersection([.term, .int]).isEmpty {
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
            var fds = [Signals.wakeFD]
            if supervised { fds.append(0) }
            let ready = Poll.wait(readable: fds, timeout: min(left, 1.0))
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
    }

    /// Stats at least once a second; also notices a watched table or trigger dropped under us.
    private func emitStatsIfDue() throws {
        if monotonicSeconds() - lastStatsAt >= 1.0 { try emitStats() }
    }

    private func emitStats() throws {
        lastStatsAt = monotonicSeconds()
        if let db, db.isConnected, lastStatsAt - lastBacklogAt >= 1.0 {
            lastBacklogAt = lastStatsAt
            switch Result(catching: { () throws(PostgresError) in try feed.backlog(db) }) {
            case .success(let backlog):
                stats.backlog = backlog.count
                stats.oldestChangeAgeSeconds = backlog.oldestAgeSeconds
                stats.deadLetters = backlog.deadLetters
                stats.oldestDeadLetterAgeSeconds = backlog.oldestDeadLetterAgeSeconds
                if !backlog.capturing {
                    throw Stop.permanent("the watched table \(table.qualifiedName) or its capture trigger \(TrackingSchema.triggerName) no longer exists: changes are not being recorded; restore it and run setup, or send SIGHUP to re-install")
                }
            case .failure(let error):
                if !error.isConnectionLost { try databaseFailed(error) }
            }
        }
        emit(.stats(table: table.name, stats: stats))
    }

    private func emit(_ message: WorkerMessage) {
        writeAll(fd: 1, message.encodedLine())
    }
}
