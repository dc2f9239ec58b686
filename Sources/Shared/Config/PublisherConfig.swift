#if canImport(Glibc)
import Glibc
#endif

// The resolved configuration: built-in defaults, then TOML files, then environment variables
// (DESIGN.md section 3). Every field here is a promise to users: the TOML key is the snake_case
// name, the environment variable ATOMIC_DATA_PUBLISHER_<SECTION>_<KEY>.

public struct PublisherConfig: Codable, Sendable, Equatable {
    /// The instance name in effect: `service.instance_id`, or the host name.
    public var resolvedInstanceId: String {
        if !service.instanceId.isEmpty { return service.instanceId }
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count) == 0 else { return "unknown-host" }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The lease fence in effect (see `ServiceConfig.leaseFenceSeconds`).
    public var resolvedLeaseFenceSeconds: Double {
        service.leaseFenceSeconds >= 0 ? service.leaseFenceSeconds : Double(ingestor.timeoutSeconds) + 2
    }

    public var database = DatabaseConfig()
    public var ingestor = IngestorConfig()
    public var service = ServiceConfig()
    public var logging = LoggingConfig()

    public init() {}

    public func table(named name: String) -> WatchedTable? {
        service.watchedTables.first { $0.name == name }
    }
}

public struct DatabaseConfig: Codable, Sendable, Equatable {
    /// One host, or a comma list that libpq tries in order (a primary and its standbys).
    public var host = "localhost"
    /// One port for every host, or one per host of `host`'s list.
    public var ports = [5432]
    public var username = "postgres"
    public var password = ""
    public var databaseName = "helium"
    public var sslmode = "prefer"
    /// PEM file of the CA(s) that signed the server's certificate (libpq `sslrootcert`); empty: libpq's default.
    public var sslrootcert = ""
    /// PEM client certificate and its key (libpq `sslcert`, `sslkey`); empty: none.
    public var sslcert = ""
    public var sslkey = ""
    public var connectTimeoutSeconds = 10
    public var statementTimeoutSeconds = 30
    /// Dead-peer detection on the long-lived connection: TCP keepalive probes after this much
    /// idle time, every `keepalivesIntervalSeconds`, `keepalivesCount` times; and the kernel's
    /// TCP_USER_TIMEOUT for unacknowledged data. Applied on both ends (libpq and the server's
    /// `tcp_keepalives_*` settings).
    public var keepalivesIdleSeconds = 10
    public var keepalivesIntervalSeconds = 5
    public var keepalivesCount = 3
    public var tcpUserTimeoutSeconds = 30
    /// libpq's `target_session_attrs`; empty: `read-write` when `host` lists several hosts (so a
    /// standby listed first, or a standby promoted while the primary is away, is never where the
    /// service stays), else libpq's own default.
    public var targetSessionAttrs = ""
    /// The PostgreSQL sessions this instance may hold in all (SessionBudget); 0: one per worker
    /// plus one read-ahead session each.
    public var maxConnections = 0
    public init() {}

    /// The port when one serves every host (the common case): the first of `ports`. Setting it
    /// gives every host that port.
    public var port: Int {
        get { ports.first ?? 0 }
        set { ports = [newValue] }
    }

