import Foundation
import Shared
import XCTest

/// The operator's command line against a real database: configuration errors exit 78 with one
/// clear sentence before anything in the database is touched, the seed's environment variables
/// override the file, and the least-privilege recipe of docs/database.md works as written.
final class CommandLineTests: IntegrationTestCase {
    private let devices = TestTables.devices

    private struct Outcome {
        var status: Int32
        var output: String
    }

    /// Run `atomic-data-publisher ARGS` to completion (posix_spawn + waitpid; output in a file).
    private func publisher(_ arguments: [String], environment: [String: String] = [:], timeout: TimeInterval = 30) throws -> Outcome {
        let process = try ManagedProcess(name: "cli-\(UUID().uuidString.prefix(6))", executable: try TestEnvironment.binary(named: "atomic-data-publisher"),
                                         arguments: arguments, environment: environment, workingDirectory: workDirectory, logDirectory: workDirectory)
        guard let ended = process.waitForExit(timeout: timeout) else {
            process.stop()
            throw UnexpectedResult(description: "atomic-data-publisher \(arguments) did not finish in \(timeout) s: \(process.stderrTail())")
        }
        let status: Int32
        switch ended {
        case .exited(let code): status = code
        case .signaled(let signal): status = 128 + signal
        }
        return Outcome(status: status, output: process.stdoutLines().joined(separator: "\n") + "\n" + process.stderrText())
    }

    /// Nothing of ours exists in the database.
    private func assertUntouched(_ database: TestDatabase, file: StaticString = #filePath, line: UInt = #line) throws {
        XCTAssertEqual(try database.value("SELECT count(*) FROM pg_class WHERE relname LIKE '%\\_changes%'"), "0", "no tracking table", file: file, line: line)
        XCTAssertEqual(try database.value("SELECT count(*) FROM pg_trigger WHERE tgname = 'atomic_data_publisher_capture'"), "0", "no trigger", file: file, line: line)
    }

    private func validConfig(_ database: TestDatabase) throws -> (PublisherConfig, String) {
        var config = ConfigFile.forTests(database: database.config, ingestorURL: "http://127.0.0.1:9", tables: [devices])
        config.service.healthCheckAddress = "127.0.0.1"
        config.service.healthCheckPort = try SupervisorProcess.freePort()
        return (config, ConfigFile.render(config))
    }

    func testConfigurationErrors_exit78WithOneClearSentence_andTheDatabaseUntouched() throws {
        let database = try makeDatabase()
        try database.executeScript(try TestTables.devicesSQL())
        let (_, valid) = try validConfig(database)
        let cases: [(name: String, toml: String?, expect: [String])] = [
            ("missing file", nil, ["no-such.toml", "does not exist"]),
            ("syntax error", valid + "\n[service\nbatch_size = 1\n", ["bad.toml"]),
            ("unknown key", valid.replacingOccurrences(of: "[ingestor]", with: "[ingestor]\nbase_uri = \"http://x\""), ["base_uri", "unknown"]),
            ("unknown compression", valid.replacingOccurrences(of: "[ingestor]", with: "[ingestor]\ncompression = \"brotli\""),
             ["ingestor.compression", "'brotli'", "none, gzip"]),
            ("query without $PRIMARY_KEY", valid.replacingOccurrences(of: "WHERE id = $PRIMARY_KEY", with: "WHERE id = 1"), ["atomic_data_query", "$PRIMARY_KEY"]),
            ("non-existent table", valid.replacingOccurrences(of: "name = \"devices\"", with: "name = \"gadgets\"")
                .replacingOccurrences(of: "FROM devices", with: "FROM gadgets"), ["gadgets", "does not exist"]),
            ("query syntax error", valid.replacingOccurrences(of: "SELECT ", with: "SELEC "), ["atomic_data_query", "\"devices\"", "syntax error"]),
            ("missing change column", valid.replacingOccurrences(of: "change_columns = [\"updated_at\"]", with: "change_columns = [\"touched_at\"]"),
             ["\"touched_at\" does not exist", "check change_column of watched table \"devices\""]),
        ]
        for c in cases {
            let path: String
            if let toml = c.toml {
                let url = workDirectory.appendingPathComponent("bad.toml")
                try toml.write(to: url, atomically: true, encoding: .utf8)
                path = url.path
            } else {
                path = workDirectory.appendingPathComponent("no-such.toml").path
            }
            for command in [["run"], ["check-config"]] {
                let outcome = try publisher(["--config", path] + command)
                XCTAssertEqual(outcome.status, 78, "\(c.name), \(command): \(outcome.output)")
                for fragment in c.expect {
                    XCTAssertTrue(outcome.output.contains(fragment), "\(c.name), \(command): the message must mention '\(fragment)': \(outcome.output)")
                }
                XCTAssertFalse(outcome.output.contains("Fatal error") || outcome.output.contains("Stack dump"), "no crash: \(outcome.output)")
            }
            try assertUntouched(database)
        }
    }

