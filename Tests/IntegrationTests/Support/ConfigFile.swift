import Foundation
import Shared

/// Writes a `PublisherConfig` as the TOML file a worker or the supervisor reads with `--config`.
/// Every key is written, so the file loads back to exactly the same configuration (checked by
/// `write(_:to:)`: a test never runs against a config other than the one it built).
enum ConfigFile {
    /// Settings that make a test fast: poll every 0.2 s when idle, retry after 0.2 s, back off to
    /// at most 1 s, probe again 1 s after the circuit breaker opens; debug logs as JSON on stderr.
    static func forTests(database: DatabaseConfig, ingestorURL: String, tables: [WatchedTable]) -> PublisherConfig {
        var config = PublisherConfig()
        config.database = database
        config.database.connectTimeoutSeconds = 5
        config.database.statementTimeoutSeconds = 30
        config.ingestor.baseURL = ingestorURL
        config.ingestor.timeoutSeconds = 10
        config.ingestor.retryDelaySeconds = 0.2
        config.ingestor.maxRetryDelaySeconds = 1
        config.ingestor.circuitBreakerResetSeconds = 1
        config.service.pollingIntervalSeconds = 0.2
        config.service.batchSize = 100
        config.service.maxConcurrentPublishes = 5
        config.service.shutdownTimeoutSeconds = 5
        // One instance per test unless a test says otherwise: no previous lease holder can have a
        // request in flight, so no fence (the lease tests set their own).
        config.service.leaseFenceSeconds = 0
        config.service.leaseRetrySeconds = 0.5
        config.service.watchedTables = tables
        config.logging.level = "debug"
        config.logging.format = .json
        return config
    }

    /// Write the file and check that it loads and validates back to `config`.
    static func write(_ config: PublisherConfig, to url: URL) throws {
        try render(config).write(to: url, atomically: true, encoding: .utf8)
        let loaded = try ConfigLoader.load(explicitPath: url.path, environment: [:])
        try loaded.validate()
        guard loaded.config == config else {
            throw UnexpectedResult(description: "the test's TOML writer lost something: \(url.path) loads as \(loaded.config), expected \(config)")
        }
    }

