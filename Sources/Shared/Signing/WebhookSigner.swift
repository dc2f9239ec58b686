// Standard Webhooks signatures (https://www.standardwebhooks.com): every publish carries
//   webhook-id:        the payload's id (stable across retries, like Idempotency-Key)
//   webhook-timestamp: unix seconds when the request was built
//   webhook-signature: "v1,<base64 HMAC-SHA256(secret, "<id>.<timestamp>.<body>")>"
// With a previous secret configured (rotation), one signature per secret, space-separated, the
// new one first: a receiver that knows either secret accepts the request.
//
// Pure: no clock, no I/O; the caller passes the timestamp. Secrets never appear in a description.

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

public struct WebhookSigner: Sendable {
    public static let secretPrefix = "whsec_"

    /// Decoded HMAC keys, the current secret first.
    private let keys: [[UInt8]]

    /// `secret`: "whsec_<base64>"; `previousSecret`: the same format, or empty. Fails with a
    /// sentence that never contains the secret.
    public init(secret: String, previousSecret: String = "") throws(ConfigError) {
        var keys: [[UInt8]] = []
        for (value, key) in [(secret, "ingestor.signing_secret"), (previousSecret, "ingestor.previous_signing_secret")] where !value.isEmpty {
            if let problem = Self.secretProblem(value) { throw ConfigError(key: key, problem: problem) }
            guard let decoded = Self.decode(value) else { throw ConfigError(key: key, problem: "is not a valid signing secret") }
            keys.append(decoded)
        }
        guard !keys.isEmpty else { throw ConfigError(key: "ingestor.signing_secret", problem: "must not be empty") }
        self.keys = keys
    }

    /// The signer for `ingestor.signing_secret` (and `previous_signing_secret`), or nil when
    /// signing is off (no secret). The config has been validated, so the secrets decode.
    public static func forIngestor(_ ingestor: IngestorConfig) -> WebhookSigner? {
        guard !ingestor.signingSecret.isEmpty else { return nil }
        return try? WebhookSigner(secret: ingestor.signingSecret, previousSecret: ingestor.previousSigningSecret)
    }

    /// The three Standard Webhooks headers for one request.
    public func headers(id: String, timestamp: Int, body: [UInt8]) -> [(String, String)] {
        [
            ("webhook-id", id),
            ("webhook-timestamp", String(timestamp)),
            ("webhook-signature", signature(id: id, timestamp: timestamp, body: body)),
        ]
    }

    /// "v1,<base64>" per secret, space-separated.
    public func signature(id: String, timestamp: Int, body: [UInt8]) -> String {
        let signed = Array("\(id).\(timestamp).".utf8) + body
        return keys.map { "v1," + Data(SHA256.hmac(key: $0, message: signed)).base64EncodedString() }.joined(separator: " ")
    }

    /// Why `secret` is not a usable "whsec_<base64>" secret, or nil. Never echoes the secret.
    public static func secretProblem(_ secret: String) -> String? {
        guard secret.hasPrefix(secretPrefix) else { return "must start with '\(secretPrefix)' followed by base64 (Standard Webhooks format)" }
        guard let key = decode(secret) else { return "the part after '\(secretPrefix)' is not valid base64" }
        guard key.count >= 24 else { return "is too short: use at least 24 random bytes (32 recommended), base64-encoded after '\(secretPrefix)'" }
        return nil
    }

    private static func decode(_ secret: String) -> [UInt8]? {
        guard secret.hasPrefix(secretPrefix) else { return nil }
        return Data(base64Encoded: String(secret.dropFirst(secretPrefix.count))).map(Array.init)
    }
}