    func testTheSeedsEnvironmentVariables_overrideTheFile() throws {
        let database = try makeDatabase()
        try database.executeScript(try TestTables.devicesSQL())
        var (config, _) = try validConfig(database)
        let good = config.database
        // A file that points nowhere useful; the six variables the seed documents fix it.
        config.database.host = "192.0.2.1"
        config.database.port = 1
        config.database.username = "nobody"
        config.database.password = "wrong"
        config.database.databaseName = "nothing"
        config.ingestor.baseURL = "http://192.0.2.1:1"
        let url = workDirectory.appendingPathComponent("env.toml")
        try ConfigFile.render(config).write(to: url, atomically: true, encoding: .utf8)
        let environment = [
            "ATOMIC_DATA_PUBLISHER_DATABASE_HOST": good.host,
            "ATOMIC_DATA_PUBLISHER_DATABASE_PORT": String(good.port),
            "ATOMIC_DATA_PUBLISHER_DATABASE_USERNAME": good.username,
            "ATOMIC_DATA_PUBLISHER_DATABASE_PASSWORD": good.password,
            "ATOMIC_DATA_PUBLISHER_DATABASE_DATABASE_NAME": good.databaseName,
            "ATOMIC_DATA_PUBLISHER_INGESTOR_BASE_URL": "http://127.0.0.1:9",
        ]
        let outcome = try publisher(["--config", url.path, "check-config"], environment: environment)
        XCTAssertEqual(outcome.status, 0, outcome.output)
        XCTAssertTrue(outcome.output.contains("\(good.host):\(good.port)/\(good.databaseName)"), outcome.output)
        XCTAssertTrue(outcome.output.contains("ingestor http://127.0.0.1:9"), outcome.output)
        XCTAssertFalse(outcome.output.contains("wrong"), "no password in the output")
    }

    func testTheLeastPrivilegeRecipe_runsTheServiceUnderExactlyThoseGrants() throws {
        let database = try makeDatabase()
        try database.executeScript(try TestTables.devicesSQL())
        // A dependency too: its triggers come from print-sql like the rest.
        try database.executeScript("CREATE TABLE device_events (id bigserial PRIMARY KEY, device_id bigint, kind text NOT NULL);")
        var (config, _) = try validConfig(database)
        config.service.watchedTables[0].atomicDataQuery =
            "SELECT d.id, d.name, (SELECT count(*) FROM device_events e WHERE e.device_id = d.id) AS events FROM devices d WHERE d.id = $PRIMARY_KEY"
        config.service.watchedTables[0].dependencies = [Dependency(table: "device_events", keyColumns: ["device_id"])]
        let ingestor = try startIngestor()
        let suffix = String(database.name.suffix(8))
        let service = "adp_svc_\(suffix)", app = "adp_app_\(suffix)"
        dropRolesAtTeardown(service, app)
        // docs/database.md, path B: the DBA (here the owner) applies print-sql, then grants exactly this.
        let printed = try publisher(["--config", try writeConfig(config, name: "owner.toml").path, "print-sql"])
        XCTAssertEqual(printed.status, 0, printed.output)
        try database.executeScript(printed.output.components(separatedBy: "\n").filter { !$0.hasPrefix("-- ") }.joined(separator: "\n"))
        try database.executeScript("""
            CREATE ROLE \(service) LOGIN;
            GRANT CONNECT ON DATABASE \(quoteIdentifier(database.name)) TO \(service);
            GRANT USAGE ON SCHEMA public TO \(service);
            GRANT SELECT ON public.devices, public.device_events TO \(service);
            GRANT SELECT, INSERT, UPDATE, DELETE ON public.devices_changes, public.devices_changes_failed TO \(service);
            GRANT USAGE ON SEQUENCE public.devices_changes_id_seq TO \(service);
            GRANT SELECT, INSERT, UPDATE ON public.devices_changes_lease TO \(service);
            CREATE ROLE \(app) LOGIN;
            GRANT CONNECT ON DATABASE \(quoteIdentifier(database.name)) TO \(app);
            GRANT USAGE ON SCHEMA public TO \(app);
            GRANT SELECT, INSERT, UPDATE, DELETE ON public.devices, public.device_events TO \(app);
            GRANT USAGE ON SEQUENCE public.device_events_id_seq TO \(app);
            """)
        var serviceConfig = config
        serviceConfig.database.username = service
        serviceConfig.ingestor.baseURL = ingestor.baseURL
        let serviceURL = try writeConfig(serviceConfig, name: "service.toml")
        let check = try publisher(["--config", serviceURL.path, "check-config"])
        XCTAssertEqual(check.status, 0, check.output)

        let worker = try startWorker(table: "devices", config: serviceURL)
        // The application's own role has no grant on the tracking table: its writes still work.
        var appConfig = database.config
        appConfig.username = app
        let appSession = try PostgresConnection.connect(ConnectionParameters(appConfig, applicationName: "adp-it-app"))
        try appSession.execute("INSERT INTO devices (id, name, firmware, updated_at) VALUES (7, 'door', 'v1', now())")
        try appSession.execute("UPDATE devices SET updated_at = now() + interval '1 second' WHERE id = 7")
        try waitForRequests(ingestor, count: 1)
        try waitUntilTrackingTableIsEmpty(database, devices)
        XCTAssertEqual(try ingestor.requests().last?.body["primary_key"], "7")
        // The application's event for device 7 publishes the device again, through the dependency trigger.
        let before = try ingestor.requests().count
        try appSession.execute("INSERT INTO device_events (device_id, kind) VALUES (7, 'opened')")
        try waitForRequests(ingestor, count: before + 1)
        let caused = try XCTUnwrap(try ingestor.requests().last)
        XCTAssertEqual(caused.body["primary_key"], "7")
        XCTAssertEqual(caused.body["atomic_data"]?[0]?["events"], .number(1), "\(caused)")
        XCTAssertEqual(caused.body["cause"], ["table": "device_events", "schema": "public", "operation": "insert"], "\(caused)")
        XCTAssertTrue(worker.process.isRunning)
        XCTAssertEqual(try database.value("SELECT rolsuper::text FROM pg_roles WHERE rolname = $1", [service]), "false")
    }
}