    /// `host` split at its commas, blanks around each name removed.
    public var hosts: [String] {
        host.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingWhitespace() }
    }

    /// The `target_session_attrs` in effect (see `targetSessionAttrs`); nil: libpq's default.
    public var resolvedTargetSessionAttrs: String? {
        if !targetSessionAttrs.isEmpty { return targetSessionAttrs }
        return hosts.count > 1 ? "read-write" : nil
    }

    /// `ports` as the `port` key is written: "5432", or "5432,5433" for one port per host.
    public var portList: String { ports.map(String.init).joined(separator: ",") }

    /// Parses the `port` key's string form ("5432" or "5432, 5433"); nil when a part is not an integer.
    public static func ports(parsing text: String) -> [Int]? {
        let parts = text.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingWhitespace() }
        let ports = parts.compactMap { Int($0) }
        return ports.count == parts.count ? ports : nil
    }

    // The supervisor hands this to its workers as JSON (WorkerConfig). `port` stays an integer
    // when one port serves every host, so a worker binary of the previous release still reads
    // the line, and keys added since are optional, so this worker still reads an older
    // supervisor's line (a package upgrade replaces the worker binary under a running supervisor).
    private enum CodingKeys: String, CodingKey {
        case host, port, username, password, databaseName, sslmode, sslrootcert, sslcert, sslkey, connectTimeoutSeconds,
             statementTimeoutSeconds, keepalivesIdleSeconds, keepalivesIntervalSeconds, keepalivesCount, tcpUserTimeoutSeconds,
             targetSessionAttrs, maxConnections
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        host = try c.decode(String.self, forKey: .host)
        if let single = try? c.decode(Int.self, forKey: .port) {
            ports = [single]
        } else {
            let text = try c.decode(String.self, forKey: .port)
            guard let parsed = Self.ports(parsing: text) else {
                throw DecodingError.dataCorruptedError(forKey: .port, in: c, debugDescription: "not a list of ports: \(text)")
            }
            ports = parsed
        }
        username = try c.decode(String.self, forKey: .username)
        password = try c.decode(String.self, forKey: .password)
        databaseName = try c.decode(String.self, forKey: .databaseName)
        sslmode = try c.decode(String.self, forKey: .sslmode)
        sslrootcert = try c.decode(String.self, forKey: .sslrootcert)
        sslcert = try c.decode(String.self, forKey: .sslcert)
        sslkey = try c.decode(String.self, forKey: .sslkey)
        connectTimeoutSeconds = try c.decode(Int.self, forKey: .connectTimeoutSeconds)
        statementTimeoutSeconds = try c.decode(Int.self, forKey: .statementTimeoutSeconds)
        keepalivesIdleSeconds = try c.decode(Int.self, forKey: .keepalivesIdleSeconds)
        keepalivesIntervalSeconds = try c.decode(Int.self, forKey: .keepalivesIntervalSeconds)
        keepalivesCount = try c.decode(Int.self, forKey: .keepalivesCount)
        tcpUserTimeoutSeconds = try c.decode(Int.self, forKey: .tcpUserTimeoutSeconds)
        targetSessionAttrs = try c.decodeIfPresent(String.self, forKey: .targetSessionAttrs) ?? ""
        maxConnections = try c.decodeIfPresent(Int.self, forKey: .maxConnections) ?? 0
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(host, forKey: .host)
        if ports.count == 1 { try c.encode(ports[0], forKey: .port) } else { try c.encode(portList, forKey: .port) }
        try c.encode(username, forKey: .username)
        try c.encode(password, forKey: .password)
        try c.encode(databaseName, forKey: .databaseName)
        try c.encode(sslmode, forKey: .sslmode)
        try c.encode(sslrootcert, forKey: .sslrootcert)
        try c.encode(sslcert, forKey: .sslcert)
        try c.encode(sslkey, forKey: .sslkey)
        try c.encode(connectTimeoutSeconds, forKey: .connectTimeoutSeconds)
        try c.encode(statementTimeoutSeconds, forKey: .statementTimeoutSeconds)
        try c.encode(keepalivesIdleSeconds, forKey: .keepalivesIdleSeconds)
        try c.encode(keepalivesIntervalSeconds, forKey: .keepalivesIntervalSeconds)
        try c.encode(keepalivesCount, forKey: .keepalivesCount)
        try c.encode(tcpUserTimeoutSeconds, forKey: .tcpUserTimeoutSeconds)
        try c.encode(targetSessionAttrs, forKey: .targetSessionAttrs)
        try c.encode(maxConnections, forKey: .maxConnections)
    }
}

