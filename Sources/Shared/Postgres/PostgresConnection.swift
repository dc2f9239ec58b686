// The one file that imports libpq. Everything else sees `PostgresConnection`, `QueryResult` and
// `PostgresError`: no OpaquePointer leaves this file.
//
// Invariants: a connection is used by one owner at a time (a worker's loop, or a command); it is
// never shared across threads concurrently. Parameters are always bound (PQexecParams /
// PQsendQueryPrepared), never spliced into SQL text. Error descriptions carry libpq's message and
// the SQLSTATE, never the password or the connection parameters.
//
// Connecting: PQconnectStartParams + PQconnectPoll under our own deadline, so that the error
// verbosity can be raised before the server answers. libpq hands no result object out of a failed
// connection attempt, so the SQLSTATE of a rejected login (28P01, 28000, 3D000) is only in the
// error text; with PQERRORS_VERBOSE libpq writes it there in a fixed place ("FATAL:  28P01: ..."),
// which is read instead of guessing from the (translatable) human wording. Failures detected by
// libpq itself (TLS certificate verification, unreadable key files) have no SQLSTATE at all: those
// are classified from libpq's own message texts (`PostgresTLSFailure`), the one place where that is done.
//
// A held connection notices a vanished peer within about keepalives_idle + interval x count
// seconds (libpq's TCP keepalives) or tcp_user_timeout for unacknowledged data; the server gets the
// same settings (`options`), so it does not keep a dead session's locks for hours either.

import CLibPQ
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif
import Dispatch

public struct ConnectionParameters: Sendable, Equatable {
    /// One host, or several that libpq tries in order until one accepts the session
    /// (`targetSessionAttrs` says which servers may).
    public var hosts: [String]
    /// One port for every host, or one per host.
    public var ports: [Int]
    /// libpq's `target_session_attrs`; nil: libpq's default (`any`, or PGTARGETSESSIONATTRS).
    public var targetSessionAttrs: String?
    public var username: String
    public var password: String
    public var database: String
    public var sslmode: String
    public var sslrootcert: String
    public var sslcert: String
    public var sslkey: String
    public var connectTimeoutSeconds: Int
    public var statementTimeoutSeconds: Int
    public var keepalivesIdleSeconds: Int
    public var keepalivesIntervalSeconds: Int
    public var keepalivesCount: Int
    public var tcpUserTimeoutSeconds: Int
    public var applicationName: String
    /// A walsender session (`replication=database`): it runs START_REPLICATION and streams the
    /// WAL of a logical slot (WalStreamer). No statement timeout: the stream is one long command.
    public var replication = false

    public init(_ config: DatabaseConfig, applicationName: String) {
        hosts = config.hosts
        ports = config.ports
        targetSessionAttrs = config.resolvedTargetSessionAttrs
        username = config.username
        password = config.password
        database = config.databaseName
        sslmode = config.sslmode
        sslrootcert = config.sslrootcert
        sslcert = config.sslcert
        sslkey = config.sslkey
        connectTimeoutSeconds = config.connectTimeoutSeconds
        statementTimeoutSeconds = config.statementTimeoutSeconds
        keepalivesIdleSeconds = config.keepalivesIdleSeconds
        keepalivesIntervalSeconds = config.keepalivesIntervalSeconds
        keepalivesCount = config.keepalivesCount
        tcpUserTimeoutSeconds = config.tcpUserTimeoutSeconds
        self.applicationName = applicationName
    }

