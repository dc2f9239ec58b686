import Foundation
import Shared

/// Watched tables shared by several tests; their DDL lives in Fixtures/.
enum TestTables {
    /// Fixtures/devices.sql: `devices (id bigint, name, firmware, updated_at)`, watched on updated_at.
    static let devices = WatchedTable(
        name: "devices", changeColumns: ["updated_at"],
        atomicDataQuery: "SELECT id, name, firmware, updated_at FROM devices WHERE id = $PRIMARY_KEY",
        publishEndpoint: "/api/v1/devices/atomic-data")

    static func devicesSQL() throws -> String { try TestEnvironment.fixture("devices.sql") }
}
