import Foundation
import XCTest

@testable import Shared

/// GzipCompressor's output is read by another implementation (the system's `gzip`, as an
/// ingestor's HTTP server would with its own zlib), is the same bytes for the same input (a retry
/// resends what it sent), and one compressor serves any number of bodies.
final class GzipTests: XCTestCase {
    /// `gzip -dc` of `bytes`: a real decompressor, not ours.
    private func systemGunzip(_ bytes: [UInt8]) throws -> [UInt8] {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("gzip-tests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let input = directory.appendingPathComponent("body.gz")
        try Data(bytes).write(to: input)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["gzip", "-dc", input.path]
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        XCTAssertEqual(process.terminationStatus, 0, "gzip -dc refused our output")
        return Array(data)
    }

    private func document(_ key: Int) -> [UInt8] {
        Array(#"{"id":"public.items:1234:\#(key)","table_name":"items","schema":"public","primary_key":"\#(key)","operation":"update","change_column_value":null,"atomic_data":[{"id":\#(key),"v":1}],"metadata":{"service_name":"atomic-data-publisher"}}"#.utf8)
    }

    func testOneCompressor_manyBodies_eachReadBackIdentical_byTheSystemGzip() throws {
        let compressor = GzipCompressor(level: 1)
        var random = SystemRandomNumberGenerator()
        let incompressible = (0..<100_000).map { _ in UInt8.random(in: 0...255, using: &random) }
        let batch = Array(("[" + (1...500).map { String(decoding: document($0), as: UTF8.self) }.joined(separator: ",") + "]").utf8)
        for body in [document(1), [], incompressible, batch, document(2)] {
            let compressed = try XCTUnwrap(compressor.compress(body))
            XCTAssertEqual(Array(compressed.prefix(2)), [0x1F, 0x8B], "a gzip member")
            XCTAssertEqual(try systemGunzip(compressed), body)
            XCTAssertEqual(Gzip.decompress(compressed), body)
        }
        let compressedBatch = try XCTUnwrap(compressor.compress(batch))
        XCTAssertLessThan(compressedBatch.count * 5, batch.count, "JSON documents of one table compress well: \(batch.count) -> \(compressedBatch.count)")
    }

    func testTheSameBody_theSameBytes_acrossCompressorsAndCalls() throws {
        let body = document(7)
        let first = try XCTUnwrap(GzipCompressor(level: 1).compress(body))
        let compressor = GzipCompressor(level: 1)
        _ = compressor.compress(document(8))
        XCTAssertEqual(compressor.compress(body), first, "no state of an earlier body, no time in the header")
        XCTAssertEqual(Array(first[4..<8]), [0, 0, 0, 0], "gzip MTIME is 0")
        XCTAssertNotEqual(GzipCompressor(level: 9).compress(Array(repeating: document(1), count: 50).joined().map { $0 }), nil)
    }

    func testDecompress_refusesWhatIsNotGzip_andTruncatedInput() throws {
        XCTAssertNil(Gzip.decompress(document(1)))
        let compressed = try XCTUnwrap(GzipCompressor(level: 6).compress(document(1)))
        XCTAssertNil(Gzip.decompress(Array(compressed.dropLast(4))))
    }
}
