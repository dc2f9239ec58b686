// Validation of a fully loaded config: everything that can be checked without a database.
// A failure here makes the service exit 78 (EX_CONFIG) before it touches PostgreSQL.
// Identifiers are checked strictly (ASCII letters, digits, underscore) because they end up
// in generated SQL (triggers, tracking tables) and in file and metric names.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

extension ConfigLoader {
    public static let logLevels = ["trace", "debug", "info", "notice", "warning", "error", "critical"]
    /// `ingestor.compression`'s values.
    public static let compressions = ["none", "gzip"]
    public static let sslModes = ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
    /// libpq's (14 and later) values of `target_session_attrs`.
    public static let targetSessionAttrs = ["any", "read-write", "read-only", "primary", "standby", "prefer-standby"]
    /// PostgreSQL truncates longer identifiers (NAMEDATALEN - 1).
    public static let maximumIdentifierBytes = 63
    public static let maximumBatchSize = 10_000

    public static func validate(_ config: PublisherConfig) throws(ConfigError) {
        try validateDatabase(config.database)
        try validateIngestor(config.ingestor)
        try validateService(config.service)
        try validateLogging(config.logging)
        try validateWatchedTables(config.service.watchedTables)
        try validateSessionBudget(config)
    }

    /// Each worker needs one session, and each WAL stream two: a budget below that could never run
    /// them all.
    private static func validateSessionBudget(_ config: PublisherConfig) throws(ConfigError) {
        try atLeast(0, config.database.maxConnections, "database.max_connections")
        let budget = SessionBudget(config)
        guard budget.configured, budget.limit < budget.required else { return }
        let partitioned = config.service.watchedTables.filter { $0.partitions > 1 }.count
        let counted = partitioned == 0 ? "" : " (a table with partitions = N counts N)"
        let streams = budget.streamingWorkers.count
        let need = streams == 0 ? "which need one PostgreSQL session each"
            : "which need one PostgreSQL session each, and \(streams) WAL stream\(streams == 1 ? "" : "s") (capture = \"wal\") two more each: \(budget.required) in all"
        throw ConfigError(key: "database.max_connections",
                          problem: "is \(budget.limit), below the \(budget.workers) workers this configuration starts\(counted), \(need); set it to at least \(budget.required) (\(budget.required + budget.workers) lets every worker read ahead), or 0 for automatic")
    }

    /// Letters, digits and underscores, not starting with a digit, at most 63 bytes.
    public static func isValidIdentifier(_ text: String) -> Bool {
        identifierProblem(text) == nil
    }

