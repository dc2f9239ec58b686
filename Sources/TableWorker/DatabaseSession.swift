// The worker's one database session: connects, sets the tracking objects up once per process
// (not on every reconnect: setup takes locks and a reconnect must be cheap), prepares the atomic
// data statement on every new connection, and is the ChangeStore the delivery runner writes to.

import Logging
import Shared

final class DatabaseSession: ChangeStore {
    let config: PublisherConfig
    let schema: TrackingSchema
    let query: AtomicDataQuery
    let logger: Logger
    private var db: PostgresConnection?
    private var setUp = false
    /// The tracking table's OID, read on every connection: part of every payload id, so ids
    /// never repeat after the tracking table is recreated (its sequence starts at 1 again).
    private(set) var epoch = "0"
    /// The server allows PREPARE TRANSACTION (max_prepared_transactions > 0): the trigger then
    /// never notifies (PostgreSQL refuses PREPARE after NOTIFY), so the worker polls.
    private(set) var twoPhaseCommit = false

    init(config: PublisherConfig, schema: TrackingSchema, logger: Logger) {
        self.config = config
        self.schema = schema
        query = AtomicDataQuery(schema.table.atomicDataQuery)
        self.logger = logger
    }

    var isConnected: Bool { db?.isConnected ?? false }

    /// `atomic-data-publisher/<table>@<instance>`, `<table>#<partition>` for a partition's worker
    /// (PostgreSQL keeps 63 bytes): the lease holder's name, as other instances read it from
    /// pg_stat_activity.
    static func applicationName(table: String, instance: String) -> String {
        String(decoding: Array("atomic-data-publisher/\(table)@\(instance)".utf8.prefix(63)), as: UTF8.self)
    }

    /// The instance named in a lease holder's application_name.
    static func instance(fromApplicationName name: String) -> String {
        name.split(separator: "@", maxSplits: 1).dropFirst().first.map(String.init) ?? name
    }

    /// The log level of a message the server sent on a connection (libpq's notice processor, one
    /// line such as "NOTICE:  relation ... already exists, skipping"). Server notices go to the
    /// log rather than raw stderr, but a NOTICE is below an operator's attention: setup is
    /// idempotent, and its IF NOT EXISTS statements raise one at every start, so NOTICE (and
    /// DEBUG, LOG, INFO) is logged at debug; a WARNING stays a warning.
    static func logLevel(ofServerNotice message: String) -> Logger.Level {
        let severity = message.prefix { $0 != ":" }
        switch severity {
        case "WARNING": return .warning
        case "NOTICE", "INFO", "LOG", "DEBUG", "DEBUG1", "DEBUG2", "DEBUG3", "DEBUG4", "DEBUG5": return .debug
        default: return .notice
        }
    }

    /// A fresh connection, set up on the first one. Throws a `PostgresError`, or a `TableWorker.Stop`
    /// for a schema problem (watched table or column missing: a configuration error).
    func open() throws {
        close()
        let connection = try PostgresConnection.connect(ConnectionParameters(config.database, applicationName: Self.applicationName(table: schema.partition.workerName(table: schema.table.name), instance: config.resolvedInstanceId)))
        connection.noticeHandler = { [logger] notice in logger.log(level: Self.logLevel(ofServerNotice: notice), "\(notice)") }
        // A session that cannot write cannot publish (every acknowledgement is a write): a standby
        // that libpq accepted (target_session_attrs=any), or a primary with
        // default_transaction_read_only on. Count it as no connection, so the worker retries with
        // backoff (a later attempt may find the promoted standby) instead of failing each statement.
        let settings = try connection.execute("SELECT current_setting('transaction_read_only'), current_setting('max_prepared_transactions') <> '0'")
        if settings[0, 0] == "on" {
            throw PostgresError(kind: .connection, sqlState: PostgresError.readOnlyTransaction,
                                message: "PostgreSQL at \(connection.parameters.safeDescription) accepts no writes (a standby, or default_transaction_read_only is on); list the primary in database.host, with target_session_attrs = \"read-write\"")
        }
        twoPhaseCommit = settings[0, 1] == "t"
        if !setUp {
            do {
                try schema.install(on: connection, warn: { [logger] in logger.warning("\($0)") })
            } catch let problem as SchemaProblem {
                throw TableWorker.Stop.permanent(problem.description)
            } catch let error as PostgresError where !error.isConnectionLost && error.isPermanent {
                throw TableWorker.Stop.permanent("table \(schema.table.qualifiedName): \(error)")
            }
            setUp = true
        }
        batched = try Self.prepareReads(on: connection, query: query, logger: logger)
        prepared = true
        try connection.execute(schema.listenSQL)  // wake-up from idle (TableWorker.sleepUntilChange)
        epoch = try connection.execute("SELECT to_regclass($1)::oid::text", [schema.changesTable])[0, 0] ?? "0"
        db = connection
    }

