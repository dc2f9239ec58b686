import Foundation
import Shared
import XCTest

/// Standard Webhooks signatures checked by an implementation we did not write: dev/ingestor.py
/// verifies every publish with the `standardwebhooks` package (`--webhook-secret`) and records
/// whether it verified (and answers 401 when not).
final class WebhookSigningTests: IntegrationTestCase {
    private let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    private let previous = "whsec_c2VjcmV0LXByZXZpb3VzLTI0LWJ5dGVzLWxvbmc="
    private let devices = TestTables.devices

    func testAWorkersPublishes_verify_andATamperedBodyIsRejected() throws {
        let p = try startPipeline(schemaSQL: try TestTables.devicesSQL(), tables: [devices], webhookSecrets: [secret]) { config in
            config.ingestor.signingSecret = self.secret
        }
        try p.database.execute("INSERT INTO devices VALUES (1, 'one', 'v1', '2026-11-28 10:00:00+00')")
        try p.database.execute("INSERT INTO devices VALUES (2, 'two', 'v1', '2026-11-28 10:00:00+00')")
        let requests = try waitForRequests(p.ingestor, count: 2)
        try waitUntilTrackingTableIsEmpty(p.database, devices)
        for request in requests {
            XCTAssertEqual(request.verified, true, "\(request) \(request.headers)")
            XCTAssertEqual(request.status, 200)
            XCTAssertEqual(request.header("webhook-id"), request.body["id"]?.string, "webhook-id is the payload id")
            XCTAssertEqual(request.header("Idempotency-Key")?.hasPrefix((request.header("webhook-id") ?? "?") + "."), true, "Idempotency-Key is the payload id plus the body digest")
            let timestamp = Int(request.header("webhook-timestamp") ?? "") ?? 0
            XCTAssertLessThan(abs(timestamp - Int(Date().timeIntervalSince1970)), 120)
            XCTAssertTrue(request.header("webhook-signature")?.hasPrefix("v1,") ?? false)
        }

        // The same headers on another body: the library refuses it. And our signer, on a body of
        // our own, is accepted (the check is not simply refusing everything).
        let client = HTTPClient(timeoutMilliseconds: 5_000)
        let url = p.ingestor.baseURL + devices.publishEndpoint
        let body = Array(#"{"id":"public.devices:999","primary_key":"9"}"#.utf8)
        let signed = try WebhookSigner(secret: secret).headers(id: "public.devices:999", timestamp: Int(Date().timeIntervalSince1970), body: body)
        XCTAssertEqual(try client.perform(HTTPRequest(url: url, headers: signed, body: body)).get().status, 200)
        var tampered = body
        tampered[tampered.count - 3] = UInt8(ascii: "8")  // primary_key "9" becomes "8"
        XCTAssertEqual(try client.perform(HTTPRequest(url: url, headers: signed, body: tampered)).get().status, 401)
        let last = try p.ingestor.requests().suffix(2).map(\.verified)
        XCTAssertEqual(last, [true, false])
    }

    /// During a rotation the worker signs with both secrets: a receiver that still knows only the
    /// previous one accepts every publish.
    func testDuringRotation_aReceiverWithOnlyThePreviousSecret_verifies() throws {
        let p = try startPipeline(schemaSQL: try TestTables.devicesSQL(), tables: [devices], webhookSecrets: [previous]) { config in
            config.ingestor.signingSecret = self.secret
            config.ingestor.previousSigningSecret = self.previous
        }
        try p.database.execute("INSERT INTO devices VALUES (1, 'one', 'v1', '2026-11-28 10:00:00+00')")
        let requests = try waitForRequests(p.ingestor, count: 1)
        XCTAssertEqual(requests.first?.verified, true, "\(requests)")
        XCTAssertEqual(requests.first?.header("webhook-signature")?.split(separator: " ").count, 2)
        try waitUntilTrackingTableIsEmpty(p.database, devices)
    }

    /// `ingestor.compression = "gzip"`: the body is compressed on the wire, and the signature is of
    /// the body the receiver reads once it has undone the encoding: the `standardwebhooks` library,
    /// handed the decompressed body, verifies it (so those are the very bytes that were signed).
    func testWithGzip_eachPublishIsCompressed_andVerifiesOnTheDecompressedBody() throws {
        let p = try startPipeline(schemaSQL: try TestTables.devicesSQL(), tables: [devices], webhookSecrets: [secret]) { config in
            config.ingestor.signingSecret = self.secret
            config.ingestor.compression = "gzip"
        }
        let name = String(repeating: "a long, repetitive device name ", count: 20)
        try p.database.execute("INSERT INTO devices VALUES (1, '\(name)', 'v1', '2026-11-28 10:00:00+00')")
        try p.database.execute("INSERT INTO devices VALUES (2, 'two', 'v1', '2026-11-28 10:00:00+00')")
        let requests = try waitForRequests(p.ingestor, count: 2)
        try waitUntilTrackingTableIsEmpty(p.database, devices)
        XCTAssertEqual(Set(requests.compactMap { $0.body["primary_key"]?.string }), ["1", "2"])
        for request in requests {
            XCTAssertEqual(request.header("Content-Encoding"), "gzip", "\(request.headers)")
            XCTAssertEqual(request.verified, true, "\(request) \(request.headers)")
            XCTAssertEqual(request.status, 200)
            XCTAssertEqual(request.body["table_name"], "devices", "decoded to the standard payload: \(request)")
            XCTAssertEqual(request.body["atomic_data"]?[0]?["firmware"], "v1")
            let wire = try XCTUnwrap(request.wireBytes)
            XCTAssertEqual(Int(request.header("Content-Length") ?? ""), wire, "Content-Length is the compressed size")
        }
        let long = try XCTUnwrap(requests.first { $0.body["primary_key"]?.string == "1" })
        XCTAssertEqual(long.body["atomic_data"]?[0]?["name"]?.string, name, "the document decodes to what the database holds")
        XCTAssertLessThan(try XCTUnwrap(long.wireBytes) * 2, try XCTUnwrap(long.bodyBytes), "the repetitive document went compressed")
    }
}
