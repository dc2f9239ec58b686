import Foundation
import Shared
import XCTest

/// Primary keys are values bound as query parameters, whatever their type, text or column name.
final class PrimaryKeyTests: IntegrationTestCase {
    func testTextPrimaryKeysThatLookLikeSQL_arePublishedAsValuesAndTheTablesSurvive() throws {
        let stations = WatchedTable(
            name: "stations", primaryKey: "code", changeColumns: ["revision"],
            atomicDataQuery: "SELECT code, label, revision FROM stations WHERE code = $PRIMARY_KEY",
            publishEndpoint: "/api/v1/stations/atomic-data")
        let p = try startPipeline(schemaSQL: """
            CREATE TABLE stations (code text PRIMARY KEY, label text NOT NULL, revision integer NOT NULL);
            CREATE TABLE hotspots (id bigint PRIMARY KEY);
            INSERT INTO hotspots VALUES (1);
            """, tables: [stations])

        let keys = [
            "x'); DROP TABLE hotspots; --",
            "x'); DROP TABLE stations; --",
            "\"; DROP TABLE stations; --",
            "O'Brien \\ \"back\\slash\" $1 $PRIMARY_KEY",
            "line\nbreak\ttab",
            "ключ 🔑",
        ]
        for (index, key) in keys.enumerated() {
            try p.database.execute("INSERT INTO stations (code, label, revision) VALUES ($1, $2, 1)", [key, "station \(index)"])
        }

        try waitForRequests(p.ingestor, count: keys.count)
        try waitUntilTrackingTableIsEmpty(p.database, stations)
        let requests = try p.ingestor.requests()
        XCTAssertEqual(requests.count, keys.count, "\(requests)")
        for (index, key) in keys.enumerated() {
            guard let request = requests.first(where: { $0.body["primary_key"] == .string(key) }) else {
                XCTFail("no payload for key \(JSON.string(key)) in \(requests)")
                continue
            }
            assertPayload(request, .init(
                table: stations, primaryKey: key, operation: "insert", changeColumnValue: "1",
                atomicData: [["code": .string(key), "label": .string("station \(index)"), "revision": 1]],
                trackingID: index + 1))
        }
        XCTAssertTrue(try p.database.tableExists("stations"))
        XCTAssertTrue(try p.database.tableExists("hotspots"))
        XCTAssertEqual(try p.database.rowCount("stations"), keys.count)
        XCTAssertEqual(try p.database.rowCount("hotspots"), 1)

        // Updates and deletes of such a key work the same way.
        try p.ingestor.clearRequests()
        try p.database.execute("UPDATE stations SET revision = 2 WHERE code = $1", [keys[0]])
        try p.database.execute("DELETE FROM stations WHERE code = $1", [keys[1]])
        try waitForRequests(p.ingestor, count: 2)
        try waitUntilTrackingTableIsEmpty(p.database, stations)
        let later = try p.ingestor.requests()
        XCTAssertEqual(later.count, 2, "\(later)")
        // Two keys: published concurrently, in either order.
        let updated = try XCTUnwrap(later.first { $0.body["primary_key"] == .string(keys[0]) }, "\(later)")
        let deleted = try XCTUnwrap(later.first { $0.body["primary_key"] == .string(keys[1]) }, "\(later)")
        assertPayload(updated, .init(
            table: stations, primaryKey: keys[0], operation: "update", changeColumnValue: "2",
            atomicData: [["code": .string(keys[0]), "label": "station 0", "revision": 2]], trackingID: keys.count + 1))
        assertPayload(deleted, .init(
            table: stations, primaryKey: keys[1], operation: "delete", changeColumnValue: "1",
            atomicData: [], trackingID: keys.count + 2))
        XCTAssertTrue(try p.database.tableExists("stations"))
        XCTAssertTrue(try p.database.tableExists("hotspots"))
    }

