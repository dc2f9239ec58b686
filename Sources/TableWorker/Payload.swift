// The payload of DESIGN.md section 5, built as text: the atomic data is already JSON rendered by
// PostgreSQL and is embedded as is, never parsed and re-encoded.

import Foundation
import Shared

struct Payload {
    /// Stable across retries and restarts: the table plus the highest tracking id covered.
    var id: String
    var body: [UInt8]

    /// `retryCount`: failed attempts so far, recorded ones (in the tracking table) plus immediate ones.
    static func build(table: WatchedTable, changes: KeyChanges, atomicData: String, now: Date, retryCount: Int) -> Payload {
        let latest = changes.latest
        let id = "\(table.qualifiedName):\(latest.id)"
        var s = "{\"id\":\(jsonString(id))"
        s += ",\"table_name\":\(jsonString(table.name))"
        s += ",\"schema\":\(jsonString(table.schema))"
        s += ",\"primary_key\":\(jsonString(changes.primaryKey))"
        s += ",\"operation\":\(jsonString(latest.operation.rawValue))"
        s += ",\"change_column_value\":\(latest.changeColumnValue.map(jsonString) ?? "null")"
        s += ",\"changed_at\":\(jsonString(latest.changedAt))"
        s += ",\"atomic_data\":\(atomicData)"
        s += ",\"metadata\":{\"service_name\":\"atomic-data-publisher\",\"version\":\(jsonString(PublisherVersion.current))"
        s += ",\"timestamp\":\(jsonString(Timestamp.iso8601(now))),\"retry_count\":\(retryCount)}}"
        return Payload(id: id, body: Array(s.utf8))
    }
}
