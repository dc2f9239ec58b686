// The one file that imports zlib. Everything else sees `GzipCompressor` and `Gzip.decompress`.
//
// Invariants:
// - One GzipCompressor per owner (a worker's request builder): its deflate state (about 270 KiB
//   at memLevel 8) is made once and `deflateReset` before each body, so a request pays for
//   compressing its bytes, not for setting zlib up (deflateInit2 per body costs the allocation
//   and zeroing of that state every time).
// - The same input at the same level always gives the same bytes (zlib is deterministic and the
//   gzip header carries no time or name: mtime 0, no file name), so a retry resends the body it
//   sent before.
// - The output is a complete gzip member (RFC 1952): what `Content-Encoding: gzip` promises.
// - A failure of zlib (out of memory) returns nil: the caller sends the body uncompressed rather
//   than not at all.

import CZlib

/// A reusable gzip (RFC 1952) compressor. Not thread-safe: one per owner.
public final class GzipCompressor {
    /// zlib's levels: 1 (fastest) to 9 (smallest).
    public let level: Int32
    private var stream = z_stream()
    private var ready = false

    /// `level` is clamped to 1...9.
    public init(level: Int) {
        self.level = Int32(min(max(level, 1), 9))
        ready = zlibx_deflate_init_gzip(&stream, self.level) == Z_OK
    }

    deinit {
        if ready { deflateEnd(&stream) }
    }

    /// `input` as one gzip member, or nil if zlib failed (no memory).
    public func compress(_ input: [UInt8]) -> [UInt8]? {
        guard ready, deflateReset(&stream) == Z_OK else { return nil }
        // deflateBound covers the worst case (incompressible input) with the gzip wrapper included,
        // so one Z_FINISH call always completes.
        let bound = Int(deflateBound(&stream, uLong(input.count)))
        var status = Z_STREAM_ERROR
        let output = input.withUnsafeBufferPointer { source in
            [UInt8](unsafeUninitializedCapacity: bound) { target, initialized in
                // zlib never writes through next_in; the C declaration lacks the const.
                stream.next_in = UnsafeMutablePointer(mutating: source.baseAddress)
                stream.avail_in = uInt(source.count)
                stream.next_out = target.baseAddress
                stream.avail_out = uInt(bound)
                status = deflate(&stream, Z_FINISH)
                initialized = bound - Int(stream.avail_out)
                stream.next_in = nil
                stream.next_out = nil
            }
        }
        guard status == Z_STREAM_END else { return nil }
        return output
    }
}

public enum Gzip {
    /// The concatenated content of the gzip member(s) in `input`, or nil if it is not valid gzip
    /// or would exceed `limit` bytes. For tests and tools; the worker only compresses.
    public static func decompress(_ input: [UInt8], limit: Int = 256 << 20) -> [UInt8]? {
        var stream = z_stream()
        guard zlibx_inflate_init_gzip(&stream) == Z_OK else { return nil }
        defer { inflateEnd(&stream) }
        var output: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        return input.withUnsafeBufferPointer { source -> [UInt8]? in
            stream.next_in = UnsafeMutablePointer(mutating: source.baseAddress)
            stream.avail_in = uInt(source.count)
            while true {
                let (status, produced) = chunk.withUnsafeMutableBufferPointer { target -> (Int32, Int) in
                    stream.next_out = target.baseAddress
                    stream.avail_out = uInt(target.count)
                    let status = inflate(&stream, Z_NO_FLUSH)
                    return (status, target.count - Int(stream.avail_out))
                }
                output.append(contentsOf: chunk[..<produced])
                if output.count > limit { return nil }
                switch status {
                case Z_STREAM_END:
                    // Another member may follow (RFC 1952 allows several).
                    if stream.avail_in == 0 { return output }
                    guard inflateReset(&stream) == Z_OK else { return nil }
                case Z_OK:
                    if stream.avail_in == 0 && produced == 0 { return nil }  // truncated
                default:
                    return nil
                }
            }
        }
    }
}
