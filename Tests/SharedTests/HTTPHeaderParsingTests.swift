import XCTest
@testable import Shared

final class HTTPHeaderParsingTests: XCTestCase {
    private func parse(_ line: String, keeping: [String]? = nil) -> (String, String)? {
        let bytes = Array(line.utf8)
        let kept = keeping.map { $0.map { Array($0.utf8) } }
        return bytes.withUnsafeBufferPointer { HTTPClient.parseHeaderLine($0, keeping: kept) }
    }

    func testNameIsLowerCased_valueIsTrimmed() {
        let parsed = parse("Retry-After: \t 120 \r\n")
        XCTAssertEqual(parsed?.0, "retry-after")
        XCTAssertEqual(parsed?.1, "120")
    }

    func testValueKeepsItsOwnColonsAndInnerBlanks() {
        let parsed = parse("Location: https://user@host:8443/a b\r\n")
        XCTAssertEqual(parsed?.0, "location")
        XCTAssertEqual(parsed?.1, "https://user@host:8443/a b")
    }

    func testEmptyValue_andLinesWithoutAColon() {
        XCTAssertEqual(parse("X-Empty:\r\n")?.1, "")
        XCTAssertEqual(parse("X-Empty:   \r\n")?.1, "")
        XCTAssertNil(parse("\r\n"))
        XCTAssertNil(parse("HTTP/1.1 204 No Content\r\n"))
    }

    func testNonASCIIValue_isDecodedAndInvalidBytesRepaired() {
        XCTAssertEqual(parse("X-Name: café\r\n")?.1, "café")
        let bytes: [UInt8] = Array("X-Bad: a".utf8) + [0xFF] + Array("\r\n".utf8)
        let parsed = bytes.withUnsafeBufferPointer { HTTPClient.parseHeaderLine($0) }
        XCTAssertEqual(parsed?.1, "a\u{FFFD}")
    }

    func testKeeping_filtersByCaseInsensitiveName() {
        XCTAssertEqual(parse("RETRY-after: 5\r\n", keeping: ["retry-after", "location"])?.1, "5")
        XCTAssertEqual(parse("Location: /x\r\n", keeping: ["retry-after", "location"])?.0, "location")
        XCTAssertNil(parse("Server: nginx\r\n", keeping: ["retry-after", "location"]))
        XCTAssertNil(parse("Retry-After-X: 5\r\n", keeping: ["retry-after"]))
        XCTAssertNil(parse("Retry: 5\r\n", keeping: ["retry-after"]))
        XCTAssertNil(parse("Server: nginx\r\n", keeping: []))
    }

    func testStatusLine() {
        func isStatus(_ s: String) -> Bool { Array(s.utf8).withUnsafeBufferPointer { HTTPClient.isStatusLine($0) } }
        XCTAssertTrue(isStatus("HTTP/1.1 100 Continue\r\n"))
        XCTAssertTrue(isStatus("HTTP/2 204\r\n"))
        XCTAssertFalse(isStatus("HTTP"))
        XCTAssertFalse(isStatus("X-HTTP/1.1: y\r\n"))
    }

    func testIsHTTPS() {
        XCTAssertTrue(HTTPClient.isHTTPS("https://ingest.example/items"))
        XCTAssertTrue(HTTPClient.isHTTPS("HTTPS://INGEST.EXAMPLE"))
        XCTAssertFalse(HTTPClient.isHTTPS("http://127.0.0.1:8080"))
        XCTAssertFalse(HTTPClient.isHTTPS("https"))
        XCTAssertFalse(HTTPClient.isHTTPS(""))
    }
}
