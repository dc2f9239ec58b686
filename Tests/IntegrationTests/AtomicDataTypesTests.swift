import Foundation
import Shared
import XCTest

/// The atomic data is rendered by PostgreSQL: each column type maps to JSON the way `to_json` maps it.
final class AtomicDataTypesTests: IntegrationTestCase {
    /// The seed's schema (dev/demo-schema.sql) and its hotspots table exactly as config/default.toml
    /// declares it, atomic data query verbatim, with its rewards dependency.
    func testSeedHotspotsQuery_publishesTheHotspotWithItsRecentRewardsAsTypedJSON() throws {
        let seed = try ConfigLoader.load(
            explicitPath: TestEnvironment.repositoryRoot.appendingPathComponent("config/default.toml").path, environment: [:])
        let hotspots = try XCTUnwrap(seed.config.table(named: "hotspots"), "config/default.toml must watch hotspots")
        let p = try startPipeline(schemaSQL: try TestEnvironment.repositoryFile("dev/demo-schema.sql"), tables: [hotspots])

        // Reward times relative to the server's clock: the query keeps the last 24 hours only.
        func serverTime(_ offset: String) throws -> String {
            try p.database.value(#"SELECT to_char(date_trunc('second', now() - $1::interval) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"+00:00"')"#, [offset]) ?? ""
        }
        let oneHourAgo = try serverTime("1 hour")
        let twoHoursAgo = try serverTime("2 hours")
        let twoDaysAgo = try serverTime("48 hours")

        // Hotspot and rewards in one transaction, so the first payload already sees the rewards.
        try p.database.executeScript("""
            INSERT INTO hotspots (id, address, name, location, owner, status, created_at, updated_at)
            VALUES (1001, '112CuoXo7WCcp6GGwDNBo6H5nKXGH45UNJ39iEefdv2mwmnwdFt8', NULL, '8c2681a3064d9ff', 'owner-1', 'online',
                    '2026-01-01 00:00:00+00', '2026-11-28 10:00:00+00');
            INSERT INTO rewards (hotspot_id, amount, currency, timestamp) VALUES
                (1001, 12.5, 'HNT', '\(oneHourAgo)'),
                (1001, 0.00000001, 'IOT', '\(twoHoursAgo)'),
                (1001, 99, 'HNT', '\(twoDaysAgo)');
            INSERT INTO hotspots (id, address, created_at, updated_at)
            VALUES (1002, '11bare', '2026-01-02 03:04:05.678+00', '2026-11-28 10:00:01+00');
            """)

        try waitForRequests(p.ingestor, count: 2)
        try waitUntilTrackingTableIsEmpty(p.database, hotspots)
        let requests = try p.ingestor.requests()
        XCTAssertEqual(requests.count, 2, "\(requests)")
        let first = try XCTUnwrap(requests.first { $0.body["primary_key"] == "1001" }, "\(requests)")
        let second = try XCTUnwrap(requests.first { $0.body["primary_key"] == "1002" }, "\(requests)")

        // json_agg has no ORDER BY in the seed's query: compare the rewards in reward_id order.
        assertPayload(sortingRewards(first), .init(
            table: hotspots, primaryKey: "1001", operation: "insert", changeColumnValue: "2026-11-28 10:00:00+00",
            atomicData: [[
                "id": 1001,
                "address": "112CuoXo7WCcp6GGwDNBo6H5nKXGH45UNJ39iEefdv2mwmnwdFt8",
                "name": nil,
                "location": "8c2681a3064d9ff",
                "owner": "owner-1",
                "status": "online",
                "created_at": "2026-01-01T00:00:00+00:00",
                "updated_at": "2026-11-28T10:00:00+00:00",
                "rewards": [
                    ["reward_id": 1, "amount": 12.5, "currency": "HNT", "timestamp": .string(oneHourAgo)],
                    ["reward_id": 2, "amount": 0.00000001, "currency": "IOT", "timestamp": .string(twoHoursAgo)],
                ],
            ]],
            // The rewards were inserted in the hotspot's transaction: one payload covers both causes.
            cause: [["table": "hotspots", "schema": "public", "operation": "insert"], ["table": "rewards", "schema": "public", "operation": "insert"]]))
        assertPayload(second, .init(
            table: hotspots, primaryKey: "1002", operation: "insert", changeColumnValue: "2026-11-28 10:00:01+00",
            atomicData: [[
                "id": 1002, "address": "11bare", "name": nil, "location": nil, "owner": nil, "status": nil,
                "created_at": "2026-01-02T03:04:05.678+00:00", "updated_at": "2026-11-28T10:00:01+00:00",
                "rewards": [],
            ]]))
    }

    func testColumnTypes_mapAsPostgresToJSONMapsThem() throws {
        let assets = WatchedTable(
            name: "assets", primaryKey: "asset_id", changeColumns: ["version"],
            atomicDataQuery: """
                SELECT asset_id, label, attributes, tags, readings, grid, price, ratio, active, big, small,
                       born, seen_at, local_at, duration, raw, note, version
                FROM assets WHERE asset_id = $PRIMARY_KEY
                """,
            publishEndpoint: "/api/v1/assets/atomic-data")
        let p = try startPipeline(schemaSQL: """
            CREATE TABLE assets (
                asset_id uuid PRIMARY KEY,
                label text NOT NULL,
                attributes jsonb,
                tags text[],
                readings integer[],
                grid integer[][],
                price numeric(12, 4),
                ratio double precision,
                active boolean NOT NULL,
                big bigint,
                small smallint,
                born date,
                seen_at timestamptz,
                local_at timestamp,
                duration interval,
                raw bytea,
                note text,
                version integer NOT NULL
            );
            """, tables: [assets])

        try p.database.execute(#"""
            INSERT INTO assets VALUES (
                '6F1C3A52-3C1E-4D8B-9B8E-2A9C6D0E7F10', 'pump "north"',
                '{"color": "red", "size": {"w": 2, "h": 3.5}, "flags": [true, false, null], "empty": {}}',
                ARRAY['a', 'b "quoted"', NULL, 'ünï'], '{1,-2,3}', '{{1,2},{3,4}}',
                1234.5, 0.25, true, 9007199254740991, -7,
                '2026-02-28', '2026-11-28 10:00:00.5+00', '2026-11-28 10:00:00', '1 hour 30 minutes', '\x01ff',
                NULL, 1)
            """#)

        try waitForRequests(p.ingestor, count: 1)
        try waitUntilTrackingTableIsEmpty(p.database, assets)
        let requests = try p.ingestor.requests()
        XCTAssertEqual(requests.count, 1, "\(requests)")
        assertPayload(requests[0], .init(
            table: assets, primaryKey: "6f1c3a52-3c1e-4d8b-9b8e-2a9c6d0e7f10", operation: "insert", changeColumnValue: "1",
            atomicData: [[
                "asset_id": "6f1c3a52-3c1e-4d8b-9b8e-2a9c6d0e7f10",
                "label": "pump \"north\"",
                "attributes": ["color": "red", "size": ["w": 2, "h": 3.5], "flags": [true, false, nil], "empty": [:]],
                "tags": ["a", "b \"quoted\"", nil, "ünï"],
                "readings": [1, -2, 3],
                "grid": [[1, 2], [3, 4]],
                "price": 1234.5,
                "ratio": 0.25,
                "active": true,
                "big": 9007199254740991,
                "small": -7,
                "born": "2026-02-28",
                "seen_at": "2026-11-28T10:00:00.5+00:00",
                "local_at": "2026-11-28T10:00:00",
                "duration": "01:30:00",
                "raw": "\\x01ff",
                "note": nil,
                "version": 1,
            ]],
            trackingID: 1))
    }

    /// The request with its atomic data's `rewards` arrays sorted by reward_id.
    private func sortingRewards(_ request: RecordedRequest) -> RecordedRequest {
        guard case .object(var body) = request.body, let rows = body["atomic_data"]?.array else { return request }
        body["atomic_data"] = .array(rows.map { row in
            guard case .object(var object) = row, let rewards = object["rewards"]?.array else { return row }
            object["rewards"] = .array(rewards.sorted { ($0["reward_id"]?.number ?? 0) < ($1["reward_id"]?.number ?? 0) })
            return .object(object)
        })
        return RecordedRequest(path: request.path, headers: request.headers, body: .object(body), status: request.status)
    }
}
