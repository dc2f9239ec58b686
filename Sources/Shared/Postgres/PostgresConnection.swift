// The one file that imports libpq. Everything else sees `PostgresConnection`, `QueryResult` and
// `PostgresError`: no OpaquePointer leaves this file.
//
// Invariants: a connection is used by one owner at a time (a worker's loop, or a command); it is
// never shared across threads concurrently. Parameters are always bound (PQexecParams /
// PQsendQueryPrepared), never spliced into SQL text. Error descriptions carry libpq's message and
// the SQLSTATE, never the password or the connection parameters.

import CLibPQ
import Foundation

public struct ConnectionParameters: Sendable, Equatable {
    public var host: String
    public var port: Int
    public var username: String
    public var password: String
    public var database: String
    public var sslmode: String
    public var connectTimeoutSeconds: Int
    public var statementTimeoutSeconds: Int
    public var applicationName: String

    public init(_ config: DatabaseConfig, applicationName: String) {
        host = config.host
        port = config.port
        username = config.username
        password = config.password
        database = config.databaseName
        sslmode = config.sslmode
        connectTimeoutSeconds = config.connectTimeoutSeconds
        statementTimeoutSeconds = config.statementTimeoutSeconds
        self.applicationName = applicationName
    }

    /// Where we connect, for log lines: no user name, no password.
    public var safeDescription: String { "\(host):\(port)/\(database)" }
}

public struct PostgresError: Error, CustomStringConvertible, Sendable {
    public enum Kind: Sendable, Equatable {
        /// Could not connect, or the connection broke: retry with backoff.
        case connection
        /// The server rejected a statement; `sqlState` says why.
        case query
    }

    public var kind: Kind
    public var sqlState: String?
    public var message: String
    /// libpq's DETAIL field: it can quote row values (a key, a constraint's data), so it is kept
    /// out of `description` (logs at info, last_error, /health) and logged at debug level only.
    public var detail: String?

    public init(kind: Kind, sqlState: String?, message: String, detail: String? = nil) {
        self.kind = kind
        self.sqlState = sqlState
        self.message = message
        self.detail = detail
    }

    public var description: String {
        if let sqlState { return "\(message) (SQLSTATE \(sqlState))" }
        return message
    }

    /// Errors a user fixes in the configuration or with grants, not by retrying:
    /// undefined table/column/function, permission denied, syntax error, invalid catalog name,
    /// invalid password.
    public var isPermanent: Bool {
        guard let sqlState else { return false }
        return sqlState.hasPrefix("42") || sqlState == "22P02" || isRejectedLogin
    }

    /// The server refused the login itself: wrong password or user (28xxx), or no such database
    /// (3D000). Retrying cannot help; the configuration must change (exit 78).
    public var isRejectedLogin: Bool {
        guard let sqlState else { return false }
        return sqlState == "28P01" || sqlState == "28000" || sqlState == "3D000"
    }

    public var isConnectionLost: Bool {
        kind == .connection || sqlState.map { $0.hasPrefix("08") || $0 == "57P01" || $0 == "57P02" || $0 == "57P03" } ?? false
    }
}

public struct QueryResult: Sendable {
    public var columns: [String]
    public var rows: [[String?]]
    public var affectedRows: Int

    public subscript(row: Int, column: Int) -> String? { rows[row][column] }
}

public final class PostgresConnection: @unchecked Sendable {
    private var conn: OpaquePointer?
    private var prepared: Set<String> = []
    public let parameters: ConnectionParameters

    public static func connect(_ parameters: ConnectionParameters) throws(PostgresError) -> PostgresConnection {
        let connection = PostgresConnection(parameters: parameters)
        try connection.open()
        return connection
    }

    private init(parameters: ConnectionParameters) {
        self.parameters = parameters
    }

    deinit { close() }

    public func close() {
        if let conn { PQfinish(conn) }
        conn = nil
        prepared.removeAll()
    }

