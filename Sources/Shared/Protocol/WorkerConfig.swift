#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

/// What the supervisor writes, as one line of JSON, on a worker's stdin. It carries secrets, which
/// is why it travels through a pipe and never through argv or the environment.
public struct WorkerConfig: Codable, Sendable, Equatable {
    public var table: String
    public var config: PublisherConfig
    /// This worker's part of the instance's session budget (SessionBudget). The supervisor
    /// computes it, because `config` carries this table only; nil: the worker computes it from
    /// `config` itself.
    public var share: SessionShare?

    public init(table: String, config: PublisherConfig, share: SessionShare? = nil) {
        self.table = table
        self.config = config
        self.share = share
    }

    public func encodedLine() throws -> [UInt8] {
        Array(try JSONEncoder().encode(self)) + [UInt8(ascii: "\n")]
    }

    public static func decode(_ line: some Collection<UInt8>) throws -> WorkerConfig {
        try JSONDecoder().decode(WorkerConfig.self, from: Data(line))
    }
}
