import Foundation
import XCTest

@testable import Shared

final class ConfigLoaderTests: XCTestCase {
    private var directory: URL!

    override func setUpWithError() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("config-tests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try FileManager.default.removeItem(at: directory)
    }

    // MARK: Fixtures

    /// The example from DESIGN.md section 3, verbatim apart from a complete query.
    static let designExample = #"""
        [database]
        host = "localhost"
        port = 5432
        username = "postgres"
        password = ""
        database_name = "helium"
        sslmode = "prefer"
        connect_timeout_seconds = 10
        statement_timeout_seconds = 30

        [ingestor]
        base_url = "http://localhost:8080"
        timeout_seconds = 30
        max_retries = 3
        retry_delay_seconds = 5            # first backoff; doubles with jitter, capped below
        max_retry_delay_seconds = 60
        auth_token = ""                    # sent as "Authorization: Bearer ..." when set
        circuit_breaker_failure_threshold = 5
        circuit_breaker_reset_seconds = 60

        [service]
        polling_interval_seconds = 10      # upper bound between polls when idle (the seed's setting)
        batch_size = 100
        max_concurrent_publishes = 5       # per worker
        health_check_port = 3000
        health_check_address = "0.0.0.0"
        dead_letter_after_attempts = 10
        shutdown_timeout_seconds = 10

        [[service.watched_tables]]
        name = "hotspots"
        schema = "public"
        primary_key = "id"
        change_column = "updated_at"       # or change_columns = ["updated_at", "status"]
        operations = ["insert", "update", "delete"]
        atomic_data_query = "SELECT h.id, h.name FROM hotspots h WHERE h.id = $PRIMARY_KEY"
        publish_endpoint = "/api/v1/hotspots/atomic-data"

        [logging]
        level = "info"                     # trace, debug, info, notice, warning, error, critical
        format = "auto"                    # auto (journal under systemd, else json), json, text, journal
        """#

    static let hotspots = WatchedTable(
        name: "hotspots", changeColumns: ["updated_at"],
        atomicDataQuery: "SELECT h.id, h.name FROM hotspots h WHERE h.id = $PRIMARY_KEY",
        publishEndpoint: "/api/v1/hotspots/atomic-data")

    static let secret = "s3cr3t-Pa55word"

    /// A watched table with the given extra lines, for tests about one key.
    static func watchedTable(name: String = "hotspots", _ lines: String = #"change_column = "updated_at""#) -> String {
        """
        [[service.watched_tables]]
        name = "\(name)"
        \(lines)
        atomic_data_query = "SELECT * FROM \(name) WHERE id = $PRIMARY_KEY"
        publish_endpoint = "/api/v1/\(name)"