    public var isConnected: Bool {
        guard let conn else { return false }
        return PQstatus(conn) == CONNECTION_OK
    }

    public var serverVersion: Int {
        guard let conn else { return 0 }
        return Int(PQserverVersion(conn))
    }

    private func open() throws(PostgresError) {
        var options = "-c statement_timeout=\(parameters.statementTimeoutSeconds * 1000)"
        options += " -c idle_in_transaction_session_timeout=\(max(60, parameters.statementTimeoutSeconds * 2) * 1000)"
        let pairs: [(String, String)] = [
            ("host", parameters.host),
            ("port", String(parameters.port)),
            ("user", parameters.username),
            ("password", parameters.password),
            ("dbname", parameters.database),
            ("sslmode", parameters.sslmode),
            ("connect_timeout", String(parameters.connectTimeoutSeconds)),
            ("application_name", parameters.applicationName),
            ("options", options),
            // The daemon holds a connection for days: let the kernel notice a dead peer.
            ("keepalives", "1"),
            ("keepalives_idle", "30"),
        ].filter { !($0.0 == "password" && $0.1.isEmpty) }
        let keys = pairs.map { strdup($0.0) }
        let values = pairs.map { strdup($0.1) }
        defer {
            keys.forEach { free($0) }
            values.forEach { free($0) }
        }
        var keyPointers: [UnsafePointer<CChar>?] = keys.map { UnsafePointer($0) } + [nil]
        var valuePointers: [UnsafePointer<CChar>?] = values.map { UnsafePointer($0) } + [nil]
        let handle = keyPointers.withUnsafeMutableBufferPointer { k in
            valuePointers.withUnsafeMutableBufferPointer { v in
                PQconnectdbParams(k.baseAddress, v.baseAddress, 0)
            }
        }
        guard let handle else {
            throw PostgresError(kind: .connection, sqlState: nil, message: "could not allocate a PostgreSQL connection")
        }
        if PQstatus(handle) != CONNECTION_OK {
            let message = Self.clean(String(cString: PQerrorMessage(handle)))
            PQfinish(handle)
            // libpq's message names host and port but never the password.
            throw PostgresError(kind: .connection, sqlState: Self.sqlStateFromMessage(message),
                                message: "could not connect to PostgreSQL at \(parameters.safeDescription): \(message)")
        }
        // Server NOTICEs would otherwise be printed on stderr by libpq, outside our log format.
        PQsetNoticeProcessor(handle, { _, _ in }, nil)
        conn = handle
    }

    /// Run one statement with bound text parameters (nil is SQL NULL).
    @discardableResult
    public func execute(_ sql: String, _ params: [String?] = []) throws(PostgresError) -> QueryResult {
        guard let conn else { throw PostgresError(kind: .connection, sqlState: nil, message: "not connected to PostgreSQL") }
        let sent = withCStrings(params) { pointers in
            PQsendQueryParams(conn, sql, Int32(params.count), nil, pointers, nil, nil, 0)
        }
        if sent != 1 { throw connectionLost() }
        // One statement: its result, then NULL. Keep the first error, else the last result.
        var outcome: Result<QueryResult, PostgresError>?
        while true {
            awaitResult(conn)
            guard let r = PQgetResult(conn) else { break }
            do throws(PostgresError) {
                let q = try consumeOne(r)
                if outcome == nil { outcome = .success(q) }
            } catch {
                if case .failure = outcome {} else { outcome = .failure(error) }
            }
        }
        guard let outcome else { throw connectionLost() }
        if case .failure(let error) = outcome, error.kind != .connection, PQstatus(conn) != CONNECTION_OK { throw connectionLost() }
        return try outcome.get()
    }

    /// Called about once a second while a statement runs (a worker keeps reporting during a long
    /// query). Set once at start, before any query; it must not use a database connection.
    nonisolated(unsafe) public static var heartbeat: (() -> Void)?