public struct IngestorConfig: Codable, Sendable, Equatable {
    public var baseURL = "http://localhost:8080"
    public var timeoutSeconds = 30
    public var maxRetries = 3
    public var retryDelaySeconds = 5.0
    public var maxRetryDelaySeconds = 60.0
    public var authToken = ""
    /// Standard Webhooks signing secret (`whsec_<base64>`); empty: requests are not signed.
    public var signingSecret = ""
    /// The secret being rotated out: while set, requests carry a signature with each secret.
    public var previousSigningSecret = ""
    public var circuitBreakerFailureThreshold = 5
    public var circuitBreakerResetSeconds = 60.0
    /// PEM CA file to verify the ingestor's certificate with; empty: the system's CA store.
    public var caFile = ""
    /// PEM client certificate and key for mutual TLS; empty: none.
    public var clientCert = ""
    public var clientKey = ""
    /// Allow a token or signing secret to travel over plain http:// to a host that is not loopback.
    public var allowInsecureHTTP = false
    /// How request bodies are encoded on the wire: "none", or "gzip" (`Content-Encoding: gzip`).
    public var compression = "none"
    public init() {}

    /// Bodies are gzip-compressed.
    public var gzip: Bool { compression == "gzip" }
}

public struct ServiceConfig: Codable, Sendable, Equatable {
    public var pollingIntervalSeconds = 10.0
    public var batchSize = 100
    public var maxConcurrentPublishes = 5
    public var healthCheckPort = 3000
    public var healthCheckAddress = "0.0.0.0"
    public var deadLetterAfterAttempts = 10
    public var shutdownTimeoutSeconds = 10.0
    /// The supervisor's first delay before restarting a dead worker; doubles up to the maximum.
    public var restartDelaySeconds = 1.0
    public var maxRestartDelaySeconds = 60.0
    /// Names this instance in the X-Publisher-Instance header, logs, /health and the lease
    /// holder's application_name. Empty: the host name.
    public var instanceId = ""
    /// How long a worker waits after taking a table's lease before its first request, so the
    /// previous holder's requests have finished. Negative: automatic (ingestor timeout + 2 s).
    public var leaseFenceSeconds = -1.0
    /// How often a standby tries to take the lease.
    public var leaseRetrySeconds = 2.0
    /// A standby ends the session of a lease holder that shows no sign of life (no renewal, no
    /// statement) for this long, and takes over after the fence: a paused host (SIGSTOP, a frozen
    /// VM) keeps its TCP sessions, and so its lock, alive. The holder renews every 2 s.
    public var leaseExpirySeconds = 30.0
    /// Batch mode (a watched table's `batch_publish_endpoint`): at most this many documents, and
    /// at most this many bytes of body, per request. A document larger alone is sent alone.
    public var maxDocumentsPerRequest = 100
    public var maxRequestBytes = 1_048_576
    public var watchedTables: [WatchedTable] = []
    public init() {}

    // Keys added since the first release are optional in the worker's config line, so this
    // worker still reads an older supervisor's line (a package upgrade replaces the worker binary
    // under a running supervisor).
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        pollingIntervalSeconds = try c.decode(Double.self, forKey: .pollingIntervalSeconds)
        batchSize = try c.decode(Int.self, forKey: .batchSize)
        maxConcurrentPublishes = try c.decode(Int.self, forKey: .maxConcurrentPublishes)
        healthCheckPort = try c.decode(Int.self, forKey: .healthCheckPort)
        healthCheckAddress = try c.decode(String.self, forKey: .healthCheckAddress)
        deadLetterAfterAttempts = try c.decode(Int.self, forKey: .deadLetterAfterAttempts)
        shutdownTimeoutSeconds = try c.decode(Double.self, forKey: .shutdownTimeoutSeconds)
        restartDelaySeconds = try c.decode(Double.self, forKey: .restartDelaySeconds)
        maxRestartDelaySeconds = try c.decode(Double.self, forKey: .maxRestartDelaySeconds)
        instanceId = try c.decode(String.self, forKey: .instanceId)
        leaseFenceSeconds = try c.decode(Double.self, forKey: .leaseFenceSeconds)
        leaseRetrySeconds = try c.decode(Double.self, forKey: .leaseRetrySeconds)
        leaseExpirySeconds = try c.decode(Double.self, forKey: .leaseExpirySeconds)
        maxDocumentsPerRequest = try c.decodeIfPresent(Int.self, forKey: .maxDocumentsPerRequest) ?? 100
        maxRequestBytes = try c.decodeIfPresent(Int.self, forKey: .maxRequestBytes) ?? 1_048_576
        watchedTables = try c.decode([WatchedTable].self, forKey: .watchedTables)
    }
}