    /// What every connection that reads batches needs: no JIT, the atomic data statement, and its
    /// whole-batch form when PostgreSQL takes it (the result: whether it did).
    private static func prepareReads(on connection: PostgresConnection, query: AtomicDataQuery, logger: Logger) throws -> Bool {
        // No JIT in this session: every statement the worker runs is short (one key's atomic data,
        // one batch of tracking rows), and a JIT compile costs 8 to 12 ms each time a plan's
        // estimate crosses jit_above_cost, which a stale estimate on the tracking table does
        // (measured: the covered-rows read took 8.6 ms per batch of 100, 0.5 ms without JIT).
        // `pg_settings`: a server without the setting (before PostgreSQL 11) is left alone.
        try connection.execute("SELECT set_config('jit', 'off', false) FROM pg_settings WHERE name = 'jit'")
        try connection.prepare(name: BatchReader.statementName, sql: query.wrapped)
        return prepareBatched(on: connection, query: query, logger: logger)
    }

    /// A second connection that only reads batches ahead of their turn (BatchPrefetcher): the
    /// same settings and statements, but no setup, no LISTEN, no lock, and a name of its own
    /// (`atomic-data-publisher-reader/<table>@<instance>`), so nothing takes it for a lease
    /// holder. Safe to call from another thread: it reads only constants.
    static func openReader(config: PublisherConfig, schema: TrackingSchema, logger: Logger) throws -> (connection: PostgresConnection, batched: Bool) {
        let name = String(decoding: Array("atomic-data-publisher-reader/\(schema.partition.workerName(table: schema.table.name))@\(config.resolvedInstanceId)".utf8.prefix(63)), as: UTF8.self)
        // The heartbeat reports from the worker's own thread only.
        let connection = try PostgresConnection.connect(ConnectionParameters(config.database, applicationName: name), heartbeats: false)
        connection.noticeHandler = { [logger] notice in logger.log(level: Self.logLevel(ofServerNotice: notice), "\(notice)") }
        do {
            let batched = try prepareReads(on: connection, query: AtomicDataQuery(schema.table.atomicDataQuery), logger: logger)
            return (connection, batched)
        } catch {
            connection.close()
            throw error
        }
    }

    /// Prepare the atomic data statement afresh (after a table problem: a dropped column leaves a
    /// cached plan that can never run again), without giving up the session and its lease. When
    /// that fails (the column is still gone), nothing is left prepared and `prepared` says so.
    func reprepare() throws(PostgresError) {
        let db = try connection()
        prepared = false
        batched = false
        try db.deallocate(name: BatchReader.statementName)
        try db.deallocate(name: BatchReader.batchedStatementName)
        try db.prepare(name: BatchReader.statementName, sql: query.wrapped)
        prepared = true
        batched = Self.prepareBatched(on: db, query: query, logger: logger)
    }

    /// Whether the atomic data statement is prepared on this connection. After a re-prepare that
    /// failed it is not, and the next read must prepare it first (`prepareIfNeeded`): executing
    /// the missing statement would fail with "prepared statement does not exist", which hides
    /// PostgreSQL's own error (42703 for a renamed column) behind its consequence.
    private(set) var prepared = false

    /// Prepare the atomic data statement if a failed re-prepare left it missing; throws
    /// PostgreSQL's error when it still cannot be prepared.
    func prepareIfNeeded() throws(PostgresError) {
        if !prepared { try reprepare() }
    }

    /// Whether the whole-batch form of the atomic data query is prepared on this connection
    /// (`AtomicDataQuery.batched`); the worker falls back to one statement per key without it.
    var batched = false

    /// Prepare the whole-batch form, typed like `$PRIMARY_KEY` in the single-key statement. False
    /// (key by key) when PostgreSQL refuses it; a lost connection surfaces on the next command.
    private static func prepareBatched(on db: PostgresConnection, query: AtomicDataQuery, logger: Logger) -> Bool {
        do throws(PostgresError) {
            guard let keyType = try db.execute("SELECT parameter_types[1]::text FROM pg_prepared_statements WHERE name = $1",
                                               [BatchReader.statementName]).rows.first?.first ?? nil,
                  let sql = query.batched(keyType: keyType) else { return false }
            try db.prepare(name: BatchReader.batchedStatementName, sql: sql)
            return true
        } catch {
            logger.info("atomic data query: one statement per key (the whole-batch form was refused)", metadata: ["error": "\(error)"])
            return false
        }
    }

    /// Read the tracking table's epoch again (after it was recreated).
    func refreshEpoch() throws(PostgresError) {
        epoch = try connection().execute("SELECT to_regclass($1)::oid::text", [schema.changesTable])[0, 0] ?? "0"
    }

    func close() {
        db?.close()
        db = nil
    }

    func connection() throws(PostgresError) -> PostgresConnection {
        guard let db, db.isConnected else { throw PostgresError(kind: .connection, sqlState: nil, message: "not connected to PostgreSQL") }
        return db
    }

    // MARK: ChangeStore

    func acknowledge(ids: [Int64]) throws(PostgresError) {
        try schema.acknowledge(try connection(), ids: ids)
    }

    func reschedule(ids: [Int64], error: String, afterSeconds: Double, attemptsMade: Int, permanentFailures: Int) throws(PostgresError) {
        try schema.reschedule(try connection(), ids: ids, error: error, afterSeconds: afterSeconds, attemptsMade: attemptsMade, permanentFailures: permanentFailures)
    }

    func deadLetter(ids: [Int64], error: String, attemptsMade: Int) throws(PostgresError) {
        try schema.deadLetter(try connection(), ids: ids, error: error, attemptsMade: attemptsMade)
    }
}
