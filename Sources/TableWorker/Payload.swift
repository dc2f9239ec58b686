// The payload of DESIGN.md section 5, built as bytes: the atomic data is already JSON rendered by
// PostgreSQL and is embedded as is, never parsed and re-encoded.
//
// One Idempotency-Key always means one body: within a batch a payload is built from the same
// inputs (the batch's time and epoch) each time it is sent, so a retry sends it byte for byte
// (the worker builds each request as it goes out, to bound its memory); the key is the payload id plus a
// digest of the body, so a payload rebuilt later (a new batch, a restart, a replay: another
// timestamp, retry_count or state) gets a new key, while `id` stays the same for every payload
// that covers the same changes.

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
    ///
    /// Written straight into one byte buffer, sized up front (one allocation for the body): no
    /// intermediate Strings per field, no String(format:), no JSON round trip.
    /// `leaseEpoch`: the epoch of the lease grant it is sent under (`metadata.publisher_epoch`).
    static func build(table: WatchedTable, epoch: String, changes: KeyChanges, atomicData: String, unixNow: Double, retryCount: Int,
                      leaseEpoch: Int64 = 0) -> Payload {
        let latest = changes.latest
        // <schema>.<table>:<epoch>:<highest tracking id>, written once as bytes.
        var idBytes: [UInt8] = []
        idBytes.reserveCapacity(table.schema.utf8.count + table.name.utf8.count + epoch.utf8.count + 23)
        idBytes.append(contentsOf: table.schema.utf8)
        idBytes.append(0x2E)  // .
        idBytes.append(contentsOf: table.name.utf8)
        idBytes.append(0x3A)  // :
        idBytes.append(contentsOf: epoch.utf8)
        idBytes.append(0x3A)
        JSONBytes.appendInteger(latest.id, to: &idBytes)
        var b: [UInt8] = []
        // The fixed text is about 200 bytes; escapes may add more (the array then grows once).
        b.reserveCapacity(256 + atomicData.utf8.count + 2 * idBytes.count + table.name.utf8.count + table.schema.utf8.count
                          + changes.primaryKey.utf8.count + (latest.changeColumnValue?.utf8.count ?? 0) + latest.changedAt.utf8.count)
        JSONBytes.appendLiteral("{\"id\":", to: &b)
        idBytes.withUnsafeBufferPointer { JSONBytes.appendString(utf8: $0, to: &b) }
        JSONBytes.appendLiteral(",\"table_name\":", to: &b)
        JSONBytes.appendString(table.name, to: &b)
        JSONBytes.appendLiteral(",\"schema\":", to: &b)
        JSONBytes.appendString(table.schema, to: &b)
        JSONBytes.appendLiteral(",\"primary_key\":", to: &b)
        JSONBytes.appendString(changes.primaryKey, to: &b)
        JSONBytes.appendLiteral(",\"operation\":", to: &b)
        JSONBytes.appendString(latest.operation.rawValue, to: &b)
        if !changes.dependencyCauses.isEmpty {
            JSONBytes.appendLiteral(",\"cause\":", to: &b)
            appendCause(table: table, changes: changes, to: &b)
        }
        JSONBytes.appendLiteral(",\"change_column_value\":", to: &b)
        if let value = latest.changeColumnValue {
            JSONBytes.appendString(value, to: &b)
        } else {
            JSONBytes.appendLiteral("null", to: &b)
        }
        JSONBytes.appendLiteral(",\"changed_at\":", to: &b)
        JSONBytes.appendString(latest.changedAt, to: &b)
        JSONBytes.appendLiteral(",\"atomic_data\":", to: &b)
        JSONBytes.appendRaw(atomicData, to: &b)
        JSONBytes.appendLiteral(",\"metadata\":{\"service_name\":\"atomic-data-publisher\",\"version\":", to: &b)
        JSONBytes.appendString(PublisherVersion.current, to: &b)
        JSONBytes.appendLiteral(",\"timestamp\":\"", to: &b)
        Timestamp.appendISO8601(unixSeconds: unixNow, to: &b)
        JSONBytes.appendLiteral("\",\"retry_count\":", to: &b)
        JSONBytes.appendInteger(Int64(retryCount), to: &b)
        JSONBytes.appendLiteral(",\"publisher_epoch\":", to: &b)
        JSONBytes.appendInteger(leaseEpoch, to: &b)
        JSONBytes.appendLiteral("}}", to: &b)
        return Payload(id: String(decoding: idBytes, as: UTF8.self), body: b)
    }

    /// `"cause"` of a payload that covers a dependency's change: one object per distinct (table,
    /// operation) among the covered rows, the watched table's own included; one object alone, else
    /// a list.
    private static func appendCause(table: WatchedTable, changes: KeyChanges, to b: inout [UInt8]) {
        var entries: [(schema: Substring, table: Substring, operation: Substring)] = []
        for operation in changes.ownOperations {
            entries.append((Substring(table.schema), Substring(table.name), Substring(operation.rawValue)))
        }
        for cause in changes.dependencyCauses {
            // "<schema>.<table> <operation>": identifiers are validated (no '.' or ' ' in them).
            guard let space = cause.lastIndex(of: " ") else { continue }
            let qualified = cause[..<space]
            let dot = qualified.firstIndex(of: ".") ?? qualified.startIndex
            let schema = qualified[..<dot], name = dot == qualified.startIndex ? qualified : qualified[qualified.index(after: dot)...]
            entries.append((schema, name, cause[cause.index(after: space)...]))
        }
        if entries.count > 1 { b.append(0x5B) }  // [
        for (index, entry) in entries.enumerated() {
            if index > 0 { b.append(0x2C) }
            JSONBytes.appendLiteral("{\"table\":", to: &b)
            JSONBytes.appendString(String(entry.table), to: &b)
            JSONBytes.appendLiteral(",\"schema\":", to: &b)
            JSONBytes.appendString(String(entry.schema), to: &b)
            JSONBytes.appendLiteral(",\"operation\":", to: &b)
            JSONBytes.appendString(String(entry.operation), to: &b)
            b.append(0x7D)  // }
        }
        if entries.count > 1 { b.append(0x5D) }  // ]
    }

    static func digestHex(_ bytes: [UInt8]) -> String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        bytes.withUnsafeBufferPointer { buffer in
            for byte in buffer { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
        }
        return JSONBytes.hex16(hash)
    }
}

