// Every scalar configuration key in one table: its section, its TOML key, its type and where it
// lives in PublisherConfig. The TOML walker, the environment overlay and the "unknown key"
// messages all read this table, so a key added here is known everywhere at once.
// `service.watched_tables` is not scalar and is handled by the TOML walker alone.

package struct ConfigField: Sendable {
    enum Target: Sendable {
        case string(WritableKeyPath<PublisherConfig, String> & Sendable)
        case int(WritableKeyPath<PublisherConfig, Int> & Sendable)
        case double(WritableKeyPath<PublisherConfig, Double> & Sendable)
        case bool(WritableKeyPath<PublisherConfig, Bool> & Sendable)
        case logFormat(WritableKeyPath<PublisherConfig, LogFormat> & Sendable)
    }

    let section: String
    let key: String
    let target: Target
    /// Secrets are never echoed in errors or warnings.
    let isSecret: Bool

    init(_ section: String, _ key: String, _ target: Target, secret: Bool = false) {
        self.section = section
        self.key = key
        self.target = target
        self.isSecret = secret
    }

    /// "database.port": the dotted key used in error messages.
    var path: String { "\(section).\(key)" }

    /// "ATOMIC_DATA_PUBLISHER_DATABASE_PORT".
    package var environmentName: String { ConfigField.environmentPrefix + "\(section)_\(key)".uppercased() }

    static let environmentPrefix = "ATOMIC_DATA_PUBLISHER_"

    static let sections = ["database", "ingestor", "service", "logging"]

    package static let all: [ConfigField] = [
        ConfigField("database", "host", .string(\.database.host)),
        ConfigField("database", "port", .int(\.database.port)),
        ConfigField("database", "username", .string(\.database.username)),
        ConfigField("database", "password", .string(\.database.password), secret: true),
        ConfigField("database", "database_name", .string(\.database.databaseName)),
        ConfigField("database", "sslmode", .string(\.database.sslmode)),
        ConfigField("database", "sslrootcert", .string(\.database.sslrootcert)),
        ConfigField("database", "sslcert", .string(\.database.sslcert)),
        ConfigField("database", "sslkey", .string(\.database.sslkey)),
        ConfigField("database", "connect_timeout_seconds", .int(\.database.connectTimeoutSeconds)),
        ConfigField("database", "statement_timeout_seconds", .int(\.database.statementTimeoutSeconds)),
        ConfigField("database", "keepalives_idle_seconds", .int(\.database.keepalivesIdleSeconds)),
        ConfigField("database", "keepalives_interval_seconds", .int(\.database.keepalivesIntervalSeconds)),
        ConfigField("database", "keepalives_count", .int(\.database.keepalivesCount)),
        ConfigField("database", "tcp_user_timeout_seconds", .int(\.database.tcpUserTimeoutSeconds)),

        ConfigField("ingestor", "base_url", .string(\.ingestor.baseURL)),
        ConfigField("ingestor", "timeout_seconds", .int(\.ingestor.timeoutSeconds)),
        ConfigField("ingestor", "max_retries", .int(\.ingestor.maxRetries)),
        ConfigField("ingestor", "retry_delay_seconds", .double(\.ingestor.retryDelaySeconds)),
        ConfigField("ingestor", "max_retry_delay_seconds", .double(\.ingestor.maxRetryDelaySeconds)),
        ConfigField("ingestor", "auth_token", .string(\.ingestor.authToken), secret: true),
        ConfigField("ingestor", "signing_secret", .string(\.ingestor.signingSecret), secret: true),
        ConfigField("ingestor", "previous_signing_secret", .string(\.ingestor.previousSigningSecret), secret: true),
        ConfigField("ingestor", "ca_file", .string(\.ingestor.caFile)),
        ConfigField("ingestor", "client_cert", .string(\.ingestor.clientCert)),
        ConfigField("ingestor", "client_key", .string(\.ingestor.clientKey)),
        ConfigField("ingestor", "allow_insecure_http", .bool(\.ingestor.allowInsecureHTTP)),
        ConfigField("ingestor", "circuit_breaker_failure_threshold", .int(\.ingestor.circuitBreakerFailureThreshold)),
        ConfigField("ingestor", "circuit_breaker_reset_seconds", .double(\.ingestor.circuitBreakerResetSeconds)),

        ConfigField("service", "polling_interval_seconds", .double(\.service.pollingIntervalSeconds)),
        ConfigField("service", "batch_size", .int(\.service.batchSize)),
        ConfigField("service", "max_concurrent_publishes", .int(\.service.maxConcurrentPublishes)),
        ConfigField("service", "health_check_port", .int(\.service.healthCheckPort)),
        ConfigField("service", "health_check_address", .string(\.service.healthCheckAddress)),
        ConfigField("service", "dead_letter_after_attempts", .int(\.service.deadLetterAfterAttempts)),
        ConfigField("service", "shutdown_timeout_seconds", .double(\.service.shutdownTimeoutSeconds)),
        ConfigField("service", "restart_delay_seconds", .double(\.service.restartDelaySeconds)),
        ConfigField("service", "max_restart_delay_seconds", .double(\.service.maxRestartDelaySeconds)),
        ConfigField("service", "instance_id", .string(\.service.instanceId)),
        ConfigField("service", "lease_fence_seconds", .double(\.service.leaseFenceSeconds)),
        ConfigField("service", "lease_retry_seconds", .double(\.service.leaseRetrySeconds)),
        ConfigField("service", "lease_expiry_seconds", .double(\.service.leaseExpirySeconds)),

        ConfigField("logging", "level", .string(\.logging.level)),
        ConfigField("logging", "format", .logFormat(\.logging.format)),
    ]

    /// Fields by section, then by TOML key.
    static let bySection: [String: [String: ConfigField]] = Dictionary(grouping: all, by: \.section)
        .mapValues { fields in Dictionary(uniqueKeysWithValues: fields.map { ($0.key, $0) }) }

    static func named(_ section: String, _ key: String) -> ConfigField {
        guard let field = bySection[section]?[key] else { preconditionFailure("no config field \(section).\(key)") }
        return field
    }

    static var databasePassword: ConfigField { named("database", "password") }
    static var ingestorAuthToken: ConfigField { named("ingestor", "auth_token") }
    static var ingestorSigningSecret: ConfigField { named("ingestor", "signing_secret") }
    static var ingestorPreviousSigningSecret: ConfigField { named("ingestor", "previous_signing_secret") }

    /// The original service's connection-pool keys: accepted with a warning so its config files
    /// keep loading, and ignored, because each table worker holds exactly one connection.
    static let legacyPoolKeys: Set<String> = [
        "max_connections", "min_connections", "acquire_timeout_seconds", "idle_timeout_seconds", "max_lifetime_seconds",
    ]

    static func legacyPoolKeyWarning(_ name: String, file: String?) -> String {
        let source = file.map { "\($0): " } ?? ""
        return "\(source)ignoring \(name): connection-pool settings no longer apply, each table worker holds one connection"
    }
}