public enum ChangeOperation: String, Codable, Sendable, CaseIterable {
    case insert, update, delete
    /// Written by `atomic-data-publisher backfill`, never by the trigger: not a valid entry of a
    /// watched table's `operations` (see `triggerOperations`).
    case backfill

    /// What a watched table's `operations` may list: the trigger's events.
    public static let triggerOperations: [ChangeOperation] = [.insert, .update, .delete]

    /// The one-character code stored in the tracking table's `operation "char"` column.
    public var code: String {
        switch self {
        case .insert: "I"
        case .update: "U"
        case .delete: "D"
        case .backfill: "B"
        }
    }

    public init?(code: String) {
        switch code {
        case "I": self = .insert
        case "U": self = .update
        case "D": self = .delete
        case "B": self = .backfill
        default: return nil
        }
    }
}

/// How a watched table's changes reach its tracking table (docs/database.md, "WAL capture").
public enum CaptureMode: String, Codable, Sendable, CaseIterable {
    /// Triggers on the table and its dependencies write the keys in the writer's transaction.
    case trigger
    /// The lease holder reads the table's logical replication slot (pgoutput) and writes the keys
    /// itself: nothing in the application's write path.
    case wal
}

public struct WatchedTable: Codable, Sendable, Equatable {
    public var name: String
    public var schema = "public"
    public var primaryKey = "id"
    public var changeColumns: [String]
    public var operations: [ChangeOperation] = [.insert, .update, .delete]
    public var atomicDataQuery: String
    public var publishEndpoint: String
    /// Batch mode when set: the table's documents go as JSON arrays to base_url + this path
    /// (`publish_endpoint` is then unused, so a config can switch back). Empty: one per request.
    public var batchPublishEndpoint = ""
    /// How many workers (each with its own lease, so a hot table spreads across cores and hosts)
    /// share this table, each publishing the keys whose stable hash falls in its partition. 1: one
    /// worker for the whole table.
    public var partitions = 1
    /// Other tables the atomic data query reads: a change to one of their rows enqueues the key
    /// of the watched row it references, so the document is published again.
    public var dependencies: [Dependency] = []
    /// Where the keys come from: the capture trigger, or the WAL through a logical replication slot.
    public var capture = CaptureMode.trigger

    /// The most partitions a table may have (an index name carries the number).
    public static let maximumPartitions = 64

    public init(name: String, schema: String = "public", primaryKey: String = "id", changeColumns: [String],
                operations: [ChangeOperation] = [.insert, .update, .delete], atomicDataQuery: String, publishEndpoint: String) {
        self.name = name
        self.schema = schema
        self.primaryKey = primaryKey
        self.changeColumns = changeColumns
        self.operations = operations
        self.atomicDataQuery = atomicDataQuery
        self.publishEndpoint = publishEndpoint
    }

    /// "schema.name", as used in payload ids and log lines.
    public var qualifiedName: String { "\(schema).\(name)" }

