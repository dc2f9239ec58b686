// The wire formats of a logical replication stream, decoded without I/O: the walsender's CopyData
// messages ('w' XLogData, 'k' primary keepalive), the standby status update we send back ('r'),
// and the pgoutput plugin's messages of protocol version 1 inside XLogData (PostgreSQL's
// "Logical Replication Message Formats"). Every integer is big-endian; strings end in a NUL byte.
//
// Invariants:
// - A malformed message is an error (`PgOutput.Malformed`), never a crash and never a partial
//   result: the stream is then read again from the slot's confirmed position.
// - Only what key extraction needs is kept: relations' names and column names, and tuples'
//   values as text (pgoutput sends text unless `binary` is asked for, which we never do).
// - Messages this decoder does not use (Origin, Type, Truncate, logical decoding messages) are
//   `.other`; proto_version 1 never sends streamed transactions, so neither does the server.

enum PgOutput {
    struct Malformed: Error, CustomStringConvertible {
        var description: String
    }

    /// A log sequence number, as PostgreSQL prints it ("16/B374D848").
    static func lsnText(_ lsn: UInt64) -> String {
        String(lsn >> 32, radix: 16, uppercase: true) + "/" + String(lsn & 0xFFFF_FFFF, radix: 16, uppercase: true)
    }

    static func parseLSN(_ text: String) -> UInt64? {
        let parts = text.split(separator: "/")
        guard parts.count == 2, let high = UInt64(parts[0], radix: 16), let low = UInt64(parts[1], radix: 16) else { return nil }
        return high << 32 | low
    }

    /// One CopyData message of the walsender.
    enum StreamMessage: Equatable {
        /// XLogData: `payload` is one pgoutput message; `walEnd` the server's WAL end.
        case xlogData(start: UInt64, walEnd: UInt64, payload: [UInt8])
        /// A keepalive: everything before `walEnd` that concerns us has been sent.
        case keepalive(walEnd: UInt64, replyRequested: Bool)
    }

    static func streamMessage(_ bytes: [UInt8]) throws(Malformed) -> StreamMessage {
        var r = Reader(bytes)
        switch try r.byte() {
        case UInt8(ascii: "w"):
            let start = try r.uint64()
            let end = try r.uint64()
            _ = try r.uint64()  // the server's clock
            return .xlogData(start: start, walEnd: end, payload: Array(bytes[r.position...]))
        case UInt8(ascii: "k"):
            let end = try r.uint64()
            _ = try r.uint64()
            return .keepalive(walEnd: end, replyRequested: try r.byte() == 1)
        case let other:
            throw Malformed(description: "unknown replication message '\(Character(Unicode.Scalar(other)))'")
        }
    }

    /// Microseconds from 1970 to 2000-01-01, PostgreSQL's epoch.
    static let postgresEpochMicroseconds: Int64 = 946_684_800_000_000

