public enum PublisherVersion {
    public static let current = "0.1.0"
    public static let userAgent = "atomic-data-publisher/\(current)"
}