        """
    }

    @discardableResult
    private func write(_ text: String, to relativePath: String) throws -> String {
        let url = directory.appendingPathComponent(relativePath)
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try text.write(to: url, atomically: true, encoding: .utf8)
        return url.path
    }

    private func parse(_ toml: String, file: String = "test.toml") throws -> (PublisherConfig, [String]) {
        var config = PublisherConfig()
        var warnings: [String] = []
        try ConfigLoader.apply(toml: toml, file: file, to: &config, warnings: &warnings)
        return (config, warnings)
    }

    private func validConfig() throws -> PublisherConfig {
        try parse(Self.designExample).0
    }

    private func load(_ environment: [String: String] = [:], explicitPath: String? = nil) throws -> LoadedConfig {
        try ConfigLoader.load(explicitPath: explicitPath, directory: directory.path, environment: environment)
    }

    private func configError(_ body: () throws -> Void, file: StaticString = #filePath, line: UInt = #line) -> ConfigError {
        do {
            try body()
        } catch let error as ConfigError {
            return error
        } catch {
            XCTFail("expected a ConfigError, got \(error)", file: file, line: line)
            return ConfigError(problem: "")
        }
        XCTFail("expected a ConfigError, got success", file: file, line: line)
        return ConfigError(problem: "")
    }

    private func parseError(_ toml: String, file: StaticString = #filePath, line: UInt = #line) -> ConfigError {
        configError({ _ = try parse(toml) }, file: file, line: line)
    }

    private func validationError(_ change: (inout PublisherConfig) -> Void, file: StaticString = #filePath, line: UInt = #line) throws -> ConfigError {
        var config = try validConfig()
        change(&config)
        return configError({ try ConfigLoader.validate(config) }, file: file, line: line)
    }

    // MARK: Defaults and files

    func testDefaults_matchTheDesignExample() throws {
        var expected = PublisherConfig()
        expected.service.watchedTables = [Self.hotspots]
        XCTAssertEqual(try validConfig(), expected)
    }

    func testLoad_withNoFilesAndNoEnvironment_givesDefaults() throws {
        let loaded = try load()
        XCTAssertEqual(loaded.config, PublisherConfig())
        XCTAssertEqual(loaded.files, [])
        XCTAssertEqual(loaded.warnings, [])
    }

    func testApply_designExample_parsesToExpectedValues() throws {
        let toml = Self.designExample
            .replacingOccurrences(of: "port = 5432", with: "port = 6543")
            .replacingOccurrences(of: "retry_delay_seconds = 5 ", with: "retry_delay_seconds = 2.5 ")
            .replacingOccurrences(of: #"change_column = "updated_at""#, with: #"change_columns = ["updated_at", "status"]"#)
            .replacingOccurrences(of: #"operations = ["insert", "update", "delete"]"#, with: #"operations = ["insert", "delete"]"#)
            .replacingOccurrences(of: #"format = "auto""#, with: #"format = "json""#)
        let (config, warnings) = try parse(toml)

        XCTAssertEqual(warnings, [])
        XCTAssertEqual(config.database.host, "localhost")
        XCTAssertEqual(config.database.port, 6543)
        XCTAssertEqual(config.database.databaseName, "helium")
        XCTAssertEqual(config.database.sslmode, "prefer")
        XCTAssertEqual(config.ingestor.baseURL, "http://localhost:8080")
        XCTAssertEqual(config.ingestor.retryDelaySeconds, 2.5)
        XCTAssertEqual(config.ingestor.maxRetryDelaySeconds, 60)
        XCTAssertEqual(config.ingestor.circuitBreakerFailureThreshold, 5)
        XCTAssertEqual(config.service.pollingIntervalSeconds, 10)
        XCTAssertEqual(config.service.healthCheckPort, 3000)
        XCTAssertEqual(config.service.deadLetterAfterAttempts, 10)
        XCTAssertEqual(config.logging.level, "info")
        XCTAssertEqual(config.logging.format, .json)
        XCTAssertEqual(config.service.watchedTables.count, 1)
        let table = try XCTUnwrap(config.table(named: "hotspots"))
        XCTAssertEqual(table.qualifiedName, "public.hotspots")
        XCTAssertEqual(table.primaryKey, "id")
        XCTAssertEqual(table.changeColumns, ["updated_at", "status"])
        XCTAssertEqual(table.operations, [.insert, .delete])
        XCTAssertEqual(table.publishEndpoint, "/api/v1/hotspots/atomic-data")
        XCTAssertNoThrow(try ConfigLoader.validate(config))
    }

    func testApply_seedReadmeTable_usesDefaultSchemaPrimaryKeyAndOperations() throws {
        let (config, _) = try parse(Self.watchedTable())
        let table = try XCTUnwrap(config.service.watchedTables.first)
        XCTAssertEqual(table.schema, "public")
        XCTAssertEqual(table.primaryKey, "id")
        XCTAssertEqual(table.operations, [.insert, .update, .delete])
    }

    func testApply_partitions_defaultsToOne_parsesAnInteger_andIsBounded() throws {
        XCTAssertEqual(try parse(Self.watchedTable()).0.service.watchedTables.first?.partitions, 1)
        let (config, _) = try parse(Self.watchedTable("change_column = \"updated_at\"\npartitions = 4"))
        XCTAssertEqual(config.service.watchedTables.first?.partitions, 4)
        XCTAssertNoThrow(try ConfigLoader.validate(config))
        let typed = parseError(Self.watchedTable("change_column = \"updated_at\"\npartitions = \"4\""))
        XCTAssertEqual(typed.key, "service.watched_tables[0].partitions")
        for bad in [0, -1, WatchedTable.maximumPartitions + 1] {
            let error = try validationError { $0.service.watchedTables[0].partitions = bad }
            XCTAssertEqual(error.key, "service.watched_tables[0].partitions", "\(bad)")
            XCTAssertTrue(error.problem.contains("between 1 and \(WatchedTable.maximumPartitions)") && error.problem.contains("hotspots"), error.description)
        }
        // The worker's configuration line carries it, and an older line without it means 1.
        var table = Self.hotspots
        table.partitions = 3
        let decoded = try JSONDecoder().decode(WatchedTable.self, from: JSONEncoder().encode(table))
        XCTAssertEqual(decoded.partitions, 3)
        let old = #"{"name":"t","changeColumns":["v"],"atomicDataQuery":"SELECT $PRIMARY_KEY","publishEndpoint":"/t"}"#
        XCTAssertEqual(try JSONDecoder().decode(WatchedTable.self, from: Data(old.utf8)).partitions, 1)
    }

    func testApply_batchPublishEndpoint_isOptional_aPath_andCarriedByTheWorkerLine() throws {
        XCTAssertEqual(try parse(Self.watchedTable()).0.service.watchedTables.first?.batchPublishEndpoint, "")
        let (config, _) = try parse(Self.watchedTable("change_column = \"updated_at\"\nbatch_publish_endpoint = \"/b\""))
        XCTAssertEqual(config.service.watchedTables.first?.batchPublishEndpoint, "/b")
        let error = try validationError { $0.service.watchedTables[0].batchPublishEndpoint = "b" }
        XCTAssertEqual(error.key, "service.watched_tables[0].batch_publish_endpoint")
        var table = Self.hotspots
        table.batchPublishEndpoint = "/batch"
        XCTAssertEqual(try JSONDecoder().decode(WatchedTable.self, from: JSONEncoder().encode(table)).batchPublishEndpoint, "/batch")
        let old = #"{"name":"t","changeColumns":["v"],"atomicDataQuery":"SELECT $PRIMARY_KEY","publishEndpoint":"/t"}"#
        XCTAssertEqual(try JSONDecoder().decode(WatchedTable.self, from: Data(old.utf8)).batchPublishEndpoint, "")
    }

    func testRequestLimits_defaultAndBounds_andAnOlderWorkerLineMeansTheDefaults() throws {
        let config = try validConfig()
        XCTAssertEqual(config.service.maxDocumentsPerRequest, 100)
        XCTAssertEqual(config.service.maxRequestBytes, 1_048_576)
        for bad in [0, 10_001] {
            XCTAssertEqual(try validationError { $0.service.maxDocumentsPerRequest = bad }.key, "service.max_documents_per_request")
        }
        XCTAssertEqual(try validationError { $0.service.maxRequestBytes = 1023 }.key, "service.max_request_bytes")
        var service = config.service
        service.maxDocumentsPerRequest = 7
        var line = try XCTUnwrap(JSONSerialization.jsonObject(with: JSONEncoder().encode(service)) as? [String: Any])
        XCTAssertEqual(try JSONDecoder().decode(ServiceConfig.self, from: JSONSerialization.data(withJSONObject: line)).maxDocumentsPerRequest, 7)
        line["maxDocumentsPerRequest"] = nil
        line["maxRequestBytes"] = nil
        let older = try JSONDecoder().decode(ServiceConfig.self, from: JSONSerialization.data(withJSONObject: line))
        XCTAssertEqual(older.maxDocumentsPerRequest, 100)
        XCTAssertEqual(older.maxRequestBytes, 1_048_576)
    }

    func testTablePartition_workerNames() {
        XCTAssertEqual(TablePartition.whole.workerName(table: "items"), "items")
        XCTAssertEqual(TablePartition(index: 2, count: 4).workerName(table: "items"), "items#2")
        XCTAssertEqual(TablePartition.parse(workerName: "items#2").table, "items")
        XCTAssertEqual(TablePartition.parse(workerName: "items#2").index, 2)
        XCTAssertNil(TablePartition.parse(workerName: "items").index)
    }

    func testLoad_localToml_overridesDefaultToml() throws {
        try write(Self.designExample, to: "config/default.toml")
        try write("""
            [database]
            host = "db.internal"
            [service]
            batch_size = 7
            """, to: "config/local.toml")
        let loaded = try load()
        XCTAssertEqual(loaded.files, ["\(directory.path)/config/default.toml", "\(directory.path)/config/local.toml"])
        XCTAssertEqual(loaded.config.database.host, "db.internal")
        XCTAssertEqual(loaded.config.service.batchSize, 7)
        XCTAssertEqual(loaded.config.database.port, 5432, "keys local.toml does not set keep default.toml's value")
        XCTAssertEqual(loaded.config.service.watchedTables, [Self.hotspots])
    }

    func testLoad_localTomlWatchedTables_replaceTheDefaultList() throws {
        try write(Self.designExample, to: "config/default.toml")
        try write(Self.watchedTable(name: "rewards"), to: "config/local.toml")
        let loaded = try load()
        XCTAssertEqual(loaded.config.service.watchedTables.map(\.name), ["rewards"])
    }

    func testLoad_withoutDefaultToml_readsLocalTomlAlone() throws {
        try write("[service]\nbatch_size = 3\n", to: "config/local.toml")
        let loaded = try load()
        XCTAssertEqual(loaded.files, ["\(directory.path)/config/local.toml"])
        XCTAssertEqual(loaded.config.service.batchSize, 3)
    }

    func testLoad_explicitPath_readsOnlyThatFile() throws {
        try write("[service]\nbatch_size = 3\n", to: "config/default.toml")
        let path = try write("[service]\nbatch_size = 42\n", to: "etc/config.toml")
        let loaded = try load(explicitPath: path)
        XCTAssertEqual(loaded.files, [path])
        XCTAssertEqual(loaded.config.service.batchSize, 42)
    }

    func testLoad_missingExplicitFile_isAnErrorNamingTheFile() {
        let path = directory.appendingPathComponent("nope.toml").path
        let error = configError { _ = try load(explicitPath: path) }
        XCTAssertEqual(error.file, path)
        XCTAssertTrue(error.description.contains("does not exist"), error.description)
    }

    func testLoad_unreadableDefaultToml_isAnError() throws {
        try FileManager.default.createDirectory(at: directory.appendingPathComponent("config/default.toml"), withIntermediateDirectories: true)
        let error = configError { _ = try load() }
        XCTAssertEqual(error.file, "\(directory.path)/config/default.toml")
        XCTAssertTrue(error.problem.contains("Is a directory"), error.problem)
    }

    // MARK: TOML errors

    func testApply_syntaxError_namesFileAndLine() {
        let error = configError {
            var config = PublisherConfig()
            var warnings: [String] = []
            try ConfigLoader.apply(toml: "[database]\nhost = \"x\"\nport = = 5\n", file: "config/local.toml", to: &config, warnings: &warnings)
        }
        XCTAssertEqual(error.file, "config/local.toml")
        XCTAssertTrue(error.problem.hasPrefix("invalid TOML at line 3, column"), error.problem)
    }

    func testApply_unknownKey_isAnErrorNamingTheKey() {
        let error = parseError("[database]\nhostname = \"x\"\n")
        XCTAssertEqual(error.file, "test.toml")
        XCTAssertEqual(error.key, "database.hostname")
        XCTAssertTrue(error.description.contains("'database.hostname'"), error.description)
        XCTAssertTrue(error.problem.hasPrefix("unknown key"), error.problem)
    }

    func testApply_unknownSection_isAnErrorNamingIt() {
        let error = parseError("[metrics]\nport = 9090\n")
        XCTAssertEqual(error.key, "metrics")
        XCTAssertTrue(error.problem.hasPrefix("unknown key"), error.problem)
    }

    func testApply_unknownWatchedTableKey_isAnErrorNamingTableAndKey() {
        let error = parseError(Self.watchedTable(#"change_column = "updated_at"\#nchange_colum = "x""#))
        XCTAssertEqual(error.key, "service.watched_tables[0].change_colum")
        XCTAssertTrue(error.problem.contains("'hotspots'"), error.problem)
    }

    func testApply_legacyPoolKeys_areAcceptedWithAWarningEach_butMaxConnectionsIsTheSessionBudget() throws {
        let (config, warnings) = try parse("""
            [database]
            max_connections = 10
            min_connections = 2
            acquire_timeout_seconds = 30
            idle_timeout_seconds = 600
            max_lifetime_seconds = 1800
            """)
        var expected = PublisherConfig()
        expected.database.maxConnections = 10
        XCTAssertEqual(config, expected)
        XCTAssertEqual(warnings.count, 4)
        XCTAssertTrue(warnings.contains { $0.contains("database.min_connections") && $0.contains("test.toml") }, "\(warnings)")
        XCTAssertFalse(warnings.contains { $0.contains("ignoring database.max_connections") }, "\(warnings)")
    }

    func testValidate_maxConnectionsBelowTheWorkers_isAnErrorNamingBothNumbers() throws {
        let error = try validationError { config in
            config.service.watchedTables[0].partitions = 4
            config.database.maxConnections = 3
        }
        XCTAssertEqual(error.key, "database.max_connections")
        XCTAssertTrue(error.problem.contains("is 3, below the 4 workers"), error.problem)
        XCTAssertTrue(error.problem.contains("partitions = N counts N"), error.problem)
        XCTAssertTrue(error.problem.contains("at least 4"), error.problem)
    }

    func testValidate_maxConnectionsEqualToTheWorkers_orAutomatic_isValid() throws {
        var config = try validConfig()
        config.database.maxConnections = SessionBudget(config).workers
        XCTAssertNoThrow(try ConfigLoader.validate(config))
        config.database.maxConnections = 0
        XCTAssertNoThrow(try ConfigLoader.validate(config))
        config.database.maxConnections = -1
        XCTAssertEqual(configError({ try ConfigLoader.validate(config) }).key, "database.max_connections")
    }

    func testApply_wrongType_namesKeyExpectedAndFoundType() {
        let error = parseError("[service]\nbatch_size = \"100\"\n")
        XCTAssertEqual(error.key, "service.batch_size")
        XCTAssertEqual(error.problem, "expected an integer, found a string")
    }

    func testApply_wrongTypeInSecondWatchedTable_namesItsIndex() {
        let error = parseError(Self.watchedTable() + "[[service.watched_tables]]\nname = 5\n")
        XCTAssertEqual(error.key, "service.watched_tables[1].name")
        XCTAssertEqual(error.problem, "expected a string, found an integer")
    }

    func testApply_intField_rejectsAFloat() {
        // database.port also takes a string list: its own test covers a float there.
        XCTAssertEqual(parseError("[service]\nbatch_size = 100.0\n").problem, "expected an integer, found a floating-point number")
    }

    func testApply_secondsField_acceptsAnIntegerOrAFloat() throws {
        XCTAssertEqual(try parse("[service]\npolling_interval_seconds = 2\n").0.service.pollingIntervalSeconds, 2)
        XCTAssertEqual(try parse("[service]\npolling_interval_seconds = 0.25\n").0.service.pollingIntervalSeconds, 0.25)
        XCTAssertEqual(parseError("[service]\npolling_interval_seconds = \"2\"\n").problem, "expected a number, found a string")
    }

    func testApply_unknownLogFormat_isAnError() {
        let error = parseError("[logging]\nformat = \"xml\"\n")
        XCTAssertEqual(error.key, "logging.format")
        XCTAssertTrue(error.problem.contains("'xml'"), error.problem)
    }

    func testApply_sectionThatIsNotATable_isATypeError() {
        XCTAssertEqual(parseError("database = 5\n").problem, "expected a table ([database]), found an integer")
    }

    func testApply_bothChangeColumnAndChangeColumns_isAnError() {
        let error = parseError(Self.watchedTable(#"change_column = "a"\#nchange_columns = ["b"]"#))
        XCTAssertEqual(error.key, "service.watched_tables[0].change_columns")
        XCTAssertTrue(error.problem.contains("not both"), error.problem)
    }

    func testApply_neitherChangeColumnNorChangeColumns_isAnError() {
        let error = parseError(Self.watchedTable(""))
        XCTAssertEqual(error.key, "service.watched_tables[0].change_column")
        XCTAssertTrue(error.problem.hasPrefix("missing required key"), error.problem)
    }

    func testApply_missingQuery_isAnErrorNamingTheTable() {
        let error = parseError("[[service.watched_tables]]\nname = \"rewards\"\nchange_column = \"x\"\npublish_endpoint = \"/r\"\n")
        XCTAssertEqual(error.key, "service.watched_tables[0].atomic_data_query")
        XCTAssertEqual(error.problem, "missing required key (watched table 'rewards')")
    }

    func testApply_unknownOperation_isAnError() {
        let error = parseError(Self.watchedTable(#"change_column = "a"\#noperations = ["insert", "upsert"]"#))
        XCTAssertEqual(error.key, "service.watched_tables[0].operations[1]")
        XCTAssertTrue(error.problem.contains("'upsert'"), error.problem)
    }

    func testApply_backfillInOperations_isAnError_itIsNotATriggerEvent() {
        let error = parseError(Self.watchedTable(#"change_column = "a"\#noperations = ["update", "backfill"]"#))
        XCTAssertEqual(error.key, "service.watched_tables[0].operations[1]")
        XCTAssertTrue(error.problem.contains("'backfill'"), error.problem)
    }

    func testValidate_backfillInOperations_fails() throws {
        XCTAssertEqual(try validationError { $0.service.watchedTables[0].operations = [.update, .backfill] }.key,
                       "service.watched_tables[0].operations[1]")
    }

    func testApply_failingText_leavesTheConfigAndWarningsUnchanged() {
        var config = PublisherConfig()
        var warnings: [String] = []
        XCTAssertThrowsError(try ConfigLoader.apply(toml: "[database]\nmax_connections = 3\nhost = \"a\"\nport = \"x\"\n", file: "f",
                                                    to: &config, warnings: &warnings))
        XCTAssertEqual(config, PublisherConfig())
        XCTAssertEqual(warnings, [])
    }

    // MARK: Environment

    func testEnvironment_seedVariables_overrideTheFile() throws {
        try write(Self.designExample, to: "config/default.toml")
        let loaded = try load([
            "ATOMIC_DATA_PUBLISHER_DATABASE_HOST": "postgres.example.com",
            "ATOMIC_DATA_PUBLISHER_DATABASE_PORT": "6432",
            "ATOMIC_DATA_PUBLISHER_DATABASE_USERNAME": "myuser",
            "ATOMIC_DATA_PUBLISHER_DATABASE_PASSWORD": "mypassword",
            "ATOMIC_DATA_PUBLISHER_DATABASE_DATABASE_NAME": "helium_prod",
            "ATOMIC_DATA_PUBLISHER_INGESTOR_BASE_URL": "https://ingestor.example.com",
        ])
        XCTAssertEqual(loaded.config.database.host, "postgres.example.com")
        XCTAssertEqual(loaded.config.database.port, 6432)
        XCTAssertEqual(loaded.config.database.username, "myuser")
        XCTAssertEqual(loaded.config.database.password, "mypassword")
        XCTAssertEqual(loaded.config.database.databaseName, "helium_prod")
        XCTAssertEqual(loaded.config.ingestor.baseURL, "https://ingestor.example.com")
        XCTAssertEqual(loaded.warnings, [])
        XCTAssertNoThrow(try loaded.validate())
    }

    func testEnvironment_everyScalarKeyHasAVariable() throws {
        var config = PublisherConfig()
        var warnings: [String] = []
        try ConfigLoader.applyEnvironment([
            "ATOMIC_DATA_PUBLISHER_SERVICE_BATCH_SIZE": "250",
            "ATOMIC_DATA_PUBLISHER_SERVICE_POLLING_INTERVAL_SECONDS": "0.5",
            "ATOMIC_DATA_PUBLISHER_INGESTOR_AUTH_TOKEN": "tok",
            "ATOMIC_DATA_PUBLISHER_INGESTOR_CIRCUIT_BREAKER_FAILURE_THRESHOLD": " 9 ",
            "ATOMIC_DATA_PUBLISHER_LOGGING_LEVEL": "debug",
            "ATOMIC_DATA_PUBLISHER_LOGGING_FORMAT": "journal",
        ], to: &config, warnings: &warnings)
        XCTAssertEqual(config.service.batchSize, 250)
        XCTAssertEqual(config.service.pollingIntervalSeconds, 0.5)
        XCTAssertEqual(config.ingestor.authToken, "tok")
        XCTAssertEqual(config.ingestor.circuitBreakerFailureThreshold, 9)
        XCTAssertEqual(config.logging.level, "debug")
        XCTAssertEqual(config.logging.format, .journal)
        XCTAssertEqual(warnings, [])
        XCTAssertEqual(Set(ConfigField.all.map(\.environmentName)).count, ConfigField.all.count)
        XCTAssertTrue(ConfigField.all.contains { $0.environmentName == "ATOMIC_DATA_PUBLISHER_DATABASE_DATABASE_NAME" })
    }

    func testEnvironment_badInteger_isAnErrorNamingTheVariable() {
        let error = configError { _ = try load(["ATOMIC_DATA_PUBLISHER_DATABASE_PORT": "abc"]) }
        XCTAssertEqual(error.key, "ATOMIC_DATA_PUBLISHER_DATABASE_PORT")
        XCTAssertEqual(error.problem, "expected an integer or comma-separated integers, found 'abc'")
    }

    func testPort_isAnIntegerOrAStringListInTomlAndEnvironment() throws {
        XCTAssertEqual(try parse("[database]\nport = 6432\n").0.database.ports, [6432])
        let listed = try parse("[database]\nhost = \"db1,db2\"\nport = \"5432, 5433\"\n").0.database
        XCTAssertEqual(listed.ports, [5432, 5433])
        XCTAssertEqual(listed.hosts, ["db1", "db2"])
        XCTAssertEqual(parseError("[database]\nport = \"5432,x\"\n").key, "database.port")
        XCTAssertEqual(parseError("[database]\nport = 5432.5\n").problem, "expected an integer or a string of comma-separated integers, found a floating-point number")
        XCTAssertEqual(try load(["ATOMIC_DATA_PUBLISHER_DATABASE_PORT": "5432,5433"]).config.database.ports, [5432, 5433])
        XCTAssertEqual(try load(["ATOMIC_DATA_PUBLISHER_DATABASE_PORT": " 6432 "]).config.database.port, 6432)
    }

    func testValidate_hostAndPortLists_andTargetSessionAttrs() throws {
        var config = try validConfig()
        config.database.host = "db1,db2,db3"
        config.database.ports = [5432]
        XCTAssertNoThrow(try ConfigLoader.validate(config), "one port for every host")
        config.database.ports = [5432, 5433, 5434]
        XCTAssertNoThrow(try ConfigLoader.validate(config), "one port per host")
        XCTAssertEqual(config.database.resolvedTargetSessionAttrs, "read-write", "several hosts: the primary")
        config.database.host = "db1"
        XCTAssertNil(config.database.resolvedTargetSessionAttrs, "one host: libpq's default")

        let twoPortsThreeHosts = try validationError { $0.database.host = "db1,db2,db3"; $0.database.ports = [5432, 5433] }
        XCTAssertEqual(twoPortsThreeHosts.key, "database.port")
        XCTAssertEqual(twoPortsThreeHosts.problem, "lists 2 ports for 3 hosts in database.host; give one port for all hosts or one per host")
        XCTAssertEqual(try validationError { $0.database.host = "db1,db2"; $0.database.ports = [5432, 70000] }.key, "database.port")
        XCTAssertEqual(try validationError { $0.database.host = "db1,,db2" }.key, "database.host")
        let attrs = try validationError { $0.database.targetSessionAttrs = "master" }
        XCTAssertEqual(attrs.key, "database.target_session_attrs")
        for value in ConfigLoader.targetSessionAttrs {
            var ok = try validConfig()
            ok.database.targetSessionAttrs = value
            XCTAssertNoThrow(try ConfigLoader.validate(ok), value)
        }
    }

    func testWorkerConfigLine_keepsOnePortAnInteger_readsAnOlderLine_andCarriesAList() throws {
        var config = try validConfig()
        let single = String(decoding: try WorkerConfig(table: "t", config: config).encodedLine(), as: UTF8.self)
        XCTAssertTrue(single.contains(#""port":5432"#), single)
        // A line of the previous release: no target_session_attrs.
        let older = single.replacingOccurrences(of: #","targetSessionAttrs":"""#, with: "")
        XCTAssertNotEqual(older, single)
        XCTAssertEqual(try WorkerConfig.decode(Array(older.utf8)).config, config)