    /// Wait until a result can be read without blocking, calling `heartbeat` every second.
    private func awaitResult(_ conn: OpaquePointer) {
        guard Self.heartbeat != nil else { return }  // PQgetResult blocks by itself
        while PQisBusy(conn) == 1 {
            var fd = pollfd(fd: PQsocket(conn), events: Int16(POLLIN), revents: 0)
            let ready = poll(&fd, 1, 1000)
            if ready == 0 {
                Self.heartbeat?()
                continue
            }
            if ready < 0 && errno == EINTR { continue }
            if PQconsumeInput(conn) == 0 { return }  // broken: PQgetResult reports it
        }
    }

    /// Run several statements (no parameters) in one round trip, as one implicit transaction.
    public func executeScript(_ sql: String) throws(PostgresError) {
        guard let conn else { throw PostgresError(kind: .connection, sqlState: nil, message: "not connected to PostgreSQL") }
        var result = PQexec(conn, sql)
        var firstError: PostgresError?
        while let r = result {
            do throws(PostgresError) { _ = try consumeOne(r) } catch { if firstError == nil { firstError = error } }
            result = PQgetResult(conn)
            if result == nil { break }
        }
        if let firstError { throw firstError }
        if PQstatus(conn) != CONNECTION_OK { throw connectionLost() }
    }

    /// Prepare a named statement once per connection. Parameter types are left to the server to
    /// infer, so `$1` takes the type of whatever it is compared with (integer, text, uuid, ...).
    public func prepare(name: String, sql: String) throws(PostgresError) {
        guard let conn else { throw PostgresError(kind: .connection, sqlState: nil, message: "not connected to PostgreSQL") }
        if prepared.contains(name) { return }
        _ = try consume(PQprepare(conn, name, sql, 0, nil))
        prepared.insert(name)
    }

    /// The statement's parameter types as PostgreSQL inferred them (type names), for check-config.
    public func describePrepared(name: String) throws(PostgresError) -> [String] {
        guard let conn else { throw PostgresError(kind: .connection, sqlState: nil, message: "not connected to PostgreSQL") }
        guard let r = PQdescribePrepared(conn, name) else { throw connectionLost() }
        defer { PQclear(r) }
        if PQresultStatus(r) != PGRES_COMMAND_OK { throw error(from: r) }
        return (0..<PQnparams(r)).map { String(PQparamtype(r, $0)) }
    }

    /// Execute a prepared statement once per parameter list in pipeline mode: one round trip for
    /// the whole batch. A failing execution aborts the rest of the pipeline (libpq semantics), so
    /// those are re-run one by one: every element gets its own result.
    public func pipelinePrepared(name: String, parameterLists: [[String?]]) throws(PostgresError) -> [Result<QueryResult, PostgresError>] {
        guard let conn else { throw PostgresError(kind: .connection, sqlState: nil, message: "not connected to PostgreSQL") }
        if parameterLists.isEmpty { return [] }
        if parameterLists.count == 1 {
            return [executePreparedResult(name: name, params: parameterLists[0])]
        }
        guard PQenterPipelineMode(conn) == 1 else { throw connectionLost() }
        defer { _ = PQexitPipelineMode(conn) }
        for params in parameterLists {
            let ok = withCStrings(params) { pointers in
                PQsendQueryPrepared(conn, name, Int32(params.count), pointers, nil, nil, 0)
            }
            if ok != 1 { throw connectionLost() }
        }
        guard PQpipelineSync(conn) == 1 else { throw connectionLost() }

        var results: [Result<QueryResult, PostgresError>?] = Array(repeating: nil, count: parameterLists.count)
        var index = 0
        var aborted: [Int] = []
        // Each query yields its result(s) then a NULL; the sync yields PGRES_PIPELINE_SYNC.
        while true {
            guard let r = PQgetResult(conn) else {
                if PQstatus(conn) != CONNECTION_OK { throw connectionLost() }
                index += 1
                continue
            }
            let status = PQresultStatus(r)
            if status == PGRES_PIPELINE_SYNC {
                PQclear(r)
                break
            }
            if index >= results.count {
                PQclear(r)
                continue
            }
            if status == PGRES_PIPELINE_ABORTED {
                PQclear(r)
                aborted.append(index)
                continue
            }
            do throws(PostgresError) {
                results[index] = .success(try consumeOne(r))
            } catch {
                results[index] = .failure(error)
            }
        }
        _ = PQexitPipelineMode(conn)
        for i in aborted {
            results[i] = executePreparedResult(name: name, params: parameterLists[i])
        }
        return results.map { $0 ?? .failure(PostgresError(kind: .query, sqlState: nil, message: "no result from pipeline")) }
    }

