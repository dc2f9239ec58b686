import Foundation
import Shared
import XCTest

/// A worker that cannot run because of its configuration says so and exits 78 (EX_CONFIG), so it
/// is not restarted, before it touches anything in the database.
final class WorkerStartupTests: IntegrationTestCase {
    func testWatchedTableThatDoesNotExist_exits78WithAFatalMessageAndCreatesNothing() throws {
        let database = try makeDatabase()
        let ingestor = try startIngestor()
        let config = try writeConfig(ConfigFile.forTests(database: database.config, ingestorURL: ingestor.baseURL, tables: [TestTables.devices]))

        let worker = try startWorkerWithoutWaiting(table: "devices", config: config)
        worker.expectedErrorLogs = ["worker cannot run"]
        let ended = worker.process.waitForExit(timeout: Wait.defaultTimeout)
        XCTAssertEqual(ended, .exited(78), worker.diagnostics())
        let messages = worker.messages()
        XCTAssertEqual(messages.count, 1, "only the fatal message: \(messages)")
        XCTAssertEqual(messages.first?["type"], "fatal")
        let error = messages.first?["error"]?.string ?? ""
        XCTAssertTrue(error.contains("devices") && error.contains("does not exist"), "the fatal message names the missing table: \(error)")
        XCTAssertEqual(try database.value("SELECT count(*) FROM pg_class WHERE relname LIKE 'devices%'"), "0", "nothing was created")
        XCTAssertEqual(try ingestor.requests().count, 0)
    }

    func testDatabaseThatDoesNotExist_exits78WithAFatalMessage() throws {
        let ingestor = try startIngestor()
        var database = server!
        database.databaseName = "adp_it_no_such_database"
        let config = try writeConfig(ConfigFile.forTests(database: database, ingestorURL: ingestor.baseURL, tables: [TestTables.devices]))

        let worker = try startWorkerWithoutWaiting(table: "devices", config: config)
        worker.expectedErrorLogs = ["worker cannot run"]
        XCTAssertEqual(worker.process.waitForExit(timeout: Wait.defaultTimeout), .exited(78), worker.diagnostics())
        let messages = worker.messages()
        XCTAssertEqual(messages.map { $0["type"] }, ["fatal"], "\(messages)")
        XCTAssertTrue((messages.first?["error"]?.string ?? "").contains("adp_it_no_such_database"), "\(messages)")
    }
}