    static func render(_ c: PublisherConfig) -> String {
        var lines: [String] = []
        func section(_ name: String) { lines.append(""); lines.append("[\(name)]") }
        func set(_ key: String, _ value: String) { lines.append("\(key) = \(value)") }

        section("database")
        set("host", string(c.database.host))
        set("port", c.database.ports.count == 1 ? String(c.database.port) : string(c.database.portList))
        set("username", string(c.database.username))
        set("password", string(c.database.password))
        set("database_name", string(c.database.databaseName))
        set("sslmode", string(c.database.sslmode))
        set("sslrootcert", string(c.database.sslrootcert))
        set("sslcert", string(c.database.sslcert))
        set("sslkey", string(c.database.sslkey))
        set("connect_timeout_seconds", String(c.database.connectTimeoutSeconds))
        set("statement_timeout_seconds", String(c.database.statementTimeoutSeconds))
        set("keepalives_idle_seconds", String(c.database.keepalivesIdleSeconds))
        set("keepalives_interval_seconds", String(c.database.keepalivesIntervalSeconds))
        set("keepalives_count", String(c.database.keepalivesCount))
        set("tcp_user_timeout_seconds", String(c.database.tcpUserTimeoutSeconds))
        // Only when set: the previous release (rolling-upgrade tests) reads these files too, and
        // refuses a key it does not know.
        if !c.database.targetSessionAttrs.isEmpty { set("target_session_attrs", string(c.database.targetSessionAttrs)) }
        if c.database.maxConnections != 0 { set("max_connections", String(c.database.maxConnections)) }

        section("ingestor")
        set("base_url", string(c.ingestor.baseURL))
        set("timeout_seconds", String(c.ingestor.timeoutSeconds))
        set("max_retries", String(c.ingestor.maxRetries))
        set("retry_delay_seconds", number(c.ingestor.retryDelaySeconds))
        set("max_retry_delay_seconds", number(c.ingestor.maxRetryDelaySeconds))
        set("auth_token", string(c.ingestor.authToken))
        set("signing_secret", string(c.ingestor.signingSecret))
        set("previous_signing_secret", string(c.ingestor.previousSigningSecret))
        set("ca_file", string(c.ingestor.caFile))
        set("client_cert", string(c.ingestor.clientCert))
        set("client_key", string(c.ingestor.clientKey))
        set("allow_insecure_http", c.ingestor.allowInsecureHTTP ? "true" : "false")
        set("circuit_breaker_failure_threshold", String(c.ingestor.circuitBreakerFailureThreshold))
        set("circuit_breaker_reset_seconds", number(c.ingestor.circuitBreakerResetSeconds))
        if c.ingestor.compression != "none" { set("compression", string(c.ingestor.compression)) }

        section("service")
        set("polling_interval_seconds", number(c.service.pollingIntervalSeconds))
        set("batch_size", String(c.service.batchSize))
        set("max_concurrent_publishes", String(c.service.maxConcurrentPublishes))
        set("health_check_port", String(c.service.healthCheckPort))
        set("health_check_address", string(c.service.healthCheckAddress))
        set("dead_letter_after_attempts", String(c.service.deadLetterAfterAttempts))
        set("shutdown_timeout_seconds", number(c.service.shutdownTimeoutSeconds))
        set("restart_delay_seconds", number(c.service.restartDelaySeconds))
        set("max_restart_delay_seconds", number(c.service.maxRestartDelaySeconds))
        set("instance_id", string(c.service.instanceId))
        set("lease_fence_seconds", number(c.service.leaseFenceSeconds))
        set("lease_retry_seconds", number(c.service.leaseRetrySeconds))
        set("lease_expiry_seconds", number(c.service.leaseExpirySeconds))
        // Batch mode's keys only when not the defaults: the previous release refuses keys it does not know.
        if c.service.maxDocumentsPerRequest != 100 { set("max_documents_per_request", String(c.service.maxDocumentsPerRequest)) }
        if c.service.maxRequestBytes != 1_048_576 { set("max_request_bytes", String(c.service.maxRequestBytes)) }

        for table in c.service.watchedTables {
            lines.append("")
            lines.append("[[service.watched_tables]]")
            set("name", string(table.name))
            set("schema", string(table.schema))
            set("primary_key", string(table.primaryKey))
            set("change_columns", "[" + table.changeColumns.map(string).joined(separator: ", ") + "]")
            set("operations", "[" + table.operations.map { string($0.rawValue) }.joined(separator: ", ") + "]")
            set("atomic_data_query", string(table.atomicDataQuery))
            set("publish_endpoint", string(table.publishEndpoint))
            if !table.batchPublishEndpoint.isEmpty { set("batch_publish_endpoint", string(table.batchPublishEndpoint)) }
            if table.partitions != 1 { set("partitions", String(table.partitions)) }
            if table.capture != .trigger { set("capture", string(table.capture.rawValue)) }
            for dependency in table.dependencies {
                lines.append("")
                lines.append("[[service.watched_tables.dependencies]]")
                set("table", string(dependency.table))
                set("schema", string(dependency.schema))
                set("key_columns", "[" + dependency.keyColumns.map(string).joined(separator: ", ") + "]")
                if !dependency.changeColumns.isEmpty {
                    set("change_columns", "[" + dependency.changeColumns.map(string).joined(separator: ", ") + "]")
                }
            }
        }

        section("logging")
        set("level", string(c.logging.level))
        set("format", string(c.logging.format.rawValue))
        return lines.joined(separator: "\n") + "\n"
    }

    /// A TOML basic string: any text, on one line.
    static func string(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20 || scalar.value == 0x7F:
                out += String(format: "\\u%04X", scalar.value)
            default:
                out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }

    /// A TOML float (always with a fraction, so it reads back as the same Double).
    static func number(_ d: Double) -> String {
        let text = String(d)
        return text.contains(".") || text.contains("e") ? text : text + ".0"
    }
}
