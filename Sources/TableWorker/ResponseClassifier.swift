// What an ingestor's answer means for delivery, as a pure function (unit-tested line by line).
//
// - 2xx: delivered.
// - 408, 429, 5xx and transport errors: transient, retried with backoff. A timeout says which
//   setting it hit (`ingestor.timeout_seconds` and its value): a request that can never be
//   answered in time is retried for ever, and the CURLcode alone does not tell an operator why. `Retry-After` (on 429
//   and 503) is honoured in both RFC 9110 forms, delta-seconds and HTTP-date; a negative or
//   unparsable value is ignored (the plan floors any value at the configured backoff).
// - Other statuses (4xx, and 3xx, which are never followed: a redirect could leak the token):
//   permanent for that payload.
// The error text recorded in the tracking table and shown by /health never contains the
// response body (it may echo row data); the body is logged at debug level only.

import Shared

enum ResponseClassifier {
    /// The only response headers read here: the worker's HTTP client keeps no others.
    static let headersRead: Set<String> = ["retry-after", "location"]

    static func outcome(_ response: Result<HTTPResponse, HTTPTransportError>, unixNow: Double, timeoutSeconds: Int = 0) -> DeliveryOutcome {
        switch response {
        case .success(let r) where r.isSuccess:
            return .delivered
        case .success(let r):
            if r.status >= 500 || r.status == 408 || r.status == 429 {
                let retryAfter = (r.status == 429 || r.status == 503) ? r.headers["retry-after"].flatMap { retryAfterSeconds($0, unixNow: unixNow) } : nil
                return .failed("HTTP \(r.status) from ingestor", retryAfter: retryAfter)
            }
            if (300..<400).contains(r.status) {
                let location = r.headers["location"].map { " to \(redactedLocation($0))" } ?? ""
                return .rejected("HTTP \(r.status) from ingestor: redirect\(location) not followed; set ingestor.base_url to the final address")
            }
            return .rejected("HTTP \(r.status) from ingestor")
        case .failure(let error) where error.isTimeout:
            return .failed("ingestor request failed: \(timeoutText(timeoutSeconds)) (\(error))", retryAfter: nil)
        case .failure(let error):
            return .failed("ingestor request failed: \(error)", retryAfter: nil)
        }
    }

    /// What a timeout means, in the terms of the configuration.
    static func timeoutText(_ seconds: Int) -> String {
        "the ingestor did not answer within ingestor.timeout_seconds = \(seconds) s"
    }

    /// Seconds to wait from a Retry-After value: delta-seconds or an IMF-fixdate; nil when
    /// negative or unparsable.
    static func retryAfterSeconds(_ value: String, unixNow: Double) -> Double? {
        let text = value.trimmingASCIIWhitespace
        if let seconds = Double(text) {
            return seconds >= 0 && seconds.isFinite ? seconds : nil
        }
        guard let date = parseIMFFixdate(text) else { return nil }
        return max(0, date - unixNow)
    }

    /// "Sun, 06 Nov 1994 08:49:37 GMT" as Unix seconds.
    static func parseIMFFixdate(_ text: String) -> Double? {
        let parts = text.split(separator: " ")
        guard parts.count == 6, parts[0].hasSuffix(","), parts[5] == "GMT",
              let day = Int(parts[1]), let year = Int(parts[3]),
              let month = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"].firstIndex(of: String(parts[2])) else { return nil }
        let clock = parts[4].split(separator: ":").compactMap { Int($0) }
        guard clock.count == 3, (1...31).contains(day), (0...23).contains(clock[0]), (0...59).contains(clock[1]), (0...60).contains(clock[2]) else { return nil }
        return Double(daysFromCivil(year: year, month: month + 1, day: day) * 86_400 + clock[0] * 3600 + clock[1] * 60 + clock[2])
    }

    /// Days since 1970-01-01 (Howard Hinnant's algorithm).
    private static func daysFromCivil(year: Int, month: Int, day: Int) -> Int {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let doy = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }

    /// A redirect target without userinfo or query string (either may carry a secret).
    static func redactedLocation(_ location: String) -> String {
        var text = Substring(location.trimmingASCIIWhitespace)
        if let query = text.firstIndex(where: { $0 == "?" || $0 == "#" }) { text = text[..<query] }
        if let scheme = text.rangeOfScalars("://") {
            let rest = text[scheme.upperBound...]
            let hostEnd = rest.firstIndex(of: "/") ?? rest.endIndex
            if let at = rest[..<hostEnd].lastIndex(of: "@") {
                text = text[..<scheme.upperBound] + rest[rest.index(after: at)...]
            }
        }
        return String(text.prefix(200))
    }
}

extension String {
    var trimmingASCIIWhitespace: String {
        let bytes = Array(utf8)
        var start = 0
        var end = bytes.count
        while start < end, bytes[start] == 0x20 || bytes[start] == 0x09 || bytes[start] == 0x0A || bytes[start] == 0x0D { start += 1 }
        while end > start, bytes[end - 1] == 0x20 || bytes[end - 1] == 0x09 || bytes[end - 1] == 0x0A || bytes[end - 1] == 0x0D { end -= 1 }
        return String(decoding: bytes[start..<end], as: UTF8.self)
    }
}
