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

    public init(table: String, config: PublisherConfig) {
        self.table = table
        self.config = config
    }

    public func encodedLine() throws -> [UInt8] {
        Array(try JSONEncoder().encode(self)) + [UInt8(ascii: "\n")]
    }

    public static func decode(_ line: some Collection<UInt8>) throws -> WorkerConfig {
        try JSONDecoder().decode(WorkerConfig.self, from: Data(line))
    }
}