    public func executePrepared(name: String, params: [String?]) throws(PostgresError) -> QueryResult {
        try executePreparedResult(name: name, params: params).get()
    }

    private func executePreparedResult(name: String, params: [String?]) -> Result<QueryResult, PostgresError> {
        guard let conn else { return .failure(PostgresError(kind: .connection, sqlState: nil, message: "not connected to PostgreSQL")) }
        let r = withCStrings(params) { pointers in
            PQexecPrepared(conn, name, Int32(params.count), pointers, nil, nil, 0)
        }
        do throws(PostgresError) { return .success(try consume(r)) } catch { return .failure(error) }
    }

    // MARK: - results

    private func consume(_ result: OpaquePointer?) throws(PostgresError) -> QueryResult {
        guard let result else { throw connectionLost() }
        return try consumeOne(result)
    }

    private func consumeOne(_ r: OpaquePointer) throws(PostgresError) -> QueryResult {
        defer { PQclear(r) }
        let status = PQresultStatus(r)
        guard status == PGRES_TUPLES_OK || status == PGRES_COMMAND_OK || status == PGRES_EMPTY_QUERY else {
            throw error(from: r)
        }
        let columnCount = Int(PQnfields(r))
        let rowCount = Int(PQntuples(r))
        var columns: [String] = []
        columns.reserveCapacity(columnCount)
        for c in 0..<columnCount { columns.append(String(cString: PQfname(r, Int32(c)))) }
        var rows: [[String?]] = []
        rows.reserveCapacity(rowCount)
        for row in 0..<rowCount {
            var values: [String?] = []
            values.reserveCapacity(columnCount)
            for c in 0..<columnCount {
                if PQgetisnull(r, Int32(row), Int32(c)) == 1 {
                    values.append(nil)
                } else {
                    values.append(String(cString: PQgetvalue(r, Int32(row), Int32(c))))
                }
            }
            rows.append(values)
        }
        let affected = Int(String(cString: PQcmdTuples(r))) ?? 0
        return QueryResult(columns: columns, rows: rows, affectedRows: affected)
    }

    private func error(from r: OpaquePointer) -> PostgresError {
        let state = PQresultErrorField(r, Int32(UInt8(ascii: "C"))).map { String(cString: $0) }
        let message = PQresultErrorField(r, Int32(UInt8(ascii: "M"))).map { String(cString: $0) }
            ?? Self.clean(String(cString: PQresultErrorMessage(r)))
        let detail = PQresultErrorField(r, Int32(UInt8(ascii: "D"))).map { String(cString: $0) }
        if conn.map({ PQstatus($0) != CONNECTION_OK }) ?? true {
            return PostgresError(kind: .connection, sqlState: state, message: message.isEmpty ? "connection to PostgreSQL lost" : message, detail: detail)
        }
        return PostgresError(kind: .query, sqlState: state, message: message, detail: detail)
    }

    private func connectionLost() -> PostgresError {
        let message = conn.map { Self.clean(String(cString: PQerrorMessage($0))) } ?? ""
        return PostgresError(kind: .connection, sqlState: nil,
                             message: message.isEmpty ? "connection to PostgreSQL lost" : "connection to PostgreSQL lost: \(message)")
    }

