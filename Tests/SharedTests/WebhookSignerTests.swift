import XCTest

@testable import Shared

/// Standard Webhooks signatures. The expected values were computed with the reference
/// `standardwebhooks` Python package (Webhook.sign), an implementation we did not write; the first
/// is also the example of the specification's own README.
final class WebhookSignerTests: XCTestCase {
    private let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    private let previous = "whsec_c2VjcmV0LXByZXZpb3VzLTI0LWJ5dGVzLWxvbmc="
    private let id = "msg_p5jXN8AQM9LWM0D4loKWxJek"
    private let timestamp = 1614265330
    private let body = Array(#"{"test": 2432232314}"#.utf8)

    func testHeaders_matchTheReferenceImplementation() throws {
        let signer = try WebhookSigner(secret: secret)
        let headers = signer.headers(id: id, timestamp: timestamp, body: body)
        XCTAssertEqual(headers.map(\.0), ["webhook-id", "webhook-timestamp", "webhook-signature"])
        XCTAssertEqual(headers.map(\.1), [id, "1614265330", "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="])
    }

    func testRotation_sendsBothSignatures_newFirst_spaceSeparated() throws {
        let signer = try WebhookSigner(secret: secret, previousSecret: previous)
        XCTAssertEqual(signer.signature(id: id, timestamp: timestamp, body: body),
                       "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE= v1,aXsD0JbZM0PuypT6xXAYzYGLSUgzAO8pMYwDmGbNZ44=")
    }

    func testAnyChange_changesTheSignature() throws {
        let signer = try WebhookSigner(secret: secret)
        let original = signer.signature(id: id, timestamp: timestamp, body: body)
        XCTAssertNotEqual(signer.signature(id: id + "x", timestamp: timestamp, body: body), original)
        XCTAssertNotEqual(signer.signature(id: id, timestamp: timestamp + 1, body: body), original)
        XCTAssertNotEqual(signer.signature(id: id, timestamp: timestamp, body: body + [0x20]), original)
    }

    func testForIngestor_isNilWithoutASecret() {
        XCTAssertNil(WebhookSigner.forIngestor(IngestorConfig()))
        var config = IngestorConfig()
        config.signingSecret = secret
        XCTAssertNotNil(WebhookSigner.forIngestor(config))
    }

    func testBadSecrets_areRefusedWithoutEchoingThem() {
        for bad in ["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_not*base64!", "whsec_c2hvcnQ="] {
            XCTAssertNotNil(WebhookSigner.secretProblem(bad), bad)
            XCTAssertFalse(WebhookSigner.secretProblem(bad)!.contains(bad), "the secret is not echoed")
            XCTAssertThrowsError(try WebhookSigner(secret: bad))
        }
        XCTAssertNil(WebhookSigner.secretProblem(secret))
    }
}
