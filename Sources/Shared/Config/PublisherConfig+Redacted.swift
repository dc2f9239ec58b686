// A copy that is safe to print or log: `check-config` and debug logging show the resolved
// configuration without its secrets.

public extension PublisherConfig {
    static let redactedPlaceholder = "<redacted>"

    /// The same config with a non-empty `database.password`, `ingestor.auth_token` and signing secrets replaced by "<redacted>".
    func redacted() -> PublisherConfig {
        var copy = self
        if !copy.database.password.isEmpty { copy.database.password = Self.redactedPlaceholder }
        if !copy.ingestor.authToken.isEmpty { copy.ingestor.authToken = Self.redactedPlaceholder }
        if !copy.ingestor.signingSecret.isEmpty { copy.ingestor.signingSecret = Self.redactedPlaceholder }
        if !copy.ingestor.previousSigningSecret.isEmpty { copy.ingestor.previousSigningSecret = Self.redactedPlaceholder }
        return copy
    }
}