    private static func clean(_ message: String) -> String {
        message.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }.joined(separator: " ")
    }

    private static func sqlStateFromMessage(_ message: String) -> String? {
        if message.contains("password authentication failed") { return "28P01" }
        if message.contains("does not exist") && message.contains("database") { return "3D000" }
        return nil
    }

    private func withCStrings<R>(_ params: [String?], _ body: (UnsafePointer<UnsafePointer<CChar>?>?) -> R) -> R {
        let copies: [UnsafeMutablePointer<CChar>?] = params.map { $0.map { strdup($0) } ?? nil }
        defer { copies.forEach { free($0) } }
        let pointers: [UnsafePointer<CChar>?] = copies.map { $0.map { UnsafePointer($0) } }
        return pointers.withUnsafeBufferPointer { body($0.baseAddress) }
    }
}

/// Quote an SQL identifier the way PostgreSQL's quote_ident does, always: "a""b".
public func quoteIdentifier(_ name: String) -> String {
    "\"" + name.replacingOccurrences(of: "\"", with: "\"\"") + "\""
}

/// Quote an SQL string literal: 'it''s'.
public func quoteLiteral(_ value: String) -> String {
    "'" + value.replacingOccurrences(of: "'", with: "''") + "'"
}

// MARK: - isolated pipelines

extension PostgresConnection {
    /// One command of a pipeline: SQL without parameters, or a prepared statement with them.
    public enum PipelineCommand: Sendable {
        case sql(String)
        case prepared(name: String, parameters: [String?])
    }

    public enum PipelineResult: Sendable {
        case success(QueryResult)
        case failure(PostgresError)
        /// Skipped by the server because an earlier command of its segment failed.
        case aborted
    }

    /// Run `segments` in pipeline mode: one round trip for all of them, with a sync after each
    /// segment, so a failing command aborts only the rest of its own segment. Inside an explicit
    /// transaction the transaction stays failed after an error: a segment that starts with
    /// `ROLLBACK TO SAVEPOINT` recovers it, which isolates one failing command at constant cost.
    public func pipeline(_ segments: [[PipelineCommand]]) throws(PostgresError) -> [[PipelineResult]] {
        guard let conn else { throw PostgresError(kind: .connection, sqlState: nil, message: "not connected to PostgreSQL") }
        if segments.isEmpty { return [] }
        guard PQenterPipelineMode(conn) == 1 else { throw connectionLost() }
        defer { _ = PQexitPipelineMode(conn) }
        for segment in segments {
            for command in segment {
                let ok: Int32
                switch command {
                case .sql(let sql):
                    ok = PQsendQueryParams(conn, sql, 0, nil, nil, nil, nil, 0)
                case .prepared(let name, let parameters):
                    ok = withCStrings(parameters) { pointers in
                        PQsendQueryPrepared(conn, name, Int32(parameters.count), pointers, nil, nil, 0)
                    }
                }
                if ok != 1 { throw connectionLost() }
            }
            guard PQpipelineSync(conn) == 1 else { throw connectionLost() }
        }
        // Each command yields one result then a NULL; each sync yields PGRES_PIPELINE_SYNC.
        var results: [[PipelineResult]] = segments.map { _ in [] }
        var segment = 0
        while segment < segments.count {
            awaitResult(conn)
            guard let r = PQgetResult(conn) else {
                if PQstatus(conn) != CONNECTION_OK { throw connectionLost() }
                continue
            }
            switch PQresultStatus(r) {
            case PGRES_PIPELINE_SYNC:
                PQclear(r)
                segment += 1
            case PGRES_PIPELINE_ABORTED:
                PQclear(r)
                results[segment].append(.aborted)
            default:
                do throws(PostgresError) {
                    results[segment].append(.success(try consumeOne(r)))
                } catch {
                    if error.kind == .connection { throw error }
                    results[segment].append(.failure(error))
                }
            }
        }
        return results
    }
}