    /// libpq's connection keywords and values (the password only when set).
    var keywords: [(String, String)] {
        var pairs: [(String, String)] = [
            ("host", hosts.joined(separator: ",")),
            ("port", ports.map(String.init).joined(separator: ",")),
            ("user", username),
            ("dbname", database),
            ("sslmode", sslmode),
            ("connect_timeout", String(connectTimeoutSeconds)),
            ("application_name", applicationName),
            ("options", serverOptions),
            // The daemon holds a connection for days: let the kernel notice a dead peer.
            ("keepalives", "1"),
            ("keepalives_idle", String(keepalivesIdleSeconds)),
            ("keepalives_interval", String(keepalivesIntervalSeconds)),
            ("keepalives_count", String(keepalivesCount)),
            ("tcp_user_timeout", String(tcpUserTimeoutSeconds * 1000)),
        ]
        if !password.isEmpty { pairs.append(("password", password)) }
        if replication { pairs.append(("replication", "database")) }
        // With several hosts, the session must land on the primary: a standby (listed first, or
        // still up while the primary is away) would take the session and refuse every write.
        if let targetSessionAttrs { pairs.append(("target_session_attrs", targetSessionAttrs)) }
        for (key, value) in [("sslrootcert", sslrootcert), ("sslcert", sslcert), ("sslkey", sslkey)] where !value.isEmpty {
            pairs.append((key, value))
        }
        return pairs
    }

    /// Session settings sent in the startup packet: timeouts, and the same dead-peer detection on
    /// the server's side of the socket (all user-settable, PostgreSQL 12 and later).
    var serverOptions: String {
        [
            "-c statement_timeout=\(replication ? 0 : statementTimeoutSeconds * 1000)",
            "-c idle_in_transaction_session_timeout=\(max(60, statementTimeoutSeconds * 2) * 1000)",
            "-c tcp_keepalives_idle=\(keepalivesIdleSeconds)",
            "-c tcp_keepalives_interval=\(keepalivesIntervalSeconds)",
            "-c tcp_keepalives_count=\(keepalivesCount)",
            "-c tcp_user_timeout=\(tcpUserTimeoutSeconds * 1000)",
        ].joined(separator: " ")
    }

    /// Where we connect, for log lines: no user name, no password. Every host with its port
    /// ("db1:5432,db2:5432/helium"), and the target_session_attrs when one is set.
    public var safeDescription: String {
        let targets = hosts.enumerated().map { index, host in "\(host):\(ports.count == hosts.count ? ports[index] : ports.first ?? 0)" }
        let attrs = targetSessionAttrs.map { " (target_session_attrs=\($0))" } ?? ""
        return "\(targets.joined(separator: ","))/\(database)\(attrs)"
    }
}

public struct PostgresError: Error, CustomStringConvertible, Sendable {
    public enum Kind: Sendable, Equatable {
        /// Could not connect, or the connection broke: retry with backoff.
        case connection
        /// The server rejected a statement; `sqlState` says why.
        case query
        /// TLS was refused or the server's certificate failed verification (wrong CA, wrong host
        /// name), or the client's own certificate or key is unusable: retrying cannot help.
        case tls
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

    /// Retrying cannot help, the configuration (or the server's certificates) must change: the
    /// login was rejected, or TLS verification failed. `check-config`, `run` and the worker exit 78.
    public var isConfigurationFailure: Bool {
        isRejectedLogin || kind == .tls
    }

    /// The session is gone, or no longer good for the service: reconnect (with backoff).
    /// 25006 (read_only_sql_transaction) counts: the server this connection is on stopped accepting
    /// writes (a primary demoted by a failover tool and restarted as a standby, or set
    /// `default_transaction_read_only`), so staying would publish nothing; a new connection lets
    /// libpq pick the server that is the primary now (target_session_attrs=read-write).
    public var isConnectionLost: Bool {
        kind == .connection || sqlState.map { $0.hasPrefix("08") || $0 == "57P01" || $0 == "57P02" || $0 == "57P03" || $0 == Self.readOnlyTransaction } ?? false
    }

    /// SQLSTATE read_only_sql_transaction: a write on a standby or in a read-only session.
    public static let readOnlyTransaction = "25006"
}

/// One row of a result as libpq holds it, for `PostgresConnection.forEachRow`: valid only inside
/// the callback it is handed to (its result is freed right after).
public struct ResultRow {
    private let result: OpaquePointer
    private let row: Int32

    fileprivate init(_ result: OpaquePointer, _ row: Int32) {
        self.result = result
        self.row = row
    }

