import XCTest
@testable import Shared

final class SessionBudgetTests: XCTestCase {
    private func config(tables: Int, partitions: Int = 1, maxConnections: Int) -> PublisherConfig {
        var config = PublisherConfig()
        config.database.maxConnections = maxConnections
        config.service.watchedTables = (0..<tables).map { i in
            var t = WatchedTable(name: "t\(i)", changeColumns: ["v"], atomicDataQuery: "SELECT 1 WHERE $PRIMARY_KEY = 1", publishEndpoint: "/t")
            t.partitions = partitions
            return t
        }
        return config
    }

    private func shares(_ config: PublisherConfig) -> [Int] {
        config.workerEntries.map { SessionShare.of(workerName: $0.name, in: config)!.sessions }
    }

    func testAutomatic_givesEveryWorkerItsSessionAndOneToReadAhead() {
        let c = config(tables: 60, maxConnections: 0)
        XCTAssertEqual(SessionBudget(c).limit, 120)
        XCTAssertFalse(SessionBudget(c).configured)
        XCTAssertEqual(shares(c), Array(repeating: 2, count: 60))
    }

    func testConfigured_belowTwicePerWorker_letsOnlyTheSpareSessionsReadAhead_firstWorkersFirst() {
        let c = config(tables: 30, maxConnections: 35)
        XCTAssertEqual(shares(c), Array(repeating: 2, count: 5) + Array(repeating: 1, count: 25))
        XCTAssertEqual(shares(c).reduce(0, +), 35)
        XCTAssertEqual(SessionBudget(c).peak, 35)
    }

    func testConfigured_aboveTwicePerWorker_neverGivesAWorkerMoreThanTwo() {
        let c = config(tables: 3, maxConnections: 100)
        XCTAssertEqual(shares(c), [2, 2, 2])
        XCTAssertEqual(SessionBudget(c).peak, 6)
    }

    func testEqualToTheWorkers_readsNothingAhead() {
        XCTAssertEqual(shares(config(tables: 4, maxConnections: 4)), [1, 1, 1, 1])
    }

    func testPartitions_countOneWorkerEach() {
        let c = config(tables: 2, partitions: 3, maxConnections: 8)
        XCTAssertEqual(SessionBudget(c).workers, 6)
        XCTAssertEqual(shares(c), [2, 2, 1, 1, 1, 1])
        XCTAssertEqual(SessionShare.of(workerName: "t0#1", in: c)?.sessions, 2)
        XCTAssertNil(SessionShare.of(workerName: "t0", in: c))
    }

    func testShares_neverExceedTheLimit_forAnyWorkerCountAndLimit() {
        for tables in 1...12 {
            for limit in tables...(3 * tables + 2) {
                let c = config(tables: tables, maxConnections: limit)
                let total = shares(c).reduce(0, +)
                XCTAssertLessThanOrEqual(total, limit, "\(tables) workers, limit \(limit)")
                XCTAssertEqual(total, min(limit, 2 * tables), "\(tables) workers, limit \(limit): every spare session is used")
            }
        }
    }

    func testWorkerConfigLine_carriesTheShare() throws {
        let c = config(tables: 30, maxConnections: 35)
        let share = SessionShare.of(workerName: "t29", in: c)
        let line = try WorkerConfig(table: "t29", config: c, share: share).encodedLine()
        XCTAssertEqual(try WorkerConfig.decode(line.dropLast()).share, share)
        XCTAssertEqual(share, SessionShare(sessions: 1, budget: SessionBudget(workers: 30, maxConnections: 35)))
    }

    /// A WAL-mode table's stream (the whole table's worker, or partition 0's) holds two sessions
    /// besides its worker's: counted in the budget before any read-ahead session is handed out.
    func testWALStreams_takeTwoSessionsEach_beforeAnyReadAhead_andTheAutomaticLimitCountsThem() {
        var c = config(tables: 3, partitions: 1, maxConnections: 6)
        c.service.watchedTables[0].capture = .wal
        c.service.watchedTables[1].partitions = 2
        c.service.watchedTables[1].capture = .wal
        let budget = SessionBudget(c)
        XCTAssertEqual(budget.workers, 4)
        XCTAssertEqual(budget.streamingWorkers, [0, 1], "t0's worker and t1's partition 0 stream; t1's partition 1 does not")
        XCTAssertEqual(budget.required, 8)
        XCTAssertEqual(budget.readAheadWorkers, 0)
        c.database.maxConnections = 10
        XCTAssertEqual(shares(c), [2, 2, 1, 1])
        XCTAssertEqual(SessionBudget(c).peak, 10)
        XCTAssertEqual(c.workerEntries.map { SessionShare.of(workerName: $0.name, in: c)!.walStreamSessions }, [2, 2, nil, nil])
        c.database.maxConnections = 0
        XCTAssertEqual(SessionBudget(c).limit, 12, "automatic: two per worker and two per stream")
        XCTAssertEqual(SessionBudget(c).peak, 12)
    }

    func testAConfiguredLimitBelowTheWorkersAndTheirWALStreams_isAConfigurationError() throws {
        var c = config(tables: 2, maxConnections: 3)
        c.service.watchedTables[0].capture = .wal
        c.ingestor.baseURL = "http://127.0.0.1:9"
        XCTAssertEqual(SessionBudget(c).required, 4)
        XCTAssertThrowsError(try ConfigLoader.validate(c)) { error in
            let text = "\(error)"
            XCTAssertTrue(text.contains("database.max_connections") && text.contains("1 WAL stream") && text.contains("at least 4"), text)
        }
    }
}