    private enum CodingKeys: String, CodingKey {
        case name, schema, primaryKey, changeColumns, operations, atomicDataQuery, publishEndpoint, batchPublishEndpoint, partitions, dependencies, capture
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        name = try c.decode(String.self, forKey: .name)
        schema = try c.decodeIfPresent(String.self, forKey: .schema) ?? "public"
        primaryKey = try c.decodeIfPresent(String.self, forKey: .primaryKey) ?? "id"
        changeColumns = try c.decode([String].self, forKey: .changeColumns)
        operations = try c.decodeIfPresent([ChangeOperation].self, forKey: .operations) ?? [.insert, .update, .delete]
        atomicDataQuery = try c.decode(String.self, forKey: .atomicDataQuery)
        publishEndpoint = try c.decode(String.self, forKey: .publishEndpoint)
        batchPublishEndpoint = try c.decodeIfPresent(String.self, forKey: .batchPublishEndpoint) ?? ""
        partitions = try c.decodeIfPresent(Int.self, forKey: .partitions) ?? 1
        dependencies = try c.decodeIfPresent([Dependency].self, forKey: .dependencies) ?? []
        // Optional: a worker line written by an older supervisor has none (trigger mode).
        capture = try c.decodeIfPresent(CaptureMode.self, forKey: .capture) ?? .trigger
    }
}

/// A table a watched table's document is built from (`[[service.watched_tables.dependencies]]`):
/// its `keyColumns` hold the watched table's primary key.
public struct Dependency: Codable, Sendable, Equatable {
    public var table: String
    public var schema = "public"
    /// The columns that reference the watched row, in the order of the watched table's key.
    public var keyColumns: [String]
    /// Only changes of these columns (and of the key columns) count; empty: any change counts.
    public var changeColumns: [String] = []

    public init(table: String, schema: String = "public", keyColumns: [String], changeColumns: [String] = []) {
        self.table = table
        self.schema = schema
        self.keyColumns = keyColumns
        self.changeColumns = changeColumns
    }

    /// "schema.table", as in the payload's `cause` and in log lines.
    public var qualifiedName: String { "\(schema).\(table)" }
}

/// One worker's share of a watched table: the whole table, or partition `index` of `table.partitions`.
public struct TablePartition: Sendable, Equatable, Hashable {
    public var index: Int
    public var count: Int

    public init(index: Int, count: Int) {
        self.index = index
        self.count = count
    }

    public static let whole = TablePartition(index: 0, count: 1)
    public var isWhole: Bool { count <= 1 }

    /// The name a worker goes by in logs, /health and `status`: the table's name, and for a
    /// partitioned table `name#index` (0-based).
    public func workerName(table: String) -> String {
        isWhole ? table : "\(table)#\(index)"
    }

    /// Splits `table#3` into the table's name and the partition index.
    public static func parse(workerName: String) -> (table: String, index: Int?) {
        guard let hash = workerName.lastIndex(of: "#"), let index = Int(workerName[workerName.index(after: hash)...]) else {
            return (workerName, nil)
        }
        return (String(workerName[..<hash]), index)
    }
}

public enum LogFormat: String, Codable, Sendable, CaseIterable {
    case auto, json, text, journal
}

public struct LoggingConfig: Codable, Sendable, Equatable {
    public var level = "info"
    public var format = LogFormat.auto
    public init() {}
}

/// A configuration problem a user can fix. `description` names the file, the key and what is
/// wrong, in one sentence, and never contains a secret value.
public struct ConfigError: Error, CustomStringConvertible, Sendable, Equatable {
    public var file: String?
    public var key: String?
    public var problem: String

    public init(file: String? = nil, key: String? = nil, problem: String) {
        self.file = file
        self.key = key
        self.problem = problem
    }

    public var description: String {
        var where_: [String] = []
        if let file { where_.append(file) }
        if let key { where_.append("key '\(key)'") }
        return where_.isEmpty ? "configuration error: \(problem)" : "configuration error in \(where_.joined(separator: ", ")): \(problem)"
    }
}