    public var columnCount: Int { Int(PQnfields(result)) }

    public func isNull(_ column: Int) -> Bool { PQgetisnull(result, row, Int32(column)) == 1 }

    /// The value as text; nil for SQL NULL.
    public func string(_ column: Int) -> String? {
        withBytes(column) { String(decoding: $0, as: UTF8.self) }
    }

    /// A decimal integer value, parsed from its bytes without a String; nil for NULL or anything else.
    public func int64(_ column: Int) -> Int64? {
        withBytes(column) { bytes -> Int64? in
            var i = 0
            let negative = bytes.first == 0x2D  // -
            if negative { i = 1 }
            guard i < bytes.count else { return nil }
            var value: Int64 = 0
            while i < bytes.count {
                let digit = bytes[i] &- 0x30
                guard digit < 10 else { return nil }
                let (times, o1) = value.multipliedReportingOverflow(by: 10)
                let (next, o2) = negative ? times.subtractingReportingOverflow(Int64(digit)) : times.addingReportingOverflow(Int64(digit))
                if o1 || o2 { return nil }
                value = next
                i += 1
            }
            return value
        } ?? nil
    }

    private func withBytes<T>(_ column: Int, _ body: (UnsafeBufferPointer<UInt8>) -> T) -> T? {
        let c = Int32(column)
        guard column >= 0, c < PQnfields(result), PQgetisnull(result, row, c) == 0 else { return nil }
        let length = Int(PQgetlength(result, row, c))
        guard length > 0, let value = PQgetvalue(result, row, c) else { return body(UnsafeBufferPointer(start: nil, count: 0)) }
        return value.withMemoryRebound(to: UInt8.self, capacity: length) { body(UnsafeBufferPointer(start: $0, count: length)) }
    }
}

public struct QueryResult: Sendable {
    public var columns: [String]
    public var rows: QueryRows
    public var affectedRows: Int

    public subscript(row: Int, column: Int) -> String? { rows.value(row, column) }
}

/// A result's rows, kept flat: every value's bytes in one buffer and where each ends in another, so a result of 20,000 rows is two allocations rather than 20,000 row arrays and
/// 140,000 Strings (a worker's batch at 5,000 held 4 MB in that form). A row is made
/// into `[String?]` when it is read; `value(_:_:)` reads one value.
public struct QueryRows: RandomAccessCollection, Equatable, ExpressibleByArrayLiteral, Sendable {
    public private(set) var columnCount: Int
    private var rowCount: Int
    /// The values' UTF-8 bytes, row after row.
    private var bytes: [UInt8]
    /// Per value, where its bytes end in `bytes` (they start where the previous value's end);
    /// SQL NULL is stored as `-1 - end` (no bytes).
    private var ends: [Int]

    public init(arrayLiteral rows: [String?]...) {
        self.init(rows)
    }

    /// Rows as arrays (for tests); every row must have the same number of values.
    public init(_ rows: [[String?]]) {
        rowCount = rows.count
        columnCount = rows.first?.count ?? 0
        bytes = []
        ends = []
        for row in rows {
            precondition(row.count == columnCount, "QueryRows: every row has \(columnCount) values")
            for value in row { append(value.map { Array($0.utf8) }) }
        }
    }

    /// Appends the rows of a libpq result (single-row mode: one row per result). The first result
    /// reserves its exact room; rows streamed after it grow the buffers geometrically (an exact
    /// reserve per row would copy them each time). A result's columns must match the rows already
    /// held (the first result sets them).
    fileprivate mutating func appendRows(of r: OpaquePointer) {
        let columns = Int(PQnfields(r))
        let newRows = Int(PQntuples(r))
        if rowCount == 0 { columnCount = columns }
        guard newRows > 0 else { return }
        precondition(columns == columnCount, "QueryRows: every result has \(columnCount) columns")
        if rowCount == 0 {
            var total = 0
            for row in 0..<Int32(newRows) {
                for c in 0..<Int32(columns) { total += Int(PQgetlength(r, row, c)) }
            }
            bytes.reserveCapacity(total)
            ends.reserveCapacity(newRows * columns)
        }
        for row in 0..<Int32(newRows) {
            for c in 0..<Int32(columns) {
                if PQgetisnull(r, row, c) == 1 {
                    ends.append(-1 - bytes.count)
                } else {
                    let length = Int(PQgetlength(r, row, c))
                    if length > 0, let value = PQgetvalue(r, row, c) {
                        value.withMemoryRebound(to: UInt8.self, capacity: length) { bytes.append(contentsOf: UnsafeBufferPointer(start: $0, count: length)) }
                    }
                    ends.append(bytes.count)
                }
            }
        }
        rowCount += newRows
    }