    func testUUIDPrimaryKeyInAColumnNotNamedId_isPublishedInCanonicalForm() throws {
        let sensors = WatchedTable(
            name: "sensors", primaryKey: "sensor_uuid", changeColumns: ["reading"],
            atomicDataQuery: "SELECT sensor_uuid, reading FROM sensors WHERE sensor_uuid = $PRIMARY_KEY",
            publishEndpoint: "/api/v1/sensors/atomic-data")
        let p = try startPipeline(
            schemaSQL: "CREATE TABLE sensors (sensor_uuid uuid PRIMARY KEY, reading integer NOT NULL);",
            tables: [sensors])
        let uuid = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"

        try p.database.execute("INSERT INTO sensors VALUES ('A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11', 10)")
        try waitForRequests(p.ingestor, count: 1)
        try waitUntilTrackingTableIsEmpty(p.database, sensors)
        try p.database.execute("UPDATE sensors SET reading = 11")
        try waitForRequests(p.ingestor, count: 2)
        try waitUntilTrackingTableIsEmpty(p.database, sensors)
        try p.database.execute("DELETE FROM sensors")
        try waitForRequests(p.ingestor, count: 3)
        try waitUntilTrackingTableIsEmpty(p.database, sensors)

        let requests = try p.ingestor.requests()
        XCTAssertEqual(requests.count, 3, "\(requests)")
        assertPayload(requests[0], .init(
            table: sensors, primaryKey: uuid, operation: "insert", changeColumnValue: "10",
            atomicData: [["sensor_uuid": .string(uuid), "reading": 10]], trackingID: 1))
        assertPayload(requests[1], .init(
            table: sensors, primaryKey: uuid, operation: "update", changeColumnValue: "11",
            atomicData: [["sensor_uuid": .string(uuid), "reading": 11]], trackingID: 2))
        assertPayload(requests[2], .init(
            table: sensors, primaryKey: uuid, operation: "delete", changeColumnValue: "11",
            atomicData: [], trackingID: 3))
    }

    func testChangingAPrimaryKey_publishesADeleteOfTheOldKeyAndAnUpdateOfTheNewOne() throws {
        let sensors = WatchedTable(
            name: "sensors", primaryKey: "sensor_uuid", changeColumns: ["reading"],
            atomicDataQuery: "SELECT sensor_uuid, reading FROM sensors WHERE sensor_uuid = $PRIMARY_KEY",
            publishEndpoint: "/api/v1/sensors/atomic-data")
        let p = try startPipeline(
            schemaSQL: "CREATE TABLE sensors (sensor_uuid uuid PRIMARY KEY, reading integer NOT NULL);",
            tables: [sensors])
        let old = "00000000-0000-4000-8000-000000000001"
        let new = "00000000-0000-4000-8000-000000000002"
        try p.database.execute("INSERT INTO sensors VALUES ($1, 10)", [old])
        try waitForRequests(p.ingestor, count: 1)
        try waitUntilTrackingTableIsEmpty(p.database, sensors)

        // The key changes, the watched column does not.
        try p.database.execute("UPDATE sensors SET sensor_uuid = $1 WHERE sensor_uuid = $2", [new, old])
        try waitForRequests(p.ingestor, count: 3)
        try waitUntilTrackingTableIsEmpty(p.database, sensors)
        let requests = try p.ingestor.requests()
        XCTAssertEqual(requests.count, 3, "\(requests)")
        let gone = try XCTUnwrap(requests.dropFirst().first { $0.body["primary_key"] == .string(old) }, "\(requests)")
        let moved = try XCTUnwrap(requests.dropFirst().first { $0.body["primary_key"] == .string(new) }, "\(requests)")
        assertPayload(gone, .init(table: sensors, primaryKey: old, operation: "delete", changeColumnValue: "10",
                                  atomicData: [], trackingID: 2))
        assertPayload(moved, .init(table: sensors, primaryKey: new, operation: "update", changeColumnValue: "10",
                                   atomicData: [["sensor_uuid": .string(new), "reading": 10]], trackingID: 3))
    }
}