    static func identifierProblem(_ text: String) -> String? {
        let bytes = Array(text.utf8)
        guard let first = bytes.first else { return "must not be empty" }
        if bytes.count > maximumIdentifierBytes {
            return "'\(text)' is longer than \(maximumIdentifierBytes) bytes, PostgreSQL's limit for identifiers"
        }
        func isLetter(_ b: UInt8) -> Bool { (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || b == 0x5F }
        func isDigit(_ b: UInt8) -> Bool { b >= 0x30 && b <= 0x39 }
        guard isLetter(first), bytes.allSatisfy({ isLetter($0) || isDigit($0) }) else {
            return "'\(text)' is not a valid SQL identifier (use letters, digits and underscores, not starting with a digit)"
        }
        return nil
    }

    // MARK: Sections

    private static func validateDatabase(_ database: DatabaseConfig) throws(ConfigError) {
        try nonEmpty(database.host, "database.host")
        let hosts = database.hosts
        if hosts.count > 1, let empty = hosts.firstIndex(of: "") {
            throw ConfigError(key: "database.host", problem: "the list's host \(empty + 1) of \(hosts.count) is empty; separate host names with single commas")
        }
        guard !database.ports.isEmpty else { throw ConfigError(key: "database.port", problem: "must name a port") }
        for value in database.ports { try port(value, "database.port") }
        // libpq's rule: one port for every host, or one per host.
        guard database.ports.count == 1 || database.ports.count == hosts.count else {
            throw ConfigError(key: "database.port", problem: "lists \(database.ports.count) ports for \(hosts.count) host\(hosts.count == 1 ? "" : "s") in database.host; give one port for all hosts or one per host")
        }
        guard database.targetSessionAttrs.isEmpty || targetSessionAttrs.contains(database.targetSessionAttrs) else {
            throw ConfigError(key: "database.target_session_attrs",
                              problem: "'\(database.targetSessionAttrs)' is not a target_session_attrs; expected one of \(targetSessionAttrs.joined(separator: ", ")), or empty for the default")
        }
        try nonEmpty(database.username, "database.username")
        try nonEmpty(database.databaseName, "database.database_name")
        guard sslModes.contains(database.sslmode) else {
            throw ConfigError(key: "database.sslmode",
                              problem: "'\(database.sslmode)' is not an sslmode; expected one of \(sslModes.joined(separator: ", "))")
        }
        try readableFile(database.sslrootcert, "database.sslrootcert")
        try readableFile(database.sslcert, "database.sslcert")
        try readableFile(database.sslkey, "database.sslkey")
        if !database.sslkey.isEmpty && database.sslcert.isEmpty {
            throw ConfigError(key: "database.sslkey", problem: "is set but database.sslcert is not; a client key needs its certificate")
        }
        try positive(database.connectTimeoutSeconds, "database.connect_timeout_seconds")
        try positive(database.statementTimeoutSeconds, "database.statement_timeout_seconds")
        try positive(database.keepalivesIdleSeconds, "database.keepalives_idle_seconds")
        try positive(database.keepalivesIntervalSeconds, "database.keepalives_interval_seconds")
        try atLeast(1, database.keepalivesCount, "database.keepalives_count")
        try atLeast(0, database.tcpUserTimeoutSeconds, "database.tcp_user_timeout_seconds")
    }

    private static func validateIngestor(_ ingestor: IngestorConfig) throws(ConfigError) {
        // The URL is not echoed: it may carry credentials (http://user:secret@host).
        let url = ingestor.baseURL
        let afterScheme = url.hasPrefix("https://") ? url.dropFirst(8) : url.hasPrefix("http://") ? url.dropFirst(7) : nil
        guard let afterScheme, let first = afterScheme.first, first != "/" else {
            throw ConfigError(key: "ingestor.base_url", problem: "must be an http:// or https:// URL with a host")
        }
        // user:password@ in the URL becomes Basic authentication (libcurl); with auth_token set
        // it would be silently replaced by the Bearer header: refuse the ambiguity.
        let authority = afterScheme.prefix { $0 != "/" && $0 != "?" && $0 != "#" }
        if authority.contains("@") && !ingestor.authToken.isEmpty {
            throw ConfigError(key: "ingestor.base_url", problem: "carries credentials (user:password@) and ingestor.auth_token is set; only one can be sent: remove one of them")
        }
        try positive(ingestor.timeoutSeconds, "ingestor.timeout_seconds")
        try atLeast(0, ingestor.maxRetries, "ingestor.max_retries")
        try positive(ingestor.retryDelaySeconds, "ingestor.retry_delay_seconds")
        try positive(ingestor.maxRetryDelaySeconds, "ingestor.max_retry_delay_seconds")
        guard ingestor.maxRetryDelaySeconds >= ingestor.retryDelaySeconds else {
            throw ConfigError(key: "ingestor.max_retry_delay_seconds",
                              problem: "must be at least retry_delay_seconds (\(ingestor.retryDelaySeconds)), found \(ingestor.maxRetryDelaySeconds)")
        }
        try atLeast(1, ingestor.circuitBreakerFailureThreshold, "ingestor.circuit_breaker_failure_threshold")
        guard compressions.contains(ingestor.compression) else {
            throw ConfigError(key: "ingestor.compression",
                              problem: "'\(ingestor.compression)' is not a compression; expected one of \(compressions.joined(separator: ", "))")
        }
        try positive(ingestor.circuitBreakerResetSeconds, "ingestor.circuit_breaker_reset_seconds")

        for (value, key) in [(ingestor.signingSecret, "ingestor.signing_secret"),
                             (ingestor.previousSigningSecret, "ingestor.previous_signing_secret")] where !value.isEmpty {
            // The secret itself is never echoed.
            if let problem = WebhookSigner.secretProblem(value) { throw ConfigError(key: key, problem: problem) }
        }
        if !ingestor.previousSigningSecret.isEmpty && ingestor.signingSecret.isEmpty {
            throw ConfigError(key: "ingestor.previous_signing_secret",
                              problem: "is set but ingestor.signing_secret is not; set the new secret in signing_secret")
        }

        // Credentials in clear text only on loopback, unless the user says so explicitly.
        if url.hasPrefix("http://") && !ingestor.allowInsecureHTTP && !isLoopbackHost(ofURL: url) {
            let credentials = [(ingestor.authToken, "ingestor.auth_token"), (ingestor.signingSecret, "ingestor.signing_secret")]
            if let (_, key) = credentials.first(where: { !$0.0.isEmpty }) {
                throw ConfigError(key: key, problem: """
                    is set but ingestor.base_url is plain http:// to a host that is not loopback, so it would travel \
                    unencrypted; use https://, or set ingestor.allow_insecure_http = true to accept that
                    """)
            }
        }

        try readableFile(ingestor.caFile, "ingestor.ca_file")
        try readableFile(ingestor.clientCert, "ingestor.client_cert")
        try readableFile(ingestor.clientKey, "ingestor.client_key")
        if !ingestor.clientKey.isEmpty && ingestor.clientCert.isEmpty {
            throw ConfigError(key: "ingestor.client_key", problem: "is set but ingestor.client_cert is not; a client key needs its certificate")
        }
    }

    /// The host of an http(s) URL is a loopback name or address: localhost, 127.0.0.0/8, ::1.
    package static func isLoopbackHost(ofURL url: String) -> Bool {
        guard let schemeEnd = url.rangeOfScalars("://") else { return false }
        var authority = url[schemeEnd.upperBound...].prefix { $0 != "/" && $0 != "?" && $0 != "#" }
        if let at = authority.lastIndex(of: "@") { authority = authority[authority.index(after: at)...] }
        let host: Substring
        if authority.hasPrefix("[") {
            host = authority.dropFirst().prefix { $0 != "]" }
        } else {
            host = authority.prefix { $0 != ":" }
        }
        let name = host.lowercased()
        if name == "localhost" || name == "localhost." || name.hasSuffix(".localhost") || name == "::1" { return true }
        let octets = name.split(separator: ".", omittingEmptySubsequences: false)
        return octets.count == 4 && octets[0] == "127" && octets.allSatisfy { UInt8($0) != nil }
    }

    private static func validateService(_ service: ServiceConfig) throws(ConfigError) {
        try positive(service.pollingIntervalSeconds, "service.polling_interval_seconds")
        try atLeast(1, service.batchSize, "service.batch_size")
        // A batch is held in memory and acknowledged as it goes; a huge one only delays progress.
        guard service.batchSize <= maximumBatchSize else {
            throw ConfigError(key: "service.batch_size", problem: "must be at most \(maximumBatchSize), found \(service.batchSize)")
        }
        try atLeast(1, service.maxConcurrentPublishes, "service.max_concurrent_publishes")
        guard (1...10_000).contains(service.maxDocumentsPerRequest) else {
            throw ConfigError(key: "service.max_documents_per_request", problem: "must be between 1 and 10000, found \(service.maxDocumentsPerRequest)")
        }
        try atLeast(1024, service.maxRequestBytes, "service.max_request_bytes")
        try port(service.healthCheckPort, "service.health_check_port")
        try nonEmpty(service.healthCheckAddress, "service.health_check_address")
        try atLeast(1, service.deadLetterAfterAttempts, "service.dead_letter_after_attempts")
        try positive(service.shutdownTimeoutSeconds, "service.shutdown_timeout_seconds")
        try positive(service.restartDelaySeconds, "service.restart_delay_seconds")
        try positive(service.leaseRetrySeconds, "service.lease_retry_seconds")
        // The holder renews every 2 s: an expiry shorter than a few renewals would end live holders.
        guard service.leaseExpirySeconds.isFinite, service.leaseExpirySeconds >= 6 else {
            throw ConfigError(key: "service.lease_expiry_seconds", problem: "must be at least 6 seconds (the lease holder renews every 2 s), found \(service.leaseExpirySeconds)")
        }
        guard service.leaseFenceSeconds.isFinite, service.leaseFenceSeconds >= 0 || service.leaseFenceSeconds == -1 else {
            throw ConfigError(key: "service.lease_fence_seconds", problem: "must be -1 (automatic: ingestor.timeout_seconds + 2) or a number of seconds, found \(service.leaseFenceSeconds)")
        }
        guard service.instanceId.utf8.count <= 40, !service.instanceId.contains(where: { $0.isNewline || $0 == "\u{0}" }) else {
            throw ConfigError(key: "service.instance_id", problem: "must be at most 40 bytes on one line (it is sent as a header and shown in pg_stat_activity)")
        }
        guard service.maxRestartDelaySeconds >= service.restartDelaySeconds else {
            throw ConfigError(key: "service.max_restart_delay_seconds", problem: "must be at least service.restart_delay_seconds")
        }
    }

    private static func validateLogging(_ logging: LoggingConfig) throws(ConfigError) {
        guard logLevels.contains(logging.level) else {
            throw ConfigError(key: "logging.level",
                              problem: "'\(logging.level)' is not a log level; expected one of \(logLevels.joined(separator: ", "))")
        }
        // logging.format is a LogFormat: an unknown name is already rejected while loading.
    }

    private static func validateWatchedTables(_ tables: [WatchedTable]) throws(ConfigError) {
        guard !tables.isEmpty else {
            throw ConfigError(key: "service.watched_tables",
                              problem: "no watched tables are configured; add at least one [[service.watched_tables]] section")
        }
        var seen: [String: Int] = [:]
        for (index, table) in tables.enumerated() {
            let prefix = "service.watched_tables[\(index)]"
            let context = " (watched table '\(table.name)')"
            func fail(_ key: String, _ problem: String) -> ConfigError {
                ConfigError(key: "\(prefix).\(key)", problem: problem + context)
            }

            if let problem = identifierProblem(table.name) { throw fail("name", problem) }
            // The tracking objects are named after the table with a suffix; PostgreSQL would
            // truncate a longer name and two objects would collide.
            let longestName = table.name + TrackingObjectNames.longestSuffix
            if longestName.utf8.count > maximumIdentifierBytes {
                throw fail("name", "'\(table.name)' is \(table.name.utf8.count) bytes; the tracking objects add up to \(TrackingObjectNames.longestSuffix.utf8.count) bytes ('\(longestName)'), past PostgreSQL's \(maximumIdentifierBytes)-byte limit, so table names may have at most \(maximumIdentifierBytes - TrackingObjectNames.longestSuffix.utf8.count) bytes")
            }
            if let problem = identifierProblem(table.schema) { throw fail("schema", problem) }
            if let problem = identifierProblem(table.primaryKey) { throw fail("primary_key", problem) }

            let changeKey = table.changeColumns.count == 1 ? "change_column" : "change_columns"
            guard !table.changeColumns.isEmpty else { throw fail("change_columns", "must list at least one column") }
            for (position, column) in table.changeColumns.enumerated() {
                let key = table.changeColumns.count == 1 ? changeKey : "\(changeKey)[\(position)]"
                if let problem = identifierProblem(column) { throw fail(key, problem) }
                if table.changeColumns[..<position].contains(column) { throw fail(key, "'\(column)' is listed twice") }
            }

            guard !table.operations.isEmpty else {
                throw fail("operations", "must list at least one of insert, update, delete")
            }
            for (position, operation) in table.operations.enumerated() where table.operations[..<position].contains(operation) {
                throw fail("operations[\(position)]", "'\(operation.rawValue)' is listed twice")
            }
            // Backfill rows come from the backfill command, never from the trigger.
            for (position, operation) in table.operations.enumerated() where !ChangeOperation.triggerOperations.contains(operation) {
                throw fail("operations[\(position)]", "'\(operation.rawValue)' is not a trigger operation; expected insert, update or delete (run `atomic-data-publisher backfill` to enqueue existing rows)")
            }

            guard (1...WatchedTable.maximumPartitions).contains(table.partitions) else {
                throw fail("partitions", "must be between 1 and \(WatchedTable.maximumPartitions), found \(table.partitions)")
            }

            guard table.atomicDataQuery.containsScalars("$PRIMARY_KEY") else {
                throw fail("atomic_data_query", "the query must contain $PRIMARY_KEY, which is replaced by the changed row's primary key")
            }
            guard table.publishEndpoint.hasPrefix("/") else {
                throw fail("publish_endpoint", "must be a path starting with '/', found '\(table.publishEndpoint)'")
            }
            guard table.batchPublishEndpoint.isEmpty || table.batchPublishEndpoint.hasPrefix("/") else {
                throw fail("batch_publish_endpoint", "must be a path starting with '/', found '\(table.batchPublishEndpoint)'")
            }

            try validateDependencies(of: table, prefix: prefix, context: context)

            // Workers, metrics and logs name a table by its name alone, so names are unique across schemas.
            if let first = seen[table.name] {
                throw fail("name", "a table named '\(table.name)' is already watched by service.watched_tables[\(first)]; table names must be unique across schemas")
            }
            seen[table.name] = index
        }
    }

    private static func validateDependencies(of table: WatchedTable, prefix: String, context: String) throws(ConfigError) {
        for (index, dependency) in table.dependencies.enumerated() {
            let here = "\(prefix).dependencies[\(index)]"
            let about = " (dependency \(dependency.qualifiedName) of watched table '\(table.name)')"
            func fail(_ key: String, _ problem: String) -> ConfigError {
                ConfigError(key: "\(here).\(key)", problem: problem + about)
            }
            if let problem = identifierProblem(dependency.table) { throw fail("table", problem) }
            if let problem = identifierProblem(dependency.schema) { throw fail("schema", problem) }
            if dependency.table == table.name && dependency.schema == table.schema {
                throw fail("table", "a watched table cannot depend on itself: its own changes are captured already")
            }
            if let first = table.dependencies[..<index].firstIndex(where: { $0.qualifiedName == dependency.qualifiedName }) {
                throw fail("table", "\(dependency.qualifiedName) is already listed as dependencies[\(first)]")
            }
            let keyKey = dependency.keyColumns.count == 1 ? "key_column" : "key_columns"
            // The watched table's key is one column, so a reference is one column too.
            guard dependency.keyColumns.count == 1 else {
                throw fail(keyKey, "lists \(dependency.keyColumns.count) columns, but the primary key of \(table.qualifiedName) is the one column '\(table.primaryKey)': name the one column that holds it")
            }
            for column in dependency.keyColumns {
                if let problem = identifierProblem(column) { throw fail(keyKey, problem) }
            }
            for (position, column) in dependency.changeColumns.enumerated() {
                if let problem = identifierProblem(column) { throw fail("change_columns[\(position)]", problem) }
                if dependency.changeColumns[..<position].contains(column) { throw fail("change_columns[\(position)]", "'\(column)' is listed twice") }
            }
        }
    }

    // MARK: Checks

    /// An optional file setting: empty, or a file this process can read now (checked offline too,
    /// so a typo fails `check-config --offline` rather than the first connection).
    private static func readableFile(_ path: String, _ key: String) throws(ConfigError) {
        guard !path.isEmpty else { return }
        var status = stat()
        guard stat(path, &status) == 0 else {
            throw ConfigError(key: key, problem: "cannot use '\(path)': \(String(cString: strerror(errno)))")
        }
        guard (status.st_mode & S_IFMT) == S_IFREG else {
            throw ConfigError(key: key, problem: "'\(path)' is not a regular file")
        }
        guard access(path, R_OK) == 0 else {
            throw ConfigError(key: key, problem: "cannot read '\(path)': \(String(cString: strerror(errno)))")
        }
    }

    private static func nonEmpty(_ value: String, _ key: String) throws(ConfigError) {
        guard !value.isEmpty else { throw ConfigError(key: key, problem: "must not be empty") }
    }

    private static func port(_ value: Int, _ key: String) throws(ConfigError) {
        guard (1...65535).contains(value) else { throw ConfigError(key: key, problem: "must be a port between 1 and 65535, found \(value)") }
    }

    private static func atLeast(_ minimum: Int, _ value: Int, _ key: String) throws(ConfigError) {
        guard value >= minimum else { throw ConfigError(key: key, problem: "must be at least \(minimum), found \(value)") }
    }

    private static func positive(_ value: Int, _ key: String) throws(ConfigError) {
        guard value > 0 else { throw ConfigError(key: key, problem: "must be a positive number of seconds, found \(value)") }
    }

    private static func positive(_ value: Double, _ key: String) throws(ConfigError) {
        guard value > 0, value.isFinite else { throw ConfigError(key: key, problem: "must be a positive number of seconds, found \(value)") }
    }
}

/// The longest suffix the tracking schema adds to a table's name (`TrackingSchema.retryIndexName`):
/// validation keeps the result within PostgreSQL's 63 bytes, so no two objects collide after
/// truncation. Here, not in TrackingSchema, because the configuration is in SharedCore.
public enum TrackingObjectNames {
    public static let longestSuffix = "_changes_retry_idx"
}
