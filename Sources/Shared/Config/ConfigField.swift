// Every scalar configuration key in one table: its section, its TOML key, its type and where it
// lives in PublisherConfig. The TOML walker, the environment overlay and the "unknown key"
// messages all read this table, so a key added here is known everywhere at once.
// `service.watched_tables` is not scalar and is handled by the TOML walker alone.

package struct ConfigField: Sendable {
    enum Target: Sendable {
        case string(WritableKeyPath<PublisherConfig, String> & Sendable)
        case int(WritableKeyPath<PublisherConfig, Int> & Sendable)
        /// An integer, or a string of comma-separated integers ("5432,5433").
        case intList(WritableKeyPath<PublisherConfig, [Int]> & Sendable)
        case double(WritableKeyPath<PublisherConfig, Double> & Sendable)
        case bool(WritableKeyPath<PublisherConfig, Bool> & Sendable)
        case logFormat(WritableKeyPath<PublisherConfig, LogFormat> & Sendable)
    }

    let section: String
    let key: String
    let target: Target
    /// Secrets are never echoed in errors or warnings.
    let isSecret: Bool
    /// One line for docs/configuration.md (Markdown, links relative to docs/), printed by
    /// `atomic-data-publisher config-reference`. Required, so a key cannot be added undocumented.
    let meaning: String

    init(_ section: String, _ key: String, _ target: Target, secret: Bool = false, _ meaning: String) {
        self.section = section
        self.key = key
        self.target = target
        self.isSecret = secret
        self.meaning = meaning
    }

    /// "database.port": the dotted key used in error messages.
    var path: String { "\(section).\(key)" }

    /// "ATOMIC_DATA_PUBLISHER_DATABASE_PORT".
    package var environmentName: String { ConfigField.environmentPrefix + "\(section)_\(key)".uppercased() }

    static let environmentPrefix = "ATOMIC_DATA_PUBLISHER_"

    static let sections = ["database", "ingestor", "service", "logging"]

    package static let all: [ConfigField] = [
        ConfigField("database", "host", .string(\.database.host),
                    "PostgreSQL's host name, address, or Unix socket directory (such as `/var/run/postgresql`); or a comma list of them, tried in order (see [Primary failover](operations.md#primary-failover))."),
        ConfigField("database", "port", .intList(\.database.ports),
                    "PostgreSQL's port; with several hosts, one port for all or a string with one per host (`\"5432,5433\"`)."),
        ConfigField("database", "username", .string(\.database.username),
                    "The role the service connects as (see [least privilege](database.md#permissions-least-privilege))."),
        ConfigField("database", "password", .string(\.database.password), secret: true,
                    "Secret. Also `…_DATABASE_PASSWORD_FILE` and the credential `database_password`. When empty, no password is sent, so libpq's `~/.pgpass` applies."),
        ConfigField("database", "database_name", .string(\.database.databaseName),
                    "The database that holds the watched tables."),
        ConfigField("database", "sslmode", .string(\.database.sslmode),
                    "`disable`, `allow`, `prefer`, `require`, `verify-ca`, `verify-full` (libpq's modes; see [TLS and request signing](#tls-and-request-signing))"),
        ConfigField("database", "sslrootcert", .string(\.database.sslrootcert),
                    "PEM file of the CA(s) that signed the server's certificate, for `verify-ca` / `verify-full`. Empty: libpq's default `~/.postgresql/root.crt`. Must be readable when set."),
        ConfigField("database", "sslcert", .string(\.database.sslcert),
                    "PEM client certificate (PostgreSQL `cert` authentication). Empty: none (libpq's default `~/.postgresql/postgresql.crt` if present)."),
        ConfigField("database", "sslkey", .string(\.database.sslkey),
                    "The client certificate's private key (mode 0600 or 0640). Needs `sslcert`."),
        ConfigField("database", "connect_timeout_seconds", .int(\.database.connectTimeoutSeconds),
                    "How long a connection attempt may take before it counts as failed (libpq `connect_timeout`)."),
        ConfigField("database", "statement_timeout_seconds", .int(\.database.statementTimeoutSeconds),
                    "The session's `statement_timeout`. `idle_in_transaction_session_timeout` is set to the larger of 60 s and twice this value."),
        ConfigField("database", "keepalives_idle_seconds", .int(\.database.keepalivesIdleSeconds),
                    "TCP keepalive probes start after this much silence, on both ends (libpq `keepalives_idle`, server `tcp_keepalives_idle`)."),
        ConfigField("database", "keepalives_interval_seconds", .int(\.database.keepalivesIntervalSeconds),
                    "Between probes (libpq `keepalives_interval`, server `tcp_keepalives_interval`)."),
        ConfigField("database", "keepalives_count", .int(\.database.keepalivesCount),
                    "Unanswered probes before the connection is declared dead (libpq `keepalives_count`, server `tcp_keepalives_count`)."),
        ConfigField("database", "tcp_user_timeout_seconds", .int(\.database.tcpUserTimeoutSeconds),
                    "How long sent data may stay unacknowledged before the connection is dropped (libpq and server `tcp_user_timeout`, in ms). `0`: the kernel's default (~15 min). See [Sessions and resources](operations.md#sessions-and-resources)."),
        ConfigField("database", "target_session_attrs", .string(\.database.targetSessionAttrs),
                    "Which server of `host`'s list a session may use (libpq's): `any`, `read-write`, `read-only`, `primary`, `standby`, `prefer-standby`. Empty: `read-write` with several hosts, else libpq's default (`any`)."),
        ConfigField("database", "max_connections", .int(\.database.maxConnections),
                    "The PostgreSQL sessions this instance may hold in all: one per worker (a table with `partitions = N` has N) and two per `capture = \"wal\"` table's stream, the rest read batches ahead, one per worker at most. At least that many. `0`: automatic, two per worker and two per stream. See [Sessions and resources](operations.md#sessions-and-resources)."),

        ConfigField("ingestor", "base_url", .string(\.ingestor.baseURL),
                    "`http://` or `https://` with a host. Trailing `/` removed; `publish_endpoint` is appended. `user:password@` in it is sent as HTTP Basic authentication; together with `auth_token` it is a configuration error (only one credential can be sent). Never echoed in messages."),
        ConfigField("ingestor", "timeout_seconds", .int(\.ingestor.timeoutSeconds),
                    "Whole request. The connect timeout is the smaller of 10 s and this value."),
        ConfigField("ingestor", "max_retries", .int(\.ingestor.maxRetries),
                    "Immediate in-process retries of a transient failure before it is rescheduled in the tracking table."),
        ConfigField("ingestor", "retry_delay_seconds", .double(\.ingestor.retryDelaySeconds),
                    "First backoff. Doubles on each attempt."),
        ConfigField("ingestor", "max_retry_delay_seconds", .double(\.ingestor.maxRetryDelaySeconds),
                    "Cap on the backoff and on `Retry-After`."),
        ConfigField("ingestor", "auth_token", .string(\.ingestor.authToken), secret: true,
                    "Secret. Sent as `Authorization: Bearer …` when set. Also `…_INGESTOR_AUTH_TOKEN_FILE` and the credential `ingestor_auth_token`."),
        ConfigField("ingestor", "signing_secret", .string(\.ingestor.signingSecret), secret: true,
                    "Secret, `whsec_<base64 of 24+ random bytes>`. When set, every publish is signed the [Standard Webhooks](https://www.standardwebhooks.com) way. Also `…_INGESTOR_SIGNING_SECRET_FILE` and the credential `ingestor_signing_secret`."),
        ConfigField("ingestor", "previous_signing_secret", .string(\.ingestor.previousSigningSecret), secret: true,
                    "Secret. During a rotation, the old secret: publishes carry both signatures. Also `…_FILE` and the credential `ingestor_previous_signing_secret`."),
        ConfigField("ingestor", "ca_file", .string(\.ingestor.caFile),
                    "PEM CA file to verify an `https://` ingestor with. Empty: the system's CA store. Verification is always on."),
        ConfigField("ingestor", "client_cert", .string(\.ingestor.clientCert),
                    "PEM client certificate for mutual TLS."),
        ConfigField("ingestor", "client_key", .string(\.ingestor.clientKey),
                    "Its private key. Empty: the key is in `client_cert`'s file. Needs `client_cert`."),
        ConfigField("ingestor", "allow_insecure_http", .bool(\.ingestor.allowInsecureHTTP),
                    "Allow `auth_token` or `signing_secret` with a plain `http://` `base_url` whose host is not loopback. Environment: `true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`."),
        ConfigField("ingestor", "compression", .string(\.ingestor.compression),
                    "`none` or `gzip`: request bodies gzip-compressed, sent with `Content-Encoding: gzip`; the signature and `Idempotency-Key` cover the uncompressed body (see [Compression](delivery.md#compression))."),
        ConfigField("ingestor", "circuit_breaker_failure_threshold", .int(\.ingestor.circuitBreakerFailureThreshold),
                    "Consecutive transient failures that open a worker's breaker."),
        ConfigField("ingestor", "circuit_breaker_reset_seconds", .double(\.ingestor.circuitBreakerResetSeconds),
                    "How long an open breaker waits before sending one probe."),

        ConfigField("service", "polling_interval_seconds", .double(\.service.pollingIntervalSeconds),
                    "Upper bound of the idle poll's backoff while the worker cannot sleep, and how often a sleeping worker checks for retries that came due (see [polling and wake-up](delivery.md#polling-and-wake-up); a new change wakes it at once). `config/default.toml` sets `1`."),
        ConfigField("service", "batch_size", .int(\.service.batchSize),
                    "Tracking rows read per batch."),
        ConfigField("service", "max_concurrent_publishes", .int(\.service.maxConcurrentPublishes),
                    "Requests in flight per worker."),
        ConfigField("service", "health_check_port", .int(\.service.healthCheckPort),
                    "Port of `/health`, `/livez`, `/readyz` and `/metrics`. Not re-bound on `SIGHUP`."),
        ConfigField("service", "health_check_address", .string(\.service.healthCheckAddress),
                    "Address the HTTP endpoints listen on; `status` asks `127.0.0.1` when it is `0.0.0.0` or `::`."),
        ConfigField("service", "dead_letter_after_attempts", .int(\.service.deadLetterAfterAttempts),
                    "Applies to permanent failures only."),
        ConfigField("service", "shutdown_timeout_seconds", .double(\.service.shutdownTimeoutSeconds),
                    "Delay before `TERM` becomes `KILL` for a worker."),
        ConfigField("service", "restart_delay_seconds", .double(\.service.restartDelaySeconds),
                    "First delay before the supervisor restarts a dead worker; doubles (±25 % jitter) per consecutive failure."),
        ConfigField("service", "max_restart_delay_seconds", .double(\.service.maxRestartDelaySeconds),
                    "Cap of that delay. The backoff resets once a worker has run for 60 s."),
        ConfigField("service", "instance_id", .string(\.service.instanceId),
                    "Names this instance: `X-Publisher-Instance` header, logs (`instance`), `/health`, `status`, and the lease holder's `application_name`. Empty: the host name. At most 40 bytes."),
        ConfigField("service", "lease_fence_seconds", .double(\.service.leaseFenceSeconds),
                    "How long a worker waits after taking over a table's lease (from another instance, or after losing it) before its first request (see [Running several hosts](operations.md#running-several-hosts)). Lower than the ingestor timeout gives up per-key order across a takeover. Negative (the default): automatic, `ingestor.timeout_seconds` + 2."),
        ConfigField("service", "lease_retry_seconds", .double(\.service.leaseRetrySeconds),
                    "How often a standby tries to take a lease (one `pg_try_advisory_lock`)."),
        ConfigField("service", "lease_expiry_seconds", .double(\.service.leaseExpirySeconds),
                    "A standby ends the database session of a lease holder that shows no sign of life (no renewal, no statement) for this long, and takes over after the fence: a paused host keeps its sessions and lock alive. At least 6 (the holder renews every 2 s). See [Running several hosts](operations.md#running-several-hosts)."),
        ConfigField("service", "max_documents_per_request", .int(\.service.maxDocumentsPerRequest),
                    "Batch mode (a watched table's `batch_publish_endpoint`): the most documents in one request, 1 to 10000 (see [Batched delivery](delivery.md#batched-delivery))."),
        ConfigField("service", "max_request_bytes", .int(\.service.maxRequestBytes),
                    "Batch mode: the most bytes of body in one request, at least 1024; a document larger alone is sent alone."),

        ConfigField("logging", "level", .string(\.logging.level),
                    "`trace`, `debug`, `info`, `notice`, `warning`, `error`, `critical`"),
        ConfigField("logging", "format", .logFormat(\.logging.format),
                    "`auto`, `json`, `text`, `journal` (see [Logs](operations.md#logs))."),
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

    /// The original service's other connection-pool keys: accepted with a warning so its config
    /// files keep loading, and ignored, because each worker holds its own sessions, never a pool
    /// (`max_connections` became the instance's session budget, SessionBudget).
    static let legacyPoolKeys: Set<String> = [
        "min_connections", "acquire_timeout_seconds", "idle_timeout_seconds", "max_lifetime_seconds",
    ]

    static func legacyPoolKeyWarning(_ name: String, file: String?) -> String {
        let source = file.map { "\($0): " } ?? ""
        return "\(source)ignoring \(name): connection-pool settings no longer apply, each table worker holds its own sessions (database.max_connections caps them)"
    }
}