    /// A standby status update: written, flushed and applied up to `lsn`; `now` in Unix seconds.
    static func statusUpdate(lsn: UInt64, unixNow: Double, replyRequested: Bool = false) -> [UInt8] {
        var bytes: [UInt8] = [UInt8(ascii: "r")]
        bytes.reserveCapacity(34)
        for value in [lsn, lsn, lsn, UInt64(bitPattern: Int64(unixNow * 1_000_000) - postgresEpochMicroseconds)] {
            for shift in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: value >> UInt64(shift))) }
        }
        bytes.append(replyRequested ? 1 : 0)
        return bytes
    }

    struct Column: Equatable {
        var name: String
        var typeOID: UInt32
        /// Part of the replica identity (flag 1): present in a 'K' tuple.
        var isKey: Bool
    }

    struct Relation: Equatable {
        var oid: UInt32
        var schema: String
        var name: String
        /// 'd' default (primary key), 'n' nothing, 'f' full, 'i' index.
        var replicaIdentity: Character
        var columns: [Column]
    }

    enum Value: Equatable {
        case null
        /// An unchanged TOASTed value the WAL does not carry (an UPDATE that left it alone).
        case unchanged
        case text(String)

        var text: String? {
            if case .text(let value) = self { return value }
            return nil
        }
    }

    enum Message: Equatable {
        case begin(finalLSN: UInt64, commitMicroseconds: Int64, xid: UInt32)
        case commit(commitLSN: UInt64, endLSN: UInt64, commitMicroseconds: Int64)
        case relation(Relation)
        case insert(relation: UInt32, new: [Value])
        /// `old`: the 'K' tuple (replica identity columns only, the others NULL) when the key
        /// changed, or the whole 'O' row with REPLICA IDENTITY FULL; nil when neither was sent.
        case update(relation: UInt32, old: [Value]?, oldIsKeyOnly: Bool, new: [Value])
        case delete(relation: UInt32, old: [Value], oldIsKeyOnly: Bool)
        case other(Character)
    }

    static func message(_ bytes: [UInt8]) throws(Malformed) -> Message {
        var r = Reader(bytes)
        let kind = try r.byte()
        switch kind {
        case UInt8(ascii: "B"):
            let lsn = try r.uint64()
            let time = Int64(bitPattern: try r.uint64())
            return .begin(finalLSN: lsn, commitMicroseconds: time, xid: try r.uint32())
        case UInt8(ascii: "C"):
            _ = try r.byte()  // flags, unused
            let commit = try r.uint64()
            let end = try r.uint64()
            return .commit(commitLSN: commit, endLSN: end, commitMicroseconds: Int64(bitPattern: try r.uint64()))
        case UInt8(ascii: "R"):
            let oid = try r.uint32()
            let schema = try r.string()
            let name = try r.string()
            let identity = Character(Unicode.Scalar(try r.byte()))
            let count = Int(try r.uint16())
            var columns: [Column] = []
            for _ in 0..<count {
                let flags = try r.byte()
                let column = try r.string()
                let type = try r.uint32()
                _ = try r.uint32()  // typmod
                columns.append(Column(name: column, typeOID: type, isKey: flags & 1 == 1))
            }
            // pgoutput names the default schema "" only for pg_catalog: keep what it sends.
            return .relation(Relation(oid: oid, schema: schema, name: name, replicaIdentity: identity, columns: columns))
        case UInt8(ascii: "I"):
            let oid = try r.uint32()
            guard try r.byte() == UInt8(ascii: "N") else { throw Malformed(description: "insert without a new tuple") }
            return .insert(relation: oid, new: try r.tuple())
        case UInt8(ascii: "U"):
            let oid = try r.uint32()
            var old: [Value]?
            var keyOnly = false
            var marker = try r.byte()
            if marker == UInt8(ascii: "K") || marker == UInt8(ascii: "O") {
                keyOnly = marker == UInt8(ascii: "K")
                old = try r.tuple()
                marker = try r.byte()
            }
            guard marker == UInt8(ascii: "N") else { throw Malformed(description: "update without a new tuple") }
            return .update(relation: oid, old: old, oldIsKeyOnly: keyOnly, new: try r.tuple())
        case UInt8(ascii: "D"):
            let oid = try r.uint32()
            let marker = try r.byte()
            guard marker == UInt8(ascii: "K") || marker == UInt8(ascii: "O") else { throw Malformed(description: "delete without an old tuple") }
            return .delete(relation: oid, old: try r.tuple(), oldIsKeyOnly: marker == UInt8(ascii: "K"))
        default:
            return .other(Character(Unicode.Scalar(kind)))
        }
    }

    /// A cursor over one message's bytes.
    struct Reader {
        let bytes: [UInt8]
        private(set) var position = 0

        init(_ bytes: [UInt8]) { self.bytes = bytes }

        private mutating func take(_ count: Int) throws(Malformed) -> ArraySlice<UInt8> {
            guard count >= 0, position + count <= bytes.count else {
                throw Malformed(description: "message ends after \(bytes.count) bytes, \(count) more expected at \(position)")
            }
            defer { position += count }
            return bytes[position..<position + count]
        }

        mutating func byte() throws(Malformed) -> UInt8 { try take(1).first! }

        private mutating func integer(_ size: Int) throws(Malformed) -> UInt64 {
            try take(size).reduce(0) { $0 << 8 | UInt64($1) }
        }

        mutating func uint16() throws(Malformed) -> UInt16 { UInt16(try integer(2)) }
        mutating func uint32() throws(Malformed) -> UInt32 { UInt32(try integer(4)) }
        mutating func uint64() throws(Malformed) -> UInt64 { try integer(8) }

        mutating func string() throws(Malformed) -> String {
            guard let end = bytes[position...].firstIndex(of: 0) else { throw Malformed(description: "string without its NUL at \(position)") }
            let text = String(decoding: bytes[position..<end], as: UTF8.self)
            position = end + 1
            return text
        }

        mutating func tuple() throws(Malformed) -> [Value] {
            let count = Int(try uint16())
            var values: [Value] = []
            values.reserveCapacity(count)
            for _ in 0..<count {
                switch try byte() {
                case UInt8(ascii: "n"): values.append(.null)
                case UInt8(ascii: "u"): values.append(.unchanged)
                case UInt8(ascii: "t"):
                    let length = Int(try uint32())
                    values.append(.text(String(decoding: try take(length), as: UTF8.self)))
                case let other:
                    throw Malformed(description: "unknown tuple value kind '\(Character(Unicode.Scalar(other)))'")
                }
            }
            return values
        }
    }
}