    private mutating func append(_ value: [UInt8]?) {
        guard let value else {
            ends.append(-1 - bytes.count)
            return
        }
        bytes += value
        ends.append(bytes.count)
    }

    public var startIndex: Int { 0 }
    public var endIndex: Int { rowCount }

    public subscript(row: Int) -> [String?] {
        var values: [String?] = []
        values.reserveCapacity(columnCount)
        for column in 0..<columnCount { values.append(value(row, column)) }
        return values
    }

    public func value(_ row: Int, _ column: Int) -> String? {
        precondition(row >= 0 && row < endIndex && column >= 0 && column < columnCount, "QueryRows: no value at (\(row), \(column))")
        let slot = row * columnCount + column
        let end = ends[slot]
        if end < 0 { return nil }
        let start = slot == 0 ? 0 : Self.end(ends[slot - 1])
        return bytes.withUnsafeBufferPointer { String(decoding: UnsafeBufferPointer(rebasing: $0[start..<end]), as: UTF8.self) }
    }

    @inline(__always)
    private static func end(_ stored: Int) -> Int { stored < 0 ? -1 - stored : stored }

    public static func == (a: QueryRows, b: QueryRows) -> Bool {
        a.count == b.count && zip(a, b).allSatisfy { $0 == $1 }
    }
}

public final class PostgresConnection: @unchecked Sendable {
    private var conn: OpaquePointer?
    private var prepared: Set<String> = []
    public let parameters: ConnectionParameters

