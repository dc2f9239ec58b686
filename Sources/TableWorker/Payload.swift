// The payload of DESIGN.md section 5, built as bytes: the atomic data is already JSON rendered by
// PostgreSQL and is embedded as is, never parsed and re-encoded.
//
// One Idempotency-Key always means one body: a payload is built once per batch and retried
// byte for byte within it; the key is the payload id plus a digest of the body, so a payload
// rebuilt later (a new batch, a restart, a replay: another timestamp, retry_count or state) gets
// a new key, while `id` stays the same for every payload that covers the same changes.

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif
import Shared

struct Payload: Equatable {
    /// Stable across retries and restarts: the table, the tracking table's epoch (its OID: new
    /// when the tracking table is recreated, so ids never repeat) and the highest tracking id covered.
    var id: String
    var body: [UInt8]

    /// `<id>.<16 hex digits of the body's FNV-1a 64 digest>`.
    var idempotencyKey: String { id + "." + Self.digestHex(body) }

    /// `retryCount`: tries recorded in the tracking table before this batch.
    static func build(table: WatchedTable, epoch: String, changes: KeyChanges, atomicData: String, unixNow: Double, retryCount: Int) -> Payload {
        let latest = changes.latest
        let id = "\(table.qualifiedName):\(epoch):\(latest.id)"
        var s = "{\"id\":\(jsonString(id))"
        s += ",\"table_name\":\(jsonString(table.name))"
        s += ",\"schema\":\(jsonString(table.schema))"
        s += ",\"primary_key\":\(jsonString(changes.primaryKey))"
        s += ",\"operation\":\(jsonString(latest.operation.rawValue))"
        s += ",\"change_column_value\":\(latest.changeColumnValue.map(jsonString) ?? "null")"
        s += ",\"changed_at\":\(jsonString(latest.changedAt))"
        s += ",\"atomic_data\":"
        s += atomicData
        s += ",\"metadata\":{\"service_name\":\"atomic-data-publisher\",\"version\":\(jsonString(PublisherVersion.current))"
        s += ",\"timestamp\":\"\(Timestamp.iso8601(unixSeconds: unixNow))\",\"retry_count\":\(retryCount)}}"
        return Payload(id: id, body: Array(s.utf8))
    }

    static func digestHex(_ bytes: [UInt8]) -> String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in bytes { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
        let hex = String(hash, radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex
    }
}

/// Builds the HTTP request for a payload: URL, headers (DESIGN.md section 5), body.
struct RequestBuilder {
    let url: String
    let authToken: String
    let instance: String
    let signer: WebhookSigner?

    init(config: PublisherConfig, table: WatchedTable) {
        var base = config.ingestor.baseURL
        while base.hasSuffix("/") { base.removeLast() }
        url = base + table.publishEndpoint
        authToken = config.ingestor.authToken
        instance = config.resolvedInstanceId
        signer = WebhookSigner.forIngestor(config.ingestor)
    }

    /// `unixNow`: the webhook-timestamp of a signed request (Standard Webhooks).
    func request(for payload: Payload, unixNow: Double) -> HTTPRequest {
        var headers = [
            ("Content-Type", "application/json"),
            ("Idempotency-Key", payload.idempotencyKey),
            ("User-Agent", PublisherVersion.userAgent),
            ("X-Publisher-Instance", instance),
        ]
        if !authToken.isEmpty {
            headers.append(("Authorization", "Bearer \(authToken)"))
        }
        if let signer {
            headers += signer.headers(id: payload.id, timestamp: Int(unixNow), body: payload.body)
        }
        return HTTPRequest(url: url, headers: headers, body: payload.body)
    }
}
