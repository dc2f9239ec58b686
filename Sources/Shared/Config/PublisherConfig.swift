// The resolved configuration: built-in defaults, then TOML files, then environment variables
// (DESIGN.md section 3). Every field here is a promise to users: the TOML key is the snake_case
// name, the environment variable ATOMIC_DATA_PUBLISHER_<SECTION>_<KEY>.

public struct PublisherConfig: Codable, Sendable, Equatable {
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
    public var host = "localhost"
    public var port = 5432
    public var username = "postgres"
    public var password = ""
    public var databaseName = "helium"
    public var sslmode = "prefer"
    public var connectTimeoutSeconds = 10
    public var statementTimeoutSeconds = 30
    public init() {}
}

public struct IngestorConfig: Codable, Sendable, Equatable {
    public var baseURL = "http://localhost:8080"
    public var timeoutSeconds = 30
    public var maxRetries = 3
    public var retryDelaySeconds = 5.0
    public var maxRetryDelaySeconds = 60.0
    public var authToken = ""
    public var circuitBreakerFailureThreshold = 5
    public var circuitBreakerResetSeconds = 60.0
    public init() {}
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
    public var watchedTables: [WatchedTable] = []
    public init() {}
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

public struct WatchedTable: Codable, Sendable, Equatable {
    public var name: String
    public var schema = "public"
    public var primaryKey = "id"
    public var changeColumns: [String]
    public var operations: [ChangeOperation] = [.insert, .update, .delete]
    public var atomicDataQuery: String
    public var publishEndpoint: String

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