    /// `heartbeats`: call `heartbeat` about once a second while connecting too (a connect can take
    /// `connect_timeout_seconds`, as long as the supervisor waits for a silent worker); false on a
    /// thread other than the one that set `heartbeat`.
    public static func connect(_ parameters: ConnectionParameters, heartbeats: Bool = true) throws(PostgresError) -> PostgresConnection {
        let connection = PostgresConnection(parameters: parameters)
        connection.heartbeats = heartbeats
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

    /// Receives the server's NOTICE and WARNING messages ("NOTICE:  ...", one line), which libpq
    /// would otherwise print on stderr outside our log format. nil: they are dropped.
    public var noticeHandler: (@Sendable (String) -> Void)?

    private func open() throws(PostgresError) {
        let pairs = parameters.keywords
        let keys = pairs.map { strdup($0.0) }
        let values = pairs.map { strdup($0.1) }
        defer {
            keys.forEach { free($0) }
            values.forEach { free($0) }
        }
        var keyPointers: [UnsafePointer<CChar>?] = keys.map { UnsafePointer($0) } + [nil]
        var valuePointers: [UnsafePointer<CChar>?] = values.map { UnsafePointer($0) } + [nil]
        let started = keyPointers.withUnsafeMutableBufferPointer { k in
            valuePointers.withUnsafeMutableBufferPointer { v in
                PQconnectStartParams(k.baseAddress, v.baseAddress, 0)
            }
        }
        guard let handle = started else {
            throw PostgresError(kind: .connection, sqlState: nil, message: "could not allocate a PostgreSQL connection")
        }
        // Before the server can answer: the SQLSTATE of a rejected login then appears in the message.
        PQsetErrorVerbosity(handle, PQERRORS_VERBOSE)
        if let problem = Self.finishConnecting(handle, timeoutSeconds: parameters.connectTimeoutSeconds, heartbeat: heartbeats ? Self.heartbeat : nil) {
            PQfinish(handle)
            throw connectFailure(problem)
        }
        PQsetErrorVerbosity(handle, PQERRORS_DEFAULT)
        PQsetNoticeProcessor(handle, { context, message in
            guard let context, let message else { return }
            let connection = Unmanaged<PostgresConnection>.fromOpaque(context).takeUnretainedValue()
            connection.noticeHandler?(PostgresConnection.clean(String(cString: message)))
        }, Unmanaged.passUnretained(self).toOpaque())
        conn = handle
    }

    /// Drive PQconnectPoll to the end (libpq's documented loop), waiting in poll(2) on whichever
    /// socket libpq is using at each step, within `timeoutSeconds` overall (connect_timeout is
    /// applied by libpq's blocking connect only). Returns libpq's error text, or nil when connected.
    private static func finishConnecting(_ handle: OpaquePointer, timeoutSeconds: Int, heartbeat: (() -> Void)?) -> String? {
        if PQstatus(handle) == CONNECTION_BAD { return String(cString: PQerrorMessage(handle)) }
        let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(max(1, timeoutSeconds)) * 1_000_000_000
        var state = PGRES_POLLING_WRITING
        while true {
            switch state {
            case PGRES_POLLING_OK:
                return nil
            case PGRES_POLLING_FAILED:
                return String(cString: PQerrorMessage(handle))
            default:
                let now = DispatchTime.now().uptimeNanoseconds
                guard now < deadline else { return "timeout expired after \(timeoutSeconds) s (database.connect_timeout_seconds)" }
                let fd = PQsocket(handle)
                guard fd >= 0 else { return String(cString: PQerrorMessage(handle)) }
                var descriptor = pollfd(fd: fd, events: Int16(state == PGRES_POLLING_READING ? POLLIN : POLLOUT), revents: 0)
                let milliseconds = Int32(min(UInt64(heartbeat == nil ? Int32.max : 1000), (deadline - now) / 1_000_000 + 1))
                let ready = poll(&descriptor, 1, milliseconds)
                if ready < 0 && errno != EINTR { return "poll() failed: \(String(cString: strerror(errno)))" }
                if ready == 0 { heartbeat?() }
                if ready <= 0 { continue }
            }
            state = PQconnectPoll(handle)
        }
    }

    /// The error of a failed connection attempt, classified (see the file's opening comment).
    private func connectFailure(_ libpqMessage: String) -> PostgresError {
        let sqlState = Self.sqlState(inVerboseMessage: libpqMessage)
        let shown = Self.withoutVerboseDecoration(libpqMessage)
        let target = parameters.safeDescription
        if sqlState == nil, let tls = PostgresTLSFailure(libpqMessage: libpqMessage) {
            return PostgresError(kind: .tls, sqlState: nil, message: tls.sentence(target: target, parameters: parameters, detail: shown))
        }
        // libpq's message names host and port but never the password.
        return PostgresError(kind: .connection, sqlState: sqlState, message: "could not connect to PostgreSQL at \(target): \(shown)")
    }

    /// With PQERRORS_VERBOSE libpq renders a server error as "SEVERITY:  SQLSTATE: message" (then
    /// a "LOCATION:" line). The last such code wins: libpq may have tried more than once (sslmode
    /// prefer or allow retry with the other mode; several hosts).
    static func sqlState(inVerboseMessage message: String) -> String? {
        var found: String?
        for line in message.split(whereSeparator: \.isNewline) {
            guard let separator = line.rangeOfScalars(":  ") else { continue }
            let rest = line[separator.upperBound...]
            let code = rest.prefix(5)
            guard code.count == 5, rest.dropFirst(5).hasPrefix(": "),
                  code.allSatisfy({ ($0.isASCII && $0.isNumber) || ($0.isASCII && $0.isUppercase) }) else { continue }
            found = String(code)
        }
        return found
    }

    /// The message without the verbose decoration: no "LOCATION:" line, no SQLSTATE (the
    /// description adds it once).
    static func withoutVerboseDecoration(_ message: String) -> String {
        message.split(whereSeparator: \.isNewline)
            .filter { !$0.trimmingWhitespace().hasPrefix("LOCATION:") }
            .map { line -> String in
                guard let separator = line.rangeOfScalars(":  "), let code = sqlState(inVerboseMessage: String(line)) else { return String(line) }
                return String(line[..<separator.upperBound]) + String(line[separator.upperBound...].dropFirst(code.count + 2))
            }
            .map { $0.trimmingWhitespace() }
            .filter { !$0.isEmpty }
            .joined(separator: " ")
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

    /// Runs one statement and hands each row of its result to `body` as libpq holds it, with no
    /// copy of the result in between (without this, at batch 5,000 the tracking rows' read held a
    /// 20,000-row result three times over: libpq's, a flat copy, then the caller's structs).
    /// `singleRow`: libpq's single-row mode, so libpq never holds more than one row either (a
    /// `PGresult` per row: for large reads). Returns the number of rows; on an error the rows
    /// already handed over are not a result.
    @discardableResult
    public func forEachRow(_ sql: String, _ params: [String?] = [], singleRow: Bool = false,
                           _ body: (ResultRow) -> Void) throws(PostgresError) -> Int {
        guard let conn else { throw PostgresError(kind: .connection, sqlState: nil, message: "not connected to PostgreSQL") }
        let sent = withCStrings(params) { pointers in
            PQsendQueryParams(conn, sql, Int32(params.count), nil, pointers, nil, nil, 0)
        }
        if sent != 1 { throw connectionLost() }
        if singleRow { _ = PQsetSingleRowMode(conn) }  // refused only when nothing is pending: harmless
        var failure: PostgresError?
        var count = 0
        var answered = false
        while true {
            awaitResult(conn)
            guard let r = PQgetResult(conn) else { break }
            answered = true
            defer { PQclear(r) }
            switch PQresultStatus(r) {
            case PGRES_SINGLE_TUPLE, PGRES_TUPLES_OK:
                guard failure == nil else { continue }
                let rows = PQntuples(r)
                for row in 0..<rows { body(ResultRow(r, row)) }
                count += Int(rows)
            case PGRES_COMMAND_OK, PGRES_EMPTY_QUERY:
                break
            default:
                if failure == nil { failure = error(from: r) }
            }
        }
        guard answered else { throw connectionLost() }
        if let failure {
            if failure.kind != .connection, PQstatus(conn) != CONNECTION_OK { throw connectionLost() }
            throw failure
        }
        return count
    }

    /// Called about once a second while a statement runs (a worker keeps reporting during a long
    /// query). Set once at start, before any query; it must not use a database connection.
    nonisolated(unsafe) public static var heartbeat: (() -> Void)?

    /// Wait until a result can be read without blocking, calling `heartbeat` every second.
    /// Whether this connection's long statements call `heartbeat` (only the thread that set it
    /// may: a connection used from another thread turns this off).
    public var heartbeats = true

    private func awaitResult(_ conn: OpaquePointer) {
        guard heartbeats, Self.heartbeat != nil else { return }  // PQgetResult blocks by itself
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

    // MARK: notifications (LISTEN)

    /// The session's socket, for poll(2) while waiting for a notification (-1 when closed).
    public var socket: Int32 { conn.map { PQsocket($0) } ?? -1 }

    /// Read whatever the server has sent (never blocks) and take the notifications (LISTEN)
    /// received since the last call, also those that arrived during a statement: their count.
    public func takeNotifications() throws(PostgresError) -> Int {
        guard let conn else { throw PostgresError(kind: .connection, sqlState: nil, message: "not connected to PostgreSQL") }
        if PQconsumeInput(conn) == 0 || PQstatus(conn) != CONNECTION_OK { throw connectionLost() }
        var count = 0
        while let notification = PQnotifies(conn) {
            PQfreemem(notification)
            count += 1
        }
        return count
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

    /// Drop a prepared statement (its cached plan may no longer fit the tables it reads).
    public func deallocate(name: String) throws(PostgresError) {
        guard prepared.contains(name) else { return }
        try execute("DEALLOCATE \(quoteIdentifier(name))")
        prepared.remove(name)
    }

    // MARK: - results

    private func consume(_ result: OpaquePointer?) throws(PostgresError) -> QueryResult {
        guard let result else { throw connectionLost() }
        return try consumeOne(result)
    }

    /// `streamed`: the rows of the same command that came before, in single-row mode.
    private func consumeOne(_ r: OpaquePointer, streamed: QueryRows = []) throws(PostgresError) -> QueryResult {
        defer { PQclear(r) }
        let status = PQresultStatus(r)
        guard status == PGRES_TUPLES_OK || status == PGRES_COMMAND_OK || status == PGRES_EMPTY_QUERY else {
            throw error(from: r)
        }
        let (columns, rows) = rowsOf(r, into: streamed)
        let affected = Int(String(cString: PQcmdTuples(r))) ?? 0
        return QueryResult(columns: columns, rows: rows, affectedRows: affected)
    }

    /// A result's column names and rows as text (NULL as nil); `into`: rows streamed before it.
    private func rowsOf(_ r: OpaquePointer, into earlier: QueryRows = []) -> (columns: [String], rows: QueryRows) {
        var columns: [String] = []
        columns.reserveCapacity(Int(PQnfields(r)))
        for c in 0..<PQnfields(r) { columns.append(String(cString: PQfname(r, c))) }
        var rows = earlier
        rows.appendRows(of: r)
        return (columns, rows)
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

    fileprivate static func clean(_ message: String) -> String {
        message.split(whereSeparator: \.isNewline).map { $0.trimmingWhitespace() }.joined(separator: " ")
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
    "\"" + name.replacingAll("\"", with: "\"\"") + "\""
}

/// Quote an SQL string literal: 'it''s'.
public func quoteLiteral(_ value: String) -> String {
    "'" + value.replacingAll("'", with: "''") + "'"
}

// MARK: - streaming replication (COPY BOTH)

extension PostgresConnection {
    /// What one non-blocking read of a replication stream gave.
    public enum CopyRead: Sendable {
        /// One CopyData message's bytes (a walsender's 'w' XLogData or 'k' keepalive).
        case data([UInt8])
        /// Nothing complete has arrived yet: wait for the socket.
        case wouldBlock
    }

    /// Send a replication command that switches the session into COPY BOTH mode
    /// (`START_REPLICATION SLOT ... LOGICAL ...`). Throws the server's error (a missing slot is
    /// SQLSTATE 42704, a slot in use 55006, an invalidated one 55000).
    public func startCopyBoth(_ command: String) throws(PostgresError) {
        guard let conn else { throw PostgresError(kind: .connection, sqlState: nil, message: "not connected to PostgreSQL") }
        guard let r = PQexec(conn, command) else { throw connectionLost() }
        if PQresultStatus(r) == PGRES_COPY_BOTH {
            PQclear(r)
            return
        }
        _ = try consumeOne(r)
        throw PostgresError(kind: .query, sqlState: nil, message: "the server did not start streaming (no COPY BOTH)")
    }

    /// Read the next CopyData message without blocking. The end of the stream is an error: the
    /// server's (a slot invalidated while streaming) or a lost connection.
    public func readCopyData() throws(PostgresError) -> CopyRead {
        guard let conn else { throw PostgresError(kind: .connection, sqlState: nil, message: "not connected to PostgreSQL") }
        var buffer: UnsafeMutablePointer<CChar>?
        var length = PQgetCopyData(conn, &buffer, 1)
        if length == 0 {
            // Read from the socket only once what libpq holds is used up: PQconsumeInput first
            // moves the unread rest of its buffer to the front, and with a stream that arrives
            // faster than it is taken that rest is megabytes, moved again for every message
            // (measured: the stream fell behind for good at 30,000 single-row updates a second).
            if PQconsumeInput(conn) == 0 { throw connectionLost() }
            length = PQgetCopyData(conn, &buffer, 1)
        }
        if length > 0, let buffer {
            defer { PQfreemem(buffer) }
            return buffer.withMemoryRebound(to: UInt8.self, capacity: Int(length)) { .data(Array(UnsafeBufferPointer(start: $0, count: Int(length)))) }
        }
        if length == 0 { return .wouldBlock }
        // -1: the server ended the COPY; its final result says why. -2: libpq's own failure.
        var failure: PostgresError?
        while let r = PQgetResult(conn) {
            if PQresultStatus(r) == PGRES_FATAL_ERROR, failure == nil { failure = error(from: r) }
            PQclear(r)
        }
        throw failure ?? connectionLost()
    }

    /// Send one CopyData message (a standby status update) and flush it, waiting for the socket
    /// at most `timeoutSeconds` (a peer that takes nothing is a lost connection).
    public func writeCopyData(_ bytes: [UInt8], timeoutSeconds: Double = 10) throws(PostgresError) {
        guard let conn else { throw PostgresError(kind: .connection, sqlState: nil, message: "not connected to PostgreSQL") }
        let queued = bytes.withUnsafeBufferPointer { buffer in
            buffer.baseAddress!.withMemoryRebound(to: CChar.self, capacity: buffer.count) { PQputCopyData(conn, $0, Int32(buffer.count)) }
        }
        if queued != 1 { throw connectionLost() }
        let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(timeoutSeconds * 1e9)
        while true {
            let flushed = PQflush(conn)
            if flushed == 0 { return }
            if flushed < 0 || DispatchTime.now().uptimeNanoseconds >= deadline { throw connectionLost() }
            var fd = pollfd(fd: PQsocket(conn), events: Int16(POLLOUT), revents: 0)
            _ = poll(&fd, 1, 100)
        }
    }
}

// MARK: - isolated pipelines

extension PostgresConnection {
    /// One command of a pipeline: SQL without parameters, or a prepared statement with them.
    public enum PipelineCommand: Sendable {
        case sql(String)
        case prepared(name: String, parameters: [String?])
        /// A prepared statement whose rows are taken one by one as the server sends them (libpq's
        /// single-row mode), so when it fails midway the rows before the failure are kept
        /// (`PipelineResult.failedAfter`).
        case preparedStreaming(name: String, parameters: [String?])
    }

    public enum PipelineResult: Sendable {
        case success(QueryResult)
        case failure(PostgresError)
        /// A `preparedStreaming` command that failed after the server had sent these rows.
        case failedAfter(QueryResult, PostgresError)
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
                case .prepared(let name, let parameters), .preparedStreaming(let name, let parameters):
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
        var streamedColumns: [String]?  // the current streaming command's columns, once a row came
        var streamedRows: QueryRows = []  // and its rows so far, in one buffer
        while segment < segments.count {
            // Single-row mode is chosen per command before its first result is read; a call at
            // any other moment (between a result and its NULL, between rows) is refused and harmless.
            let position = results[segment].count
            if streamedColumns == nil, position < segments[segment].count, case .preparedStreaming = segments[segment][position] {
                _ = PQsetSingleRowMode(conn)
            }
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
            case PGRES_SINGLE_TUPLE:
                // Column names once per command, not per row.
                if streamedColumns == nil {
                    streamedColumns = (0..<PQnfields(r)).map { String(cString: PQfname(r, $0)) }
                }
                streamedRows.appendRows(of: r)
                PQclear(r)
            default:
                do throws(PostgresError) {
                    // The final result (no row of its own in single-row mode) closes the command.
                    let result = try consumeOne(r, streamed: streamedRows)
                    results[segment].append(.success(result))
                } catch {
                    if error.kind == .connection { throw error }
                    results[segment].append(streamedColumns.map { .failedAfter(QueryResult(columns: $0, rows: streamedRows, affectedRows: 0), error) }
                                            ?? .failure(error))
                }
                streamedColumns = nil
                streamedRows = []
            }
        }
        return results
    }
}
