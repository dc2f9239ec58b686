// What a batch request's answer means for each of its documents, as a pure function.
//
// - A non-2xx (or a transport error) is the request's outcome, and so every document's: the
//   ResponseClassifier's rules apply to the whole request (Retry-After included).
// - A 2xx acknowledges every document, unless its body gives per-item answers:
//   `{"results": [{"id": "<payload id>", "status": <HTTP status>}, ...]}`. Then each listed
//   document gets its own status, classified as if it had been its own request (2xx delivered;
//   408, 429, 5xx transient; any other permanent). A document the list does not name takes the
//   request's 2xx. A body that is not that shape (empty, `{"ok": true}`, truncated) is no per-item
//   answer: the 2xx stands for every document.
// - A per-item 409 is the lease's, not the document's: `staleEpoch` says so, and the runner
//   treats the request as it treats a 409 (nothing more is sent under this grant).

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Shared

enum BatchAnswer {
    struct Results: Decodable {
        struct Item: Decodable {
            var id: String
            var status: Int
        }
        var results: [Item]
    }

    /// `documentIds[k]`: the payload id of the request's k-th document.
    static func outcomes(_ response: Result<HTTPResponse, HTTPTransportError>, documentIds: [String], unixNow: Double,
                         timeoutSeconds: Int = 0) -> (outcomes: [DeliveryOutcome], staleEpoch: Bool) {
        let whole = ResponseClassifier.outcome(response, unixNow: unixNow, timeoutSeconds: timeoutSeconds)
        guard case .success(let r) = response, r.isSuccess, let results = results(r.body) else {
            return (Array(repeating: whole, count: documentIds.count), false)
        }
        var status: [String: Int] = [:]
        for item in results.results { status[item.id] = item.status }
        var stale = false
        let outcomes = documentIds.map { id -> DeliveryOutcome in
            guard let code = status[id] else { return whole }
            if code == staleEpochStatus { stale = true }
            let item = HTTPResponse(status: code, body: [], headers: [:], seconds: r.seconds)
            switch ResponseClassifier.outcome(.success(item), unixNow: unixNow) {
            case .delivered: return .delivered
            case .rejected(let error): return .rejected(error + " (per-item result)")
            case .failed(let error, _): return .failed(error + " (per-item result)", retryAfter: nil)
            }
        }
        return (outcomes, stale)
    }

    /// The per-item answers, when the body is that shape.
    static func results(_ body: [UInt8]) -> Results? {
        // Most ingestors answer a short body without results: skip the decoder for those.
        guard body.count >= 12, containsResultsKey(body) else { return nil }
        return try? JSONDecoder().decode(Results.self, from: Data(body))
    }

    private static func containsResultsKey(_ body: [UInt8]) -> Bool {
        let key = Array("\"results\"".utf8)
        guard body.count >= key.count else { return false }
        for start in 0...(body.count - key.count) where body[start] == key[0] {
            if body[start..<(start + key.count)].elementsEqual(key) { return true }
        }
        return false
    }
}
