import Shared
import XCTest
@testable import TableWorker

final class ResponseClassifierTests: XCTestCase {
    private func response(_ status: Int, _ headers: [String: String] = [:], body: String = "") -> Result<HTTPResponse, HTTPTransportError> {
        .success(HTTPResponse(status: status, body: Array(body.utf8), headers: headers, seconds: 0.01))
    }

    private func outcome(_ r: Result<HTTPResponse, HTTPTransportError>) -> DeliveryOutcome {
        ResponseClassifier.outcome(r, unixNow: 784_111_777)  // Sun, 06 Nov 1994 08:49:37 GMT
    }

    func test2xx_isDelivered() { XCTAssertEqual(outcome(response(204)), .delivered) }
    func test5xx408And429_areTransient() {
        for status in [500, 503, 408, 429] { XCTAssertEqual(outcome(response(status)), .failed("HTTP \(status) from ingestor", retryAfter: nil)) }
    }
    func test4xx_isPermanent_andTheBodyIsNotRecorded() {
        XCTAssertEqual(outcome(response(400, body: "row secret-value is invalid")), .rejected("HTTP 400 from ingestor"))
    }
    func testRedirect_isPermanent_andNamesTheLocationWithoutSecrets() {
        XCTAssertEqual(outcome(response(302, ["location": "https://user:pw@other.example/new?token=x"])),
                       .rejected("HTTP 302 from ingestor: redirect to https://other.example/new not followed; set ingestor.base_url to the final address"))
    }
    func testTransportError_isTransient() {
        XCTAssertEqual(outcome(.failure(HTTPTransportError(code: 7, message: "Connection refused", isTimeout: false))),
                       .failed("ingestor request failed: Connection refused (CURLcode 7)", retryAfter: nil))
    }
    func testATimeout_isTransient_andNamesTheSettingAndItsValue() {
        let timedOut = HTTPTransportError(code: 28, message: "Operation timed out after 5001 milliseconds with 0 bytes received", isTimeout: true)
        XCTAssertEqual(ResponseClassifier.outcome(.failure(timedOut), unixNow: 0, timeoutSeconds: 5),
                       .failed("ingestor request failed: the ingestor did not answer within ingestor.timeout_seconds = 5 s (Operation timed out after 5001 milliseconds with 0 bytes received (CURLcode 28))", retryAfter: nil))
    }
    func testRetryAfterSeconds() { XCTAssertEqual(outcome(response(429, ["retry-after": " 2 "])), .failed("HTTP 429 from ingestor", retryAfter: 2)) }
    func testRetryAfterNegative_isIgnored() { XCTAssertEqual(outcome(response(503, ["retry-after": "-5"])), .failed("HTTP 503 from ingestor", retryAfter: nil)) }
    func testRetryAfterGarbage_isIgnored() { XCTAssertEqual(outcome(response(503, ["retry-after": "soon"])), .failed("HTTP 503 from ingestor", retryAfter: nil)) }
    func testRetryAfterHTTPDate() {
        XCTAssertEqual(outcome(response(503, ["retry-after": "Sun, 06 Nov 1994 08:50:07 GMT"])), .failed("HTTP 503 from ingestor", retryAfter: 30))
    }
    func testRetryAfterHTTPDateInThePast_isZero() {
        XCTAssertEqual(outcome(response(429, ["retry-after": "Sun, 06 Nov 1994 08:00:00 GMT"])), .failed("HTTP 429 from ingestor", retryAfter: 0))
    }
    func testRetryAfterOn500_isNotUsed() { XCTAssertEqual(outcome(response(500, ["retry-after": "9"])), .failed("HTTP 500 from ingestor", retryAfter: nil)) }
    func testIMFFixdate() { XCTAssertEqual(ResponseClassifier.parseIMFFixdate("Thu, 01 Jan 1970 00:00:10 GMT"), 10) }

    func testIdempotencyKey_isTheIdPlusTheBodyDigest_andChangesWithTheBody() {
        let a = Payload(id: "public.t:7", body: Array("{\"a\":1}".utf8))
        let b = Payload(id: "public.t:7", body: Array("{\"a\":2}".utf8))
        XCTAssertTrue(a.idempotencyKey.hasPrefix("public.t:7."))
        XCTAssertEqual(a.idempotencyKey.count, "public.t:7.".count + 16)
        XCTAssertEqual(a.idempotencyKey, Payload(id: "public.t:7", body: a.body).idempotencyKey)
        XCTAssertNotEqual(a.idempotencyKey, b.idempotencyKey)
    }

    func testTimestamp_isRFC3339WithMilliseconds() {
        XCTAssertEqual(Timestamp.iso8601(unixSeconds: 784_111_777.123), "1994-11-06T08:49:37.123Z")
        XCTAssertEqual(Timestamp.iso8601(unixSeconds: 0), "1970-01-01T00:00:00.000Z")
    }
}