        config.database.host = "db1,db2"
        config.database.ports = [5432, 5433]
        config.database.targetSessionAttrs = "primary"
        let line = try WorkerConfig(table: "t", config: config).encodedLine()
        XCTAssertTrue(String(decoding: line, as: UTF8.self).contains(#""port":"5432,5433""#))
        XCTAssertEqual(try WorkerConfig.decode(line.dropLast()).config, config)
    }

    func testEnvironment_badNumberAndBadFormat_areErrors() {
        XCTAssertEqual(configError { _ = try load(["ATOMIC_DATA_PUBLISHER_INGESTOR_RETRY_DELAY_SECONDS": "soon"]) }.key,
                       "ATOMIC_DATA_PUBLISHER_INGESTOR_RETRY_DELAY_SECONDS")
        XCTAssertEqual(configError { _ = try load(["ATOMIC_DATA_PUBLISHER_LOGGING_FORMAT": "xml"]) }.key,
                       "ATOMIC_DATA_PUBLISHER_LOGGING_FORMAT")
    }

    func testEnvironment_passwordFileAndAuthTokenFile_supplySecretsWithoutTrailingNewline() throws {
        let passwordPath = try write("from-file\n", to: "secrets/password")
        let tokenPath = try write("token-from-file\r\n", to: "secrets/token")
        let loaded = try load([
            "ATOMIC_DATA_PUBLISHER_DATABASE_PASSWORD_FILE": passwordPath,
            "ATOMIC_DATA_PUBLISHER_INGESTOR_AUTH_TOKEN_FILE": tokenPath,
        ])
        XCTAssertEqual(loaded.config.database.password, "from-file")
        XCTAssertEqual(loaded.config.ingestor.authToken, "token-from-file")
        XCTAssertEqual(loaded.warnings, [])
    }

    func testEnvironment_missingSecretFile_isAnErrorNamingVariableAndPath() {
        let path = directory.appendingPathComponent("missing-secret").path
        let error = configError { _ = try load(["ATOMIC_DATA_PUBLISHER_DATABASE_PASSWORD_FILE": path]) }
        XCTAssertEqual(error.key, "ATOMIC_DATA_PUBLISHER_DATABASE_PASSWORD_FILE")
        XCTAssertEqual(error.file, path)
        XCTAssertTrue(error.problem.contains("No such file or directory"), error.problem)
    }

    func testEnvironment_credentialsDirectory_suppliesBothSecrets() throws {
        try write("cred-password\n", to: "creds/database_password")
        try write("cred-token", to: "creds/ingestor_auth_token")
        try write("[database]\npassword = \"toml-password\"\n", to: "config/default.toml")
        let loaded = try load(["CREDENTIALS_DIRECTORY": directory.appendingPathComponent("creds").path])
        XCTAssertEqual(loaded.config.database.password, "cred-password")
        XCTAssertEqual(loaded.config.ingestor.authToken, "cred-token")
    }

    func testEnvironment_credentialsDirectoryWithoutCredentials_keepsTomlSecrets() throws {
        try write("[database]\npassword = \"toml-password\"\n", to: "config/default.toml")
        let loaded = try load(["CREDENTIALS_DIRECTORY": directory.path])
        XCTAssertEqual(loaded.config.database.password, "toml-password")
    }

    func testEnvironment_secretPrecedence_isPlainVariableThenFileThenCredentialThenToml() throws {
        try write("[database]\npassword = \"toml\"\n[ingestor]\nauth_token = \"toml\"\n", to: "config/default.toml")
        try write("credential", to: "creds/database_password")
        try write("credential", to: "creds/ingestor_auth_token")
        let filePath = try write("file", to: "secret")
        let credentials = directory.appendingPathComponent("creds").path

        let credentialOnly = try load(["CREDENTIALS_DIRECTORY": credentials])
        XCTAssertEqual(credentialOnly.config.database.password, "credential")

        let fileOverCredential = try load([
            "CREDENTIALS_DIRECTORY": credentials,
            "ATOMIC_DATA_PUBLISHER_DATABASE_PASSWORD_FILE": filePath,
            "ATOMIC_DATA_PUBLISHER_INGESTOR_AUTH_TOKEN_FILE": filePath,
        ])
        XCTAssertEqual(fileOverCredential.config.database.password, "file")
        XCTAssertEqual(fileOverCredential.config.ingestor.authToken, "file")

        let plainOverFile = try load([
            "CREDENTIALS_DIRECTORY": credentials,
            "ATOMIC_DATA_PUBLISHER_DATABASE_PASSWORD_FILE": filePath,
            "ATOMIC_DATA_PUBLISHER_DATABASE_PASSWORD": "plain",
        ])
        XCTAssertEqual(plainOverFile.config.database.password, "plain")
        XCTAssertEqual(plainOverFile.config.ingestor.authToken, "credential")
        XCTAssertEqual(plainOverFile.warnings.count, 1)
        XCTAssertTrue(plainOverFile.warnings[0].contains("ATOMIC_DATA_PUBLISHER_DATABASE_PASSWORD_FILE"), "\(plainOverFile.warnings)")
    }

    func testEnvironment_unknownPrefixedVariable_isAWarningNotAnError() throws {
        let loaded = try load([
            "ATOMIC_DATA_PUBLISHER_DATABASE_HOSTNAME": "x",
            "ATOMIC_DATA_PUBLISHER_DATABASE_MIN_CONNECTIONS": "10",
            "PATH": "/usr/bin",
        ])
        XCTAssertEqual(loaded.config, PublisherConfig())
        XCTAssertEqual(loaded.warnings.count, 2)
        XCTAssertTrue(loaded.warnings.contains("ignoring unknown environment variable ATOMIC_DATA_PUBLISHER_DATABASE_HOSTNAME"),
                      "\(loaded.warnings)")
        XCTAssertTrue(loaded.warnings.contains { $0.contains("ATOMIC_DATA_PUBLISHER_DATABASE_MIN_CONNECTIONS") && $0.contains("connection") },
                      "\(loaded.warnings)")
    }

    func testEnvironment_maxConnections_setsTheSessionBudget() throws {
        let loaded = try load(["ATOMIC_DATA_PUBLISHER_DATABASE_MAX_CONNECTIONS": "35"])
        XCTAssertEqual(loaded.config.database.maxConnections, 35)
        XCTAssertEqual(loaded.warnings, [])
    }

    // MARK: Validation

    func testValidate_designExample_passes() throws {
        XCTAssertNoThrow(try ConfigLoader.validate(try validConfig()))
    }

    func testValidate_noWatchedTables_fails() throws {
        let error = try validationError { $0.service.watchedTables = [] }
        XCTAssertEqual(error.key, "service.watched_tables")
    }

    func testValidate_queryWithoutPrimaryKeyPlaceholder_fails() throws {
        let error = try validationError { $0.service.watchedTables[0].atomicDataQuery = "SELECT * FROM hotspots WHERE id = $1" }
        XCTAssertEqual(error.key, "service.watched_tables[0].atomic_data_query")
        XCTAssertTrue(error.problem.contains("$PRIMARY_KEY"), error.problem)
        XCTAssertTrue(error.problem.contains("'hotspots'"), error.problem)
    }

    func testValidate_badIdentifiers_failNamingTheKey() throws {
        XCTAssertEqual(try validationError { $0.service.watchedTables[0].name = "1hotspots" }.key, "service.watched_tables[0].name")
        XCTAssertEqual(try validationError { $0.service.watchedTables[0].name = "hot-spots" }.key, "service.watched_tables[0].name")
        XCTAssertEqual(try validationError { $0.service.watchedTables[0].schema = "my schema" }.key, "service.watched_tables[0].schema")
        XCTAssertEqual(try validationError { $0.service.watchedTables[0].primaryKey = String(repeating: "k", count: 64) }.key,
                       "service.watched_tables[0].primary_key")
        XCTAssertEqual(try validationError { $0.service.watchedTables[0].changeColumns = ["ok", "bad;drop"] }.key,
                       "service.watched_tables[0].change_columns[1]")
        XCTAssertEqual(try validationError { $0.service.watchedTables[0].changeColumns = [""] }.key,
                       "service.watched_tables[0].change_column")
        XCTAssertTrue(ConfigLoader.isValidIdentifier("_Hotspots_2"))
        XCTAssertTrue(ConfigLoader.isValidIdentifier(String(repeating: "k", count: 63)))
        XCTAssertFalse(ConfigLoader.isValidIdentifier("hötspots"))
    }

    func testValidate_aTableNameWhoseTrackingObjectsPass63Bytes_isRejected_becauseTruncatedNamesWouldCollide() throws {
        let error = try validationError { $0.service.watchedTables[0].name = String(repeating: "t", count: 46) }
        XCTAssertEqual(error.key, "service.watched_tables[0].name")
        XCTAssertTrue(error.problem.contains("at most 45 bytes"), error.problem)
        var config = try validConfig()
        config.service.watchedTables[0].name = String(repeating: "t", count: 45)
        XCTAssertNoThrow(try ConfigLoader.validate(config))
    }

    func testValidate_credentialsInTheBaseURLTogetherWithAnAuthToken_areRejectedWithoutEchoingThem() throws {
        let error = try validationError {
            $0.ingestor.baseURL = "https://svc:s3cret@ingest.example/api"
            $0.ingestor.authToken = "tok"
        }
        XCTAssertEqual(error.key, "ingestor.base_url")
        XCTAssertFalse(error.description.contains("s3cret"), error.description)
        var config = try validConfig()
        config.ingestor.baseURL = "https://svc:s3cret@ingest.example/api"
        XCTAssertNoThrow(try ConfigLoader.validate(config), "alone, URL credentials are Basic authentication")
    }

    func testValidate_batchSizeAboveTheBound_isRejected() throws {
        let error = try validationError { $0.service.batchSize = 1_000_000_000 }
        XCTAssertEqual(error.key, "service.batch_size")
        XCTAssertTrue(error.problem.contains("at most 10000"), error.problem)
    }

    func testValidate_duplicateTableName_failsEvenInAnotherSchema() throws {
        let error = try validationError { $0.service.watchedTables.append(Self.hotspots) }
        XCTAssertEqual(error.key, "service.watched_tables[1].name")
        XCTAssertTrue(error.problem.contains("service.watched_tables[0]"), error.problem)

        var config = try validConfig()
        var other = Self.hotspots
        other.schema = "archive"
        config.service.watchedTables.append(other)
        // Workers, metrics and logs name a table by its name alone.
        XCTAssertThrowsError(try ConfigLoader.validate(config)) { error in
            XCTAssertTrue("\(error)".contains("unique across schemas"), "\(error)")
        }
    }

    func testValidate_tableShape_fails() throws {
        XCTAssertEqual(try validationError { $0.service.watchedTables[0].changeColumns = [] }.key, "service.watched_tables[0].change_columns")
        XCTAssertEqual(try validationError { $0.service.watchedTables[0].operations = [] }.key, "service.watched_tables[0].operations")
        XCTAssertEqual(try validationError { $0.service.watchedTables[0].operations = [.insert, .update, .insert] }.key,
                       "service.watched_tables[0].operations[2]")
        XCTAssertEqual(try validationError { $0.service.watchedTables[0].publishEndpoint = "api/v1/x" }.key,
                       "service.watched_tables[0].publish_endpoint")
    }

    func testValidate_outOfRangeScalars_failNamingTheKey() throws {
        let cases: [(String, (inout PublisherConfig) -> Void)] = [
            ("database.port", { $0.database.port = 0 }),
            ("database.port", { $0.database.port = 65536 }),
            ("service.health_check_port", { $0.service.healthCheckPort = -1 }),
            ("service.batch_size", { $0.service.batchSize = 0 }),
            ("service.max_concurrent_publishes", { $0.service.maxConcurrentPublishes = 0 }),
            ("database.connect_timeout_seconds", { $0.database.connectTimeoutSeconds = 0 }),
            ("ingestor.timeout_seconds", { $0.ingestor.timeoutSeconds = -5 }),
            ("service.polling_interval_seconds", { $0.service.pollingIntervalSeconds = 0 }),
            ("service.shutdown_timeout_seconds", { $0.service.shutdownTimeoutSeconds = -1 }),
            ("ingestor.max_retry_delay_seconds", { $0.ingestor.maxRetryDelaySeconds = 1 }),
            ("logging.level", { $0.logging.level = "verbose" }),
            ("database.sslmode", { $0.database.sslmode = "required" }),
            ("ingestor.base_url", { $0.ingestor.baseURL = "localhost:8080" }),
            ("ingestor.base_url", { $0.ingestor.baseURL = "https://" }),
        ]
        for (key, change) in cases {
            XCTAssertEqual(try validationError(change).key, key)
        }
        var config = try validConfig()
        config.database.sslmode = "verify-full"
        config.logging.level = "critical"
        config.ingestor.baseURL = "https://ingestor.example.com/base"
        XCTAssertNoThrow(try ConfigLoader.validate(config))
    }

    func testLoadedConfigValidate_namesTheFileOrVariableThatSetTheBadValue() throws {
        try write(Self.designExample, to: "config/default.toml")
        let local = try write("[service]\nbatch_size = 0\n", to: "config/local.toml")
        let fromFile = configError { try load().validate() }
        XCTAssertEqual(fromFile.file, local)
        XCTAssertEqual(fromFile.key, "service.batch_size")

        let fromEnvironment = configError { try load(["ATOMIC_DATA_PUBLISHER_DATABASE_PORT": "70000"]).validate() }
        XCTAssertNil(fromEnvironment.file)
        XCTAssertEqual(fromEnvironment.key, "ATOMIC_DATA_PUBLISHER_DATABASE_PORT")

        try write(Self.designExample.replacingOccurrences(of: "$PRIMARY_KEY", with: "$1"), to: "config/default.toml")
        try write("", to: "config/local.toml")
        let table = configError { try load().validate() }
        XCTAssertEqual(table.file, "\(directory.path)/config/default.toml")
        XCTAssertEqual(table.key, "service.watched_tables[0].atomic_data_query")
    }

    // MARK: Secrets

    func testRedacted_hidesNonEmptySecretsOnly() {
        var config = PublisherConfig()
        XCTAssertEqual(config.redacted(), config)
        config.database.password = Self.secret
        config.ingestor.authToken = Self.secret
        let redacted = config.redacted()
        XCTAssertEqual(redacted.database.password, "<redacted>")
        XCTAssertEqual(redacted.ingestor.authToken, "<redacted>")
        XCTAssertEqual(redacted.database.host, config.database.host)
    }

    func testNoErrorOrWarning_containsASecret() throws {
        let secret = Self.secret
        let missing = directory.appendingPathComponent("missing").path
        try write("x", to: "creds/database_password/inside")  // a directory where the credential file should be
        let failures: [() throws -> Void] = [
            { _ = try self.parse("[database]\npassword = \"\(secret)\"\nport = \"x\"\n") },
            { _ = try self.parse("[database]\npassword = \"\(secret)\"\nbogus = 1\n") },
            { _ = try self.parse("[database]\npassword = \"\(secret)\n") },
            { _ = try self.parse("[database]\npassword = \(secret)\n") },
            { _ = try self.parse("[database]\npassword = 1234\(secret)\n") },
            { _ = try self.parse("[ingestor]\n\"auth_token\" = 0x\(secret)\n") },
            { _ = try self.parse("[database]\npassword = [\"\(secret)\"]\n") },
            { _ = try self.parse("[ingestor]\nauth_token = { value = \"\(secret)\" }\n") },
            { _ = try self.parse("[database]\npasword = \"\(secret)\"\n") },
            { _ = try self.load(["ATOMIC_DATA_PUBLISHER_DATABASE_PASSWORD": secret, "ATOMIC_DATA_PUBLISHER_DATABASE_PORT": "x"]) },
            { _ = try self.load(["ATOMIC_DATA_PUBLISHER_DATABASE_PASSWORD_FILE": missing]) },
            { _ = try self.load(["CREDENTIALS_DIRECTORY": self.directory.appendingPathComponent("creds").path]) },
            {
                var config = try self.validConfig()
                config.database.password = secret
                config.ingestor.authToken = secret
                config.ingestor.baseURL = "ftp://user:\(secret)@host"
                try ConfigLoader.validate(config)
            },
        ]
        for (index, failure) in failures.enumerated() {
            let error = configError(failure)
            XCTAssertFalse(error.problem.isEmpty, "case \(index) did not fail")
            XCTAssertFalse(error.description.contains(secret), "case \(index): \(error.description)")
        }

        let loaded = try load([
            "ATOMIC_DATA_PUBLISHER_DATABASE_PASSWORD": secret,
            "ATOMIC_DATA_PUBLISHER_DATABASE_PASSWORD_FILE": missing,
            "ATOMIC_DATA_PUBLISHER_DATABASE_PASWORD": secret,
        ])
        XCTAssertEqual(loaded.warnings.count, 2)
        XCTAssertFalse(loaded.warnings.contains { $0.contains(secret) }, "\(loaded.warnings)")
    }
}