/// Builds the HTTP request for a payload: URL, headers (DESIGN.md section 5), body.
struct RequestBuilder {
    let url: String
    /// Batch mode's URL (`batch_publish_endpoint`); nil: one document per request.
    let batchURL: String?
    let authToken: String
    let instance: String
    /// `Bearer <token>`, built once (empty: no Authorization header).
    let authorization: String
    let signer: WebhookSigner?
    /// `ingestor.compression = "gzip"`: the body goes out gzip-compressed (nil: as built).
    let compressor: GzipCompressor?
    /// The headers every request of this worker carries, built once (HTTPHeaderBlock says why);
    /// `fixedGzip` adds `Content-Encoding: gzip`, for the bodies that were compressed.
    let fixed: HTTPHeaderBlock
    let fixedGzip: HTTPHeaderBlock

    /// zlib level 1: on the benchmark's documents it keeps most of level 6's saving for a fraction
    /// of its CPU (docs/performance.md, "Compression").
    static let gzipLevel = 1

    init(config: PublisherConfig, table: WatchedTable) {
        var base = config.ingestor.baseURL
        while base.hasSuffix("/") { base.removeLast() }
        url = base + table.publishEndpoint
        batchURL = table.batchPublishEndpoint.isEmpty ? nil : base + table.batchPublishEndpoint
        authToken = config.ingestor.authToken
        authorization = authToken.isEmpty ? "" : "Bearer " + authToken
        instance = config.resolvedInstanceId
        signer = WebhookSigner.forIngestor(config.ingestor)
        compressor = config.ingestor.gzip ? GzipCompressor(level: Self.gzipLevel) : nil
        var constant = [
            ("Content-Type", "application/json"),
            ("User-Agent", PublisherVersion.userAgent),
            ("X-Publisher-Instance", instance),
        ]
        if !authorization.isEmpty { constant.append(("Authorization", authorization)) }
        fixed = HTTPHeaderBlock(constant)
        fixedGzip = HTTPHeaderBlock(constant + [("Content-Encoding", "gzip")])
    }

    /// `unixNow`: the webhook-timestamp of a signed request (Standard Webhooks): the time it is
    /// sent, not the batch's, so a retry late in a long batch is not refused as too old.
    /// `lease`: the lease's name and this grant's epoch (X-Publisher-Lease, X-Publisher-Epoch).
    func request(for payload: Payload, unixNow: Double, lease: (name: String, epoch: Int64)? = nil) -> HTTPRequest {
        var headers = [("Idempotency-Key", payload.idempotencyKey)]
        if let lease {
            headers.append(("X-Publisher-Epoch", String(lease.epoch)))
            headers.append(("X-Publisher-Lease", lease.name))
        }
        if let signer {
            headers += signer.headers(id: payload.id, timestamp: Int(unixNow), body: payload.body)
        }
        // The Idempotency-Key and the signature are of the body as built (the body the receiver
        // reads once it has undone the Content-Encoding, as HTTP servers and frameworks do before
        // the application sees it); only the bytes on the wire are compressed. A body zlib could
        // not compress goes out as it is, without the header.
        if let compressor, let compressed = compressor.compress(payload.body) {
            return HTTPRequest(url: url, fixedHeaders: fixedGzip, headers: headers, body: compressed)
        }
        return HTTPRequest(url: url, fixedHeaders: fixed, headers: headers, body: payload.body)
    }

    /// Batch mode: one request whose body is the JSON array of the documents, each exactly as
    /// it would be sent alone, in order. Its Idempotency-Key is `<first document's id>+<count>.`
    /// and the digest of the whole body, so the same documents with the same bodies (an
    /// immediate retry) have the same key, and any other set another; the Standard Webhooks
    /// message id is `<first document's id>+<count>` (as a single document's is its id), and
    /// the signature covers the whole body (uncompressed, as for a single document).
    func request(for payloads: [Payload], unixNow: Double, lease: (name: String, epoch: Int64)? = nil) -> HTTPRequest {
        let batch = Self.batchPayload(payloads)
        var request = request(for: batch, unixNow: unixNow, lease: lease)
        request.url = batchURL ?? url
        return request
    }

    /// The documents as one array, under the id the batch's key starts with.
    static func batchPayload(_ payloads: [Payload]) -> Payload {
        var body: [UInt8] = []
        body.reserveCapacity(payloads.reduce(2) { $0 + $1.body.count + 1 })
        body.append(0x5B)  // [
        for (index, payload) in payloads.enumerated() {
            if index > 0 { body.append(0x2C) }
            body.append(contentsOf: payload.body)
        }
        body.append(0x5D)  // ]
        return Payload(id: (payloads.first?.id ?? "") + "+" + String(payloads.count), body: body)
    }
}
